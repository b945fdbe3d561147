//! Layers: publishing numbered versions, reading and listing them, attaching them to functions by
//! `name:version`, and the rules around that (five at most, each once, only the caller's own, the
//! code and its layers within the unzipped limit, no deleting a version a function uses, numbers
//! never reused, code removed with the last version that holds it).

use serde_json::{Value, json};

use crate::functions::code_blob_count;
use crate::helpers::{TestApp, b64, function_body, zip_of};

fn layer_body(name: &str, files: &[(&str, &[u8])]) -> Value {
    let entries: Vec<(&str, &[u8], u32)> = files.iter().map(|(p, c)| (*p, *c, 0o100644)).collect();
    json!({"name": name, "description": "shared code", "code": {"zip_base64": b64(&zip_of(&entries))}})
}

async fn publish(app: &TestApp, token: &str, name: &str, contents: &[u8]) -> Value {
    app.post(
        "/api/layers",
        token,
        layer_body(name, &[("python/dep.py", contents)]),
    )
    .await
    .expect(201)
    .body
}

both_databases! {
    async fn versions_are_numbered_per_name_and_never_reused(app) {
        let user = app.register().await;
        let t = user.access_token.as_str();
        let first = publish(&app, t, "deps", b"A = 1\n").await;
        assert_eq!(first["version"], 1);
        assert_eq!(first["reference"], "deps:1");
        assert_eq!(first["name"], "deps");
        assert_eq!(first["description"], "shared code");
        assert!(first["unzipped_bytes"].as_i64().unwrap() >= 6, "{first}");
        assert_eq!(publish(&app, t, "deps", b"A = 2\n").await["version"], 2);
        assert_eq!(publish(&app, t, "other", b"A = 3\n").await["version"], 1);

        let got = app.get("/api/layers/deps/versions/2", t).await.expect(200).body;
        assert_eq!(got["reference"], "deps:2");
        let listed = app.get("/api/layers", t).await.expect(200).body;
        let refs: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|l| l["reference"].as_str().unwrap()).collect();
        assert_eq!(refs, ["other:1", "deps:2", "deps:1"], "newest first");

        // Deleting the highest version does not free its number.
        app.delete("/api/layers/deps/versions/2", t).await.expect(204);
        app.get("/api/layers/deps/versions/2", t).await.expect_error(404, "not_found");
        assert_eq!(publish(&app, t, "deps", b"A = 4\n").await["version"], 3);
        app.delete("/api/layers/deps/versions/2", t).await.expect_error(404, "not_found");
        // Paths that cannot name a version name nothing.
        for path in ["/api/layers/deps/versions/0", "/api/layers/deps/versions/x", "/api/layers/Deps/versions/1"] {
            app.get(path, t).await.expect_error(404, "not_found");
        }
    }

    async fn bad_layers_are_refused_and_change_nothing(app) {
        let user = app.register().await;
        let t = user.access_token.as_str();
        for (body, field) in [
            (layer_body("Bad Name", &[("python/a.py", b"")]), "name"),
            (json!({"name": "x", "code": {"zip_base64": "not base64!"}}), "code.zip_base64"),
            (json!({"name": "x", "code": {"zip_base64": b64(b"not a zip")}}), "code.zip_base64"),
            (layer_body("x", &[("../escape.py", b"")]), "code.zip_base64"),
        ] {
            let reply = app.post("/api/layers", t, body).await.expect_error(422, "validation_failed");
            assert_eq!(reply.body["error"]["field"], field, "{}", reply.body);
        }
        app.post("/api/layers", t, json!({"name": "x", "code": {"source": "print(1)"}}))
            .await
            .expect_error(422, "validation_failed");
        let listed = app.get("/api/layers", t).await.expect(200).body;
        assert_eq!(listed["data"], json!([]));
    }

    async fn functions_name_their_layers_and_keep_them_from_deletion(app) {
        let user = app.register().await;
        let t = user.access_token.as_str();
        let blobs_before = code_blob_count(&app).await;
        publish(&app, t, "deps", b"A = 1\n").await;
        publish(&app, t, "deps", b"A = 2\n").await;
        publish(&app, t, "tools", b"B = 1\n").await;
        assert_eq!(code_blob_count(&app).await, blobs_before + 3);

        let mut body = function_body("uses-layers");
        body["layers"] = json!(["tools:1", "deps:2"]);
        let created = app.post("/api/functions", t, body).await.expect(201).body;
        assert_eq!(created["layers"], json!(["tools:1", "deps:2"]));
        let id = created["id"].as_str().unwrap();
        let read = app.get(&format!("/api/functions/{id}"), t).await.expect(200).body;
        assert_eq!(read["layers"], json!(["tools:1", "deps:2"]));

        // A version a function uses cannot go; one it does not use can.
        let refused = app.delete("/api/layers/deps/versions/2", t).await.expect_error(409, "conflict");
        assert!(refused.body["error"]["message"].as_str().unwrap().contains("uses-layers"), "{}", refused.body);
        app.delete("/api/layers/deps/versions/1", t).await.expect(204);

        // Updating the layers replaces them (and counts as a change); `[]` removes them.
        let updated = app.put(&format!("/api/functions/{id}"), t, json!({"layers": ["deps:2"]})).await.expect(200).body;
        assert_eq!(updated["layers"], json!(["deps:2"]));
        assert_eq!(updated["version"], 2);
        app.delete("/api/layers/tools/versions/1", t).await.expect(204);
        let cleared = app.put(&format!("/api/functions/{id}"), t, json!({"layers": []})).await.expect(200).body;
        assert_eq!(cleared["layers"], json!([]));
        app.delete("/api/layers/deps/versions/2", t).await.expect(204);
        assert_eq!(code_blob_count(&app).await, blobs_before + 1, "only the function's code is left");

        // Deleting a function lets its layers go.
        publish(&app, t, "again", b"C = 1\n").await;
        let mut body = function_body("holds-again");
        body["layers"] = json!(["again:1"]);
        let holder = app.post("/api/functions", t, body).await.expect(201).body;
        app.delete("/api/layers/again/versions/1", t).await.expect_error(409, "conflict");
        app.delete(&format!("/api/functions/{}", holder["id"].as_str().unwrap()), t).await.expect(204);
        app.delete("/api/layers/again/versions/1", t).await.expect(204);
    }

    async fn a_functions_layers_must_exist_be_the_callers_and_fit(app) {
        let user = app.register().await;
        let other = app.register().await;
        let t = user.access_token.as_str();
        publish(&app, other.access_token.as_str(), "theirs", b"X = 1\n").await;
        for i in 1..=6 {
            publish(&app, t, &format!("l{i}"), b"A = 1\n").await;
        }
        let six: Vec<String> = (1..=6).map(|i| format!("l{i}:1")).collect();
        for (layers, says) in [
            (json!(["theirs:1"]), "you have no layer version theirs:1"),
            (json!(["l1:2"]), "you have no layer version l1:2"),
            (json!(["l1"]), "use name:version"),
            (json!(["l1:1", "l1:1"]), "listed twice"),
            (json!(six), "at most 5 layers"),
        ] {
            let mut body = function_body("bad-layers");
            body["layers"] = layers.clone();
            let reply = app.post("/api/functions", t, body).await.expect_error(422, "validation_failed");
            assert_eq!(reply.body["error"]["field"], "layers", "{layers}");
            assert!(reply.body["error"]["message"].as_str().unwrap().contains(says), "{layers}: {}", reply.body);
        }
        // Another user's layer is not found at all.
        app.get("/api/layers/theirs/versions/1", t).await.expect_error(404, "not_found");
        app.delete("/api/layers/theirs/versions/1", t).await.expect_error(404, "not_found");
        let listed = app.get("/api/functions", t).await.expect(200).body;
        assert_eq!(listed["data"], json!([]), "nothing was created");

        // An update that names a missing layer changes nothing.
        let mut body = function_body("fine");
        body["layers"] = json!(["l1:1"]);
        let created = app.post("/api/functions", t, body).await.expect(201).body;
        let id = created["id"].as_str().unwrap();
        app.put(&format!("/api/functions/{id}"), t, json!({"layers": ["l1:1", "nope:1"]}))
            .await
            .expect_error(422, "validation_failed");
        let read = app.get(&format!("/api/functions/{id}"), t).await.expect(200).body;
        assert_eq!((read["layers"].clone(), read["version"].clone()), (json!(["l1:1"]), json!(1)));
    }
}

mod quotas {
    use super::*;

    both_databases_with! {
        |raw| { raw.quotas.code_mb_per_user = 1; }

        async fn layer_code_counts_against_the_code_quota(app) {
            let user = app.register().await;
            let t = user.access_token.as_str();
            // Random bytes barely compress: the archive is about as large as its contents.
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            let noise: Vec<u8> = (0..700 * 1024)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect();
            app.post("/api/layers", t, layer_body("big", &[("python/blob.bin", &noise)])).await.expect(201);
            let reply = app
                .post("/api/layers", t, layer_body("big", &[("python/blob.bin", &noise)]))
                .await
                .expect_error(403, "quota_exceeded");
            assert!(reply.body["error"]["message"].as_str().unwrap().contains("layers"), "{}", reply.body);
            let listed = app.get("/api/layers", t).await.expect(200).body;
            assert_eq!(listed["data"].as_array().unwrap().len(), 1);
        }
    }
}
