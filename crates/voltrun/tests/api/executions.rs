//! Invocation and execution records, with the engine switched off (`ENGINE_BACKEND=none`): execute
//! answers 503 `engine_unavailable` and records nothing; records for the read paths are arranged
//! through the storage layer, as the engine writes them. Real invocations are the engine suite's.

use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;
use voltrun_domain::execution::{ExecutionStatus, LogLine, LogStream};

pub use crate::helpers::seed_execution;

both_databases! {
    async fn execute_answers_503_without_an_engine_and_records_nothing(app) {
        let user = app.register().await;
        let f = app.create_function(&user.access_token, "runner").await;
        let id = f["id"].as_str().unwrap();
        let reply = app.post(&format!("/api/functions/{id}/execute"), &user.access_token, json!({"x": 1})).await.expect_error(503, "engine_unavailable");
        assert!(reply.body["error"]["message"].as_str().unwrap().contains("ENGINE_BACKEND=none"));
        app.send(Method::POST, &format!("/api/functions/{id}/execute?async=true"), Some(&user.access_token), Some(json!({}))).await.expect_error(503, "engine_unavailable");
        assert_eq!(app.get("/api/executions", &user.access_token).await.expect(200).body["data"], json!([]));
        let health = app.send(Method::GET, "/health", None, None).await.expect(200);
        assert_eq!(health.body["engine"]["ready"], false);
    }

    async fn execute_checks_its_input_first(app) {
        let user = app.register().await;
        let f = app.create_function(&user.access_token, "inputs").await;
        let path = format!("/api/functions/{}/execute", f["id"].as_str().unwrap());
        app.post(&format!("/api/functions/{}/execute", Uuid::now_v7()), &user.access_token, json!({})).await.expect_error(404, "not_found");
        app.post("/api/functions/not-a-uuid/execute", &user.access_token, json!({})).await.expect_error(404, "not_found");
        app.raw(Method::POST, &path, Some(&user.access_token), "application/json", b"{not json".to_vec()).await.expect_error(400, "malformed_json");
        app.raw(Method::POST, &path, Some(&user.access_token), "text/plain", b"{}".to_vec()).await.expect_error(415, "unsupported_media_type");
        let big = format!("\"{}\"", "x".repeat(6 * 1024 * 1024));
        app.raw(Method::POST, &path, Some(&user.access_token), "application/json", big.into_bytes()).await.expect_error(413, "payload_too_large");
        let async_big = format!("\"{}\"", "x".repeat(1024 * 1024 + 10));
        app.raw(Method::POST, &format!("{path}?async=true"), Some(&user.access_token), "application/json", async_big.into_bytes()).await.expect_error(413, "payload_too_large");
    }

    async fn executions_list_get_filter_and_paginate(app) {
        let user = app.register().await;
        let a = app.create_function(&user.access_token, "fa").await["id"].as_str().unwrap().to_string();
        let b = app.create_function(&user.access_token, "fb").await["id"].as_str().unwrap().to_string();
        let e1 = seed_execution(&app, &user.id, &a, ExecutionStatus::Succeeded).await;
        let e2 = seed_execution(&app, &user.id, &a, ExecutionStatus::Failed).await;
        let e3 = seed_execution(&app, &user.id, &b, ExecutionStatus::Succeeded).await;

        let all = app.get("/api/executions", &user.access_token).await.expect(200).body;
        let ids: Vec<&str> = all["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [e3.to_string(), e2.to_string(), e1.to_string()]);

        let of_a = app.get(&format!("/api/executions?function_id={a}"), &user.access_token).await.expect(200).body;
        assert_eq!(of_a["data"].as_array().unwrap().len(), 2);
        let failed = app.get(&format!("/api/executions?function_id={a}&status=failed"), &user.access_token).await.expect(200).body;
        assert_eq!(failed["data"].as_array().unwrap().len(), 1);
        assert_eq!(failed["data"][0]["error"], json!({"type": "Runtime.Unhandled", "message": "boom"}));

        let page = app.get("/api/executions?limit=2", &user.access_token).await.expect(200).body;
        assert_eq!(page["data"].as_array().unwrap().len(), 2);
        let rest = app.get(&format!("/api/executions?limit=2&cursor={}", page["next_cursor"].as_str().unwrap()), &user.access_token).await.expect(200).body;
        assert_eq!(rest["data"][0]["id"], e1.to_string());
        assert_eq!(rest["next_cursor"], Value::Null);

        let one = app.get(&format!("/api/executions/{e1}"), &user.access_token).await.expect(200).body;
        for field in ["id", "function_id", "function_version", "status", "invocation_type", "input", "output", "error",
            "created_at", "started_at", "finished_at", "duration_ms", "init_duration_ms", "memory_peak_mb", "cold_start", "node", "instance_id", "logs_truncated"] {
            assert!(one.get(field).is_some(), "execution lacks {field}: {one}");
        }
        assert_eq!(one["status"], "succeeded");
        assert_eq!(one["output"], json!({"ok": true}));
        assert_eq!(one["cold_start"], true);

        app.get("/api/executions?status=exploded", &user.access_token).await.expect_error(422, "validation_failed");
        app.get("/api/executions?function_id=42", &user.access_token).await.expect_error(422, "validation_failed");
        app.get(&format!("/api/executions/{}", Uuid::now_v7()), &user.access_token).await.expect_error(404, "not_found");
    }

    async fn executions_outlive_their_function(app) {
        let user = app.register().await;
        let f = app.create_function(&user.access_token, "gone").await["id"].as_str().unwrap().to_string();
        let e = seed_execution(&app, &user.id, &f, ExecutionStatus::Succeeded).await;
        app.delete(&format!("/api/functions/{f}"), &user.access_token).await.expect(204);
        let still = app.get(&format!("/api/executions/{e}"), &user.access_token).await.expect(200).body;
        assert_eq!(still["function_id"], f);
    }

    async fn logs_as_json_and_text_with_truncation(app) {
        let user = app.register().await;
        let f = app.create_function(&user.access_token, "logger").await["id"].as_str().unwrap().to_string();
        let e = seed_execution(&app, &user.id, &f, ExecutionStatus::Succeeded).await;
        let store = app.store().await;
        let line = |stream, text: &str| LogLine { timestamp: Utc::now(), stream, line: text.to_string() };
        store
            .append_logs(e, &[line(LogStream::Stdout, "hello"), line(LogStream::Stderr, "warn: ünïcödé ✓")], 128)
            .await
            .unwrap();
        let json_logs = app.get(&format!("/api/executions/{e}/logs"), &user.access_token).await.expect(200).body;
        assert_eq!(json_logs["truncated"], false);
        assert_eq!(json_logs["lines"][0]["line"], "hello");
        assert_eq!(json_logs["lines"][1]["stream"], "stderr");
        assert_eq!(json_logs["lines"][1]["line"], "warn: ünïcödé ✓");

        // Past the cap: kept lines stay, the rest is dropped and flagged.
        store.append_logs(e, &[line(LogStream::Stdout, &"y".repeat(100))], 128).await.unwrap();
        // Empty lines are not free: each costs LOG_LINE_OVERHEAD_BYTES, so a flood of them is cut too.
        store.close().await;
        let capped = app.get(&format!("/api/executions/{e}/logs"), &user.access_token).await.expect(200).body;
        assert_eq!(capped["truncated"], true);
        assert_eq!(capped["lines"].as_array().unwrap().len(), 2);
        assert_eq!(app.get(&format!("/api/executions/{e}"), &user.access_token).await.body["logs_truncated"], true);

        let text = app.get(&format!("/api/executions/{e}/logs?format=text"), &user.access_token).await.expect(200);
        assert!(text.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
        assert!(text.text.contains(" stdout hello\n"), "{}", text.text);
        assert!(text.text.ends_with("[logs truncated]\n"));
        app.get(&format!("/api/executions/{e}/logs?format=xml"), &user.access_token).await.expect_error(422, "validation_failed");
    }
}
