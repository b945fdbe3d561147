//! Per-user quotas on what users store: the number of functions and the bytes of their code. Each
//! refusal is a 403 `quota_exceeded` naming the limit and the use, and changes nothing. (The queue
//! quota needs an engine that runs: it is in the engine suite's `asynchronous` tests.)

use serde_json::{Value, json};

use crate::helpers::{TestApp, function_body};

async fn names(app: &TestApp, token: &str) -> Vec<String> {
    let mut names: Vec<String> = app
        .get("/api/functions?limit=100", token)
        .await
        .expect(200)
        .body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// A `provided` function whose one source file is `bytes` long.
fn sized_function(name: &str, bytes: usize) -> Value {
    let header = "#!/bin/sh\n# ";
    let source = format!("{header}{}\n", "x".repeat(bytes - header.len() - 1));
    assert_eq!(source.len(), bytes);
    json!({"name": name, "runtime": "provided", "handler": "function.handler",
           "code": {"source": source, "filename": "bootstrap"}})
}

const MIB: usize = 1 << 20;

mod function_count {
    use super::*;

    both_databases_with! {
        |raw| { raw.quotas.functions_per_user = 2; }

        async fn the_function_quota_refuses_one_more_and_changes_nothing(app) {
            let user = app.register().await;
            app.create_function(&user.access_token, "one").await;
            app.create_function(&user.access_token, "two").await;

            let refused = app
                .post("/api/functions", &user.access_token, function_body("three"))
                .await
                .expect_error(403, "quota_exceeded");
            let message = refused.body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("you have 2 functions") && message.contains("limit is 2"),
                "the message names the use and the limit: {message}"
            );
            assert_eq!(names(&app, &user.access_token).await, ["one", "two"]);

            // Per user: another user is not held back; and deleting one makes room.
            let other = app.register().await;
            app.create_function(&other.access_token, "three").await;
            let one = app.get("/api/functions", &user.access_token).await.body["data"][1]["id"]
                .as_str()
                .unwrap()
                .to_string();
            app.delete(&format!("/api/functions/{one}"), &user.access_token)
                .await
                .expect(204);
            app.create_function(&user.access_token, "three").await;
            assert_eq!(names(&app, &user.access_token).await, ["three", "two"]);
        }

        async fn concurrent_creates_never_pass_the_function_quota(app) {
            let user = app.register().await;
            let mut tasks = Vec::new();
            for i in 0..10 {
                let request = app
                    .client
                    .post(format!("{}/api/functions", app.base))
                    .bearer_auth(&user.access_token)
                    .json(&function_body(&format!("f{i}")));
                tasks.push(tokio::spawn(async move { TestApp::read(request.send().await.unwrap()).await }));
            }
            let mut replies = Vec::new();
            for task in tasks {
                replies.push(task.await.unwrap());
            }
            let created = replies.iter().filter(|r| r.status == 201).count();
            let refused = replies
                .iter()
                .filter(|r| r.status == 403 && r.body["error"]["code"] == "quota_exceeded")
                .count();
            let outcomes: Vec<(u16, &Value)> =
                replies.iter().map(|r| (r.status.as_u16(), &r.body["error"]["code"])).collect();
            assert_eq!((created, refused), (2, 8), "{outcomes:?}");
            assert_eq!(names(&app, &user.access_token).await.len(), 2);
        }
    }
}

mod code_bytes {
    use super::*;

    both_databases_with! {
        |raw| { raw.quotas.code_mb_per_user = 1; }

        async fn the_code_quota_counts_each_function_whole_and_refuses_growth(app) {
            let user = app.register().await;
            let token = user.access_token.as_str();
            let big = sized_function("big", 600 * 1024);
            let first = app.post("/api/functions", token, big.clone()).await.expect(201);

            let too_much = app
                .post("/api/functions", token, sized_function("more", 600 * 1024))
                .await
                .expect_error(403, "quota_exceeded");
            let message = too_much.body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("takes {} bytes", 600 * 1024))
                    && message.contains(&format!("limit is {MIB} bytes")),
                "the message names the use and the limit: {message}"
            );
            // Identical code is stored once, but counted for each function that has it.
            let mut twin = big.clone();
            twin["name"] = json!("twin");
            app.post("/api/functions", token, twin)
                .await
                .expect_error(403, "quota_exceeded");
            assert_eq!(names(&app, token).await, ["big"]);

            // What fits, fits; an update that grows past the limit is refused and changes nothing.
            let small = app.post("/api/functions", token, sized_function("small", 100 * 1024)).await.expect(201);
            let small_id = small.body["id"].as_str().unwrap();
            let grow = json!({"code": sized_function("x", 500 * 1024)["code"]});
            app.put(&format!("/api/functions/{small_id}"), token, grow)
                .await
                .expect_error(403, "quota_exceeded");
            let after = app.get(&format!("/api/functions/{small_id}"), token).await.expect(200);
            assert_eq!(after.body["version"], 1);
            assert_eq!(after.body["code_sha256"], small.body["code_sha256"]);
            let code = app.get(&format!("/api/functions/{small_id}/code"), token).await.expect(200);
            assert_eq!(code.body["source"].as_str().unwrap().len(), 100 * 1024);

            // Growing within the limit passes, and so does shrinking.
            let grow_a_little = json!({"code": sized_function("x", 300 * 1024)["code"]});
            app.put(&format!("/api/functions/{small_id}"), token, grow_a_little).await.expect(200);
            let big_id = first.body["id"].as_str().unwrap();
            let shrink = json!({"code": sized_function("x", 1024)["code"]});
            app.put(&format!("/api/functions/{big_id}"), token, shrink).await.expect(200);
        }
    }
}
