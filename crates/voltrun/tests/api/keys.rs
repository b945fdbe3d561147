//! API keys: shown once, stored hashed, usable as Bearer or X-API-Key, scoped, revocable at once.

use reqwest::Method;
use serde_json::json;

use crate::helpers::TestApp;

async fn with_x_api_key(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
) -> crate::helpers::Reply {
    let request = app
        .client
        .request(method, format!("{}{path}", app.base))
        .header("x-api-key", key);
    TestApp::read(request.send().await.unwrap()).await
}

both_databases! {
    async fn a_key_is_shown_once_and_listed_by_prefix(app) {
        let user = app.register().await;
        let created = app.post("/api/keys", &user.access_token, json!({"name": "ci"})).await.expect(201);
        let key = created.body["key"].as_str().unwrap();
        assert!(key.starts_with("vr_") && key.len() >= 3 + 43, "{key}");
        assert_eq!(created.body["scopes"], json!(["full"]));
        assert!(key.starts_with(created.body["prefix"].as_str().unwrap()));

        let list = app.get("/api/keys", &user.access_token).await.expect(200);
        let listed = &list.body["data"][0];
        assert_eq!(listed["id"], created.body["id"]);
        assert_eq!(listed["name"], "ci");
        assert!(listed.get("key").is_none(), "the list must not show the key");
        assert!(!list.text.contains(key));
        assert_eq!(listed["last_used_at"], serde_json::Value::Null);
    }

    async fn a_key_authenticates_as_bearer_and_x_api_key(app) {
        let user = app.register().await;
        let key = app.post("/api/keys", &user.access_token, json!({"name": "k"})).await.expect(201).body["key"].as_str().unwrap().to_string();
        app.create_function(&user.access_token, "fn-one").await;
        let via_bearer = app.get("/api/functions", &key).await.expect(200);
        assert_eq!(via_bearer.body["data"][0]["name"], "fn-one");
        with_x_api_key(&app, Method::GET, "/api/functions", &key).await.expect(200);
        let list = app.get("/api/keys", &user.access_token).await.expect(200);
        assert!(list.body["data"][0]["last_used_at"].is_string(), "last_used_at is recorded");
        // A well-formed but unknown key.
        app.get("/api/functions", &format!("vr_{}", "A".repeat(43))).await.expect_error(401, "unauthorized");
    }

    async fn execute_scope_may_invoke_and_read_executions_only(app) {
        let user = app.register().await;
        let function = app.create_function(&user.access_token, "scoped").await;
        let id = function["id"].as_str().unwrap();
        let key = app.post("/api/keys", &user.access_token, json!({"name": "runner", "scopes": ["execute"]})).await.expect(201).body["key"].as_str().unwrap().to_string();
        app.get("/api/executions", &key).await.expect(200);
        // Allowed through auth; the engine then answers (503 until an isolation backend is configured).
        let invoked = app.post(&format!("/api/functions/{id}/execute"), &key, json!({})).await;
        assert_ne!(invoked.status.as_u16(), 403, "{}", invoked.text);
        assert_ne!(invoked.status.as_u16(), 401, "{}", invoked.text);
        app.get("/api/functions", &key).await.expect_error(403, "insufficient_scope");
        app.get(&format!("/api/functions/{id}"), &key).await.expect_error(403, "insufficient_scope");
        app.post("/api/functions", &key, crate::helpers::function_body("nope")).await.expect_error(403, "insufficient_scope");
        app.delete(&format!("/api/functions/{id}"), &key).await.expect_error(403, "insufficient_scope");
        app.get(&format!("/api/functions/{id}"), &user.access_token).await.expect(200);
    }

    async fn keys_cannot_manage_keys_or_sessions(app) {
        let user = app.register().await;
        let key = app.post("/api/keys", &user.access_token, json!({"name": "full"})).await.expect(201).body["key"].as_str().unwrap().to_string();
        app.get("/api/keys", &key).await.expect_error(403, "api_key_not_allowed");
        app.post("/api/keys", &key, json!({"name": "escalate"})).await.expect_error(403, "api_key_not_allowed");
        app.get("/api/auth/me", &key).await.expect_error(403, "api_key_not_allowed");
        with_x_api_key(&app, Method::GET, "/api/keys", &key).await.expect_error(403, "api_key_not_allowed");
    }

    async fn a_deleted_key_stops_working_at_once(app) {
        let user = app.register().await;
        let created = app.post("/api/keys", &user.access_token, json!({"name": "temp"})).await.expect(201);
        let key = created.body["key"].as_str().unwrap();
        app.get("/api/functions", key).await.expect(200);
        app.delete(&format!("/api/keys/{}", created.body["id"].as_str().unwrap()), &user.access_token).await.expect(204);
        app.get("/api/functions", key).await.expect_error(401, "unauthorized");
        app.delete(&format!("/api/keys/{}", created.body["id"].as_str().unwrap()), &user.access_token).await.expect_error(404, "not_found");
    }

    async fn bad_key_requests_are_422(app) {
        let user = app.register().await;
        for body in [
            json!({"name": ""}),
            json!({"name": "x".repeat(65)}),
            json!({"name": "ok", "scopes": []}),
            json!({"name": "ok", "scopes": ["admin"]}),
            json!({"name": "ok\u{0007}"}),
        ] {
            app.post("/api/keys", &user.access_token, body).await.expect_error(422, "validation_failed");
        }
        assert_eq!(app.get("/api/keys", &user.access_token).await.expect(200).body["data"], json!([]));
    }

    async fn key_lists_paginate(app) {
        let user = app.register().await;
        for i in 0..5 {
            app.post("/api/keys", &user.access_token, json!({"name": format!("k{i}")})).await.expect(201);
        }
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/keys?limit=2&cursor={c}"),
                None => "/api/keys?limit=2".to_string(),
            };
            let page = app.get(&path, &user.access_token).await.expect(200);
            for k in page.body["data"].as_array().unwrap() {
                seen.push(k["name"].as_str().unwrap().to_string());
            }
            match page.body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(seen, ["k4", "k3", "k2", "k1", "k0"]);
    }
}
