//! Functions: the whole lifecycle, validation, code uploads and their checks, pagination.

use serde_json::{Value, json};
use sha2::Digest;

use crate::helpers::{TestApp, b64, function_body, zip_of};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

pub(crate) async fn code_blob_count(app: &TestApp) -> i64 {
    use sqlx::Connection;
    match app.backend {
        crate::helpers::Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM code_blobs")
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
        crate::helpers::Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM code_blobs")
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
    }
}

both_databases! {
    async fn create_get_update_delete(app) {
        let user = app.register().await;
        let token = &user.access_token;
        let created = app
            .post("/api/functions", token, json!({
                "name": "hello",
                "description": "says hello",
                "runtime": "provided",
                "handler": "function.handler",
                "code": {"source": "#!/bin/sh\necho hi\n", "filename": "bootstrap"},
                "memory_mb": 256,
                "timeout_s": 10,
                "env": {"GREETING": "hi"},
            }))
            .await
            .expect(201)
            .body;
        assert_eq!(created["version"], 1);
        assert_eq!(created["memory_mb"], 256);
        assert_eq!(created["env"], json!({"GREETING": "hi"}));
        assert_eq!(created["code_sha256"], sha256_hex(b"#!/bin/sh\necho hi\n"));
        assert_eq!(created["code_size_bytes"], 18);
        assert!(created.get("code").is_none());
        let id = created["id"].as_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);

        let got = app.get(&format!("/api/functions/{id}"), token).await.expect(200).body;
        assert_eq!(got, created);
        let listed = app.get("/api/functions", token).await.expect(200).body;
        assert_eq!(listed["data"][0]["id"], id);
        assert!(listed["data"][0].get("env").is_none(), "lists do not carry env");
        let code = app.get(&format!("/api/functions/{id}/code"), token).await.expect(200).body;
        assert_eq!(code["source"], "#!/bin/sh\necho hi\n");
        assert_eq!(code["filename"], "bootstrap");

        // Partial update: only the description changes; the version moves on.
        let updated = app.put(&format!("/api/functions/{id}"), token, json!({"description": "new"})).await.expect(200).body;
        assert_eq!(updated["description"], "new");
        assert_eq!(updated["version"], 2);
        assert_eq!(updated["memory_mb"], 256);
        assert_eq!(updated["env"], json!({"GREETING": "hi"}));
        // An update that changes nothing keeps the version.
        let same = app.put(&format!("/api/functions/{id}"), token, json!({"description": "new", "memory_mb": 256})).await.expect(200).body;
        assert_eq!(same["version"], 2);
        // New code: new sha, new version.
        let recoded = app
            .put(&format!("/api/functions/{id}"), token, json!({"code": {"source": "#!/bin/sh\necho bye\n", "filename": "bootstrap"}}))
            .await
            .expect(200)
            .body;
        assert_eq!(recoded["version"], 3);
        assert_eq!(recoded["code_sha256"], sha256_hex(b"#!/bin/sh\necho bye\n"));
        let env_changed = app.put(&format!("/api/functions/{id}"), token, json!({"env": {}})).await.expect(200).body;
        assert_eq!(env_changed["version"], 4);
        assert_eq!(env_changed["env"], json!({}));

        app.delete(&format!("/api/functions/{id}"), token).await.expect(204);
        app.get(&format!("/api/functions/{id}"), token).await.expect_error(404, "not_found");
        app.delete(&format!("/api/functions/{id}"), token).await.expect_error(404, "not_found");
        assert_eq!(code_blob_count(&app).await, 0, "the code went with the function");
    }

    async fn names_are_unique_per_user(app) {
        let user = app.register().await;
        app.create_function(&user.access_token, "taken").await;
        app.post("/api/functions", &user.access_token, function_body("taken")).await.expect_error(409, "conflict");
        let other = app.create_function(&user.access_token, "other").await;
        app.put(&format!("/api/functions/{}", other["id"].as_str().unwrap()), &user.access_token, json!({"name": "taken"}))
            .await
            .expect_error(409, "conflict");
        // Another user may use the same name.
        let second = app.register().await;
        app.create_function(&second.access_token, "taken").await;
    }

    async fn configuration_is_validated_field_by_field(app) {
        let user = app.register().await;
        let cases: Vec<(Value, &str)> = vec![
            (json!({"name": "Bad_Name"}), "name"),
            (json!({"name": ""}), "name"),
            (json!({"name": "x".repeat(65)}), "name"),
            (json!({"runtime": "cobol85"}), "runtime"),
            (json!({"handler": "nodot"}), "handler"),
            (json!({"handler": "../escape.handler"}), "handler"),
            (json!({"memory_mb": 64}), "memory_mb"),
            (json!({"memory_mb": 10241}), "memory_mb"),
            (json!({"timeout_s": 0}), "timeout_s"),
            (json!({"timeout_s": 901}), "timeout_s"),
            (json!({"env": {"AWS_SECRET": "x"}}), "env"),
            (json!({"env": {"1BAD": "x"}}), "env"),
            (json!({"env": {"BIG": "x".repeat(4100)}}), "env"),
            (json!({"description": "x".repeat(257)}), "description"),
            (json!({"max_retries": 3}), "max_retries"),
            (json!({"max_concurrency": 1001}), "max_concurrency"),
            (json!({"max_concurrency": -1}), "max_concurrency"),
            (json!({"min_instances": 11}), "min_instances"),
            (json!({"log_format": "JSON"}), "log_format"),
            (json!({"log_format": "xml"}), "log_format"),
            (json!({"log_level": "info"}), "log_level"),
            (json!({"log_format": "text", "log_level": "debug"}), "log_level"),
            (json!({"log_format": "json", "log_level": "verbose"}), "log_level"),
            (json!({"code": {"source": "echo", "filename": "../bootstrap"}}), "code.filename"),
            (json!({"code": {"source": "echo", "filename": "not-bootstrap"}}), "code"),
            (json!({"code": {}}), "code"),
            (json!({"code": {"source": "x", "zip_base64": "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="}}), "code"),
            (json!({"code": {"zip_base64": "!!!not base64!!!"}}), "code.zip_base64"),
            (json!({"code": {"zip_base64": b64(b"this is not a zip")}}), "code.zip_base64"),
        ];
        for (patch, field) in cases {
            let mut body = function_body("valid-name");
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            let reply = app.post("/api/functions", &user.access_token, body).await.expect_error(422, "validation_failed");
            assert_eq!(reply.body["error"]["field"], field, "{patch}: {}", reply.text);
        }
        let runtime_reply = app
            .post("/api/functions", &user.access_token, json!({"name": "x", "runtime": "cobol85", "handler": "a.b", "code": {"source": "x"}}))
            .await
            .expect(422);
        assert!(runtime_reply.body["error"]["message"].as_str().unwrap().contains("provided"), "lists the offered runtimes");
        assert_eq!(app.get("/api/functions", &user.access_token).await.expect(200).body["data"], json!([]));
    }

    // Lambda's logging controls: a format, and an application log level only with JSON (INFO
    // unless given); switching back to text drops the level; each change is a new version.
    async fn logging_settings_follow_lambdas_rules(app) {
        let user = app.register().await;
        let token = &user.access_token;
        let f = app.create_function(token, "logs").await;
        assert_eq!((&f["log_format"], &f["log_level"]), (&json!("text"), &Value::Null));
        let path = format!("/api/functions/{}", f["id"].as_str().unwrap());

        let json_on = app.put(&path, token, json!({"log_format": "json"})).await.expect(200).body;
        assert_eq!((&json_on["log_format"], &json_on["log_level"]), (&json!("json"), &json!("info")));
        assert_eq!(json_on["version"], 2);
        let debug = app.put(&path, token, json!({"log_level": "debug"})).await.expect(200).body;
        assert_eq!((&debug["log_format"], &debug["log_level"], &debug["version"]), (&json!("json"), &json!("debug"), &json!(3)));
        // A level with a text format, stored or asked for, is refused and changes nothing.
        let refused = app.put(&path, token, json!({"log_format": "text", "log_level": "warn"})).await.expect_error(422, "validation_failed");
        assert_eq!(refused.body["error"]["field"], "log_level");
        assert_eq!(app.get(&path, token).await.expect(200).body["version"], 3);
        let text = app.put(&path, token, json!({"log_format": "text"})).await.expect(200).body;
        assert_eq!((&text["log_format"], &text["log_level"], &text["version"]), (&json!("text"), &Value::Null, &json!(4)));
        app.put(&path, token, json!({"log_level": "warn"})).await.expect_error(422, "validation_failed");
        // The same settings again are no change.
        assert_eq!(app.put(&path, token, json!({"log_format": "text"})).await.expect(200).body["version"], 4);

        let mut body = function_body("logs-json");
        body["log_format"] = json!("json");
        body["log_level"] = json!("error");
        let created = app.post("/api/functions", token, body).await.expect(201).body;
        assert_eq!((&created["log_format"], &created["log_level"]), (&json!("json"), &json!("error")));
        let listed = app.get("/api/functions", token).await.expect(200).body;
        let stored = listed["data"].as_array().unwrap().iter().find(|f| f["name"] == "logs-json").unwrap().clone();
        assert_eq!(stored["log_level"], "error");
    }

    async fn failed_updates_change_nothing(app) {
        let user = app.register().await;
        let f = app.create_function(&user.access_token, "stable").await;
        let path = format!("/api/functions/{}", f["id"].as_str().unwrap());
        for patch in [
            json!({"memory_mb": 1}),
            json!({"description": "fine", "timeout_s": 5000}),
            json!({"handler": "other.handler", "runtime": "nope"}),
            json!({"code": {"source": "x", "filename": "main.py"}}),
            json!({"unknown_field": true}),
        ] {
            app.put(&path, &user.access_token, patch).await.expect(422);
        }
        assert_eq!(app.get(&path, &user.access_token).await.expect(200).body, app.get(&path, &user.access_token).await.body);
        let now = app.get(&path, &user.access_token).await.expect(200).body;
        assert_eq!(now["version"], 1);
        assert_eq!(now["description"], "");
    }

    async fn zip_uploads_are_stored_content_addressed(app) {
        let user = app.register().await;
        let archive = zip_of(&[("bootstrap", b"#!/bin/sh\necho zip\n", 0o100755), ("lib/helper.sh", b"echo helper\n", 0o100644)]);
        let body = |name: &str| json!({"name": name, "runtime": "provided", "handler": "x.handler", "code": {"zip_base64": b64(&archive)}});
        let a = app.post("/api/functions", &user.access_token, body("zip-a")).await.expect(201).body;
        let b = app.post("/api/functions", &user.access_token, body("zip-b")).await.expect(201).body;
        assert_eq!(a["code_kind"], "zip");
        assert_eq!(a["code_sha256"], sha256_hex(&archive));
        assert_eq!(a["code_sha256"], b["code_sha256"]);
        assert_eq!(code_blob_count(&app).await, 1, "identical uploads are stored once");
        let code = app.get(&format!("/api/functions/{}/code", a["id"].as_str().unwrap()), &user.access_token).await.expect(200).body;
        assert_eq!(code["zip_base64"], b64(&archive));
        app.delete(&format!("/api/functions/{}", a["id"].as_str().unwrap()), &user.access_token).await.expect(204);
        assert_eq!(code_blob_count(&app).await, 1, "still used by zip-b");
        app.get(&format!("/api/functions/{}/code", b["id"].as_str().unwrap()), &user.access_token).await.expect(200);
        app.delete(&format!("/api/functions/{}", b["id"].as_str().unwrap()), &user.access_token).await.expect(204);
        assert_eq!(code_blob_count(&app).await, 0);
    }

    async fn the_handler_module_must_exist_in_the_code(app) {
        let user = app.register().await;
        if let Some(python) = app.runtime("python").await {
            let archive = zip_of(&[("src/app.py", b"def handler(event, context):\n    return event\n", 0o100644)]);
            let ok = json!({"name": "py-ok", "runtime": python, "handler": "src/app.handler", "code": {"zip_base64": b64(&archive)}});
            app.post("/api/functions", &user.access_token, ok).await.expect(201);
            let missing = json!({"name": "py-missing", "runtime": python, "handler": "main.handler", "code": {"zip_base64": b64(&archive)}});
            let reply = app.post("/api/functions", &user.access_token, missing).await.expect_error(422, "validation_failed");
            assert_eq!(reply.body["error"]["field"], "handler");
            // A single source file is named after the handler's module by default.
            let single = json!({"name": "py-single", "runtime": python, "handler": "main.handler", "code": {"source": "def handler(e, c):\n    return 1\n"}});
            let created = app.post("/api/functions", &user.access_token, single).await.expect(201).body;
            let code = app.get(&format!("/api/functions/{}/code", created["id"].as_str().unwrap()), &user.access_token).await.expect(200).body;
            assert_eq!(code["filename"], "main.py");
            // Changing the handler to a module the stored code lacks is refused.
            app.put(&format!("/api/functions/{}", created["id"].as_str().unwrap()), &user.access_token, json!({"handler": "other.handler"}))
                .await
                .expect_error(422, "validation_failed");
        } else {
            voltrun_test_support::skip("the_handler_module_must_exist_in_the_code (Python half)", "this host has no python3 runtime");
        }
        if let Some(node) = app.runtime("nodejs").await {
            let archive = zip_of(&[("index.mjs", b"export const handler = async (e) => e;\n", 0o100644)]);
            let ok = json!({"name": "node-ok", "runtime": node, "handler": "index.handler", "code": {"zip_base64": b64(&archive)}});
            app.post("/api/functions", &user.access_token, ok).await.expect(201);
        } else {
            voltrun_test_support::skip("the_handler_module_must_exist_in_the_code (Node.js half)", "this host has no node runtime");
        }
        let no_bootstrap = zip_of(&[("main.sh", b"echo\n", 0o100755)]);
        let provided = json!({"name": "no-bootstrap", "runtime": "provided", "handler": "x.y", "code": {"zip_base64": b64(&no_bootstrap)}});
        let reply = app.post("/api/functions", &user.access_token, provided).await.expect_error(422, "validation_failed");
        assert!(reply.body["error"]["message"].as_str().unwrap().contains("bootstrap"));
    }

    async fn function_lists_paginate_without_gaps_or_repeats(app) {
        let user = app.register().await;
        for i in 0..5 {
            app.create_function(&user.access_token, &format!("f{i}")).await;
        }
        let first = app.get("/api/functions?limit=2", &user.access_token).await.expect(200).body;
        let second = app.get(&format!("/api/functions?limit=2&cursor={}", first["next_cursor"].as_str().unwrap()), &user.access_token).await.expect(200).body;
        let third = app.get(&format!("/api/functions?limit=2&cursor={}", second["next_cursor"].as_str().unwrap()), &user.access_token).await.expect(200).body;
        let names: Vec<&str> = [&first, &second, &third]
            .iter()
            .flat_map(|p| p["data"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()))
            .collect();
        assert_eq!(names, ["f4", "f3", "f2", "f1", "f0"]);
        assert_eq!(third["next_cursor"], Value::Null);
        for bad in ["limit=0", "limit=101", "limit=-1", "limit=abc", "cursor=not-a-cursor", "cursor=%27%20OR%201%3D1"] {
            app.get(&format!("/api/functions?{bad}"), &user.access_token).await.expect_error(422, "validation_failed");
        }
    }
}
