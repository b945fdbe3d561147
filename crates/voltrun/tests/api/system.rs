//! Health, request ids, error format on unknown routes, metrics, and the OpenAPI document checked
//! against what the server actually serves.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp};

/// Every route the server serves, as (method, OpenAPI path).
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/auth/register"),
    ("post", "/api/auth/login"),
    ("post", "/api/auth/refresh"),
    ("post", "/api/auth/logout"),
    ("get", "/api/auth/me"),
    ("get", "/api/keys"),
    ("post", "/api/keys"),
    ("delete", "/api/keys/{id}"),
    ("get", "/api/functions"),
    ("post", "/api/functions"),
    ("get", "/api/functions/{id}"),
    ("put", "/api/functions/{id}"),
    ("delete", "/api/functions/{id}"),
    ("get", "/api/functions/{id}/code"),
    ("post", "/api/functions/{id}/execute"),
    ("get", "/api/layers"),
    ("post", "/api/layers"),
    ("get", "/api/layers/{name}/versions/{version}"),
    ("delete", "/api/layers/{name}/versions/{version}"),
    ("get", "/api/executions"),
    ("get", "/api/executions/{id}"),
    ("get", "/api/executions/{id}/logs"),
    ("get", "/api/runtimes"),
    ("get", "/api/openapi.json"),
    ("get", "/health"),
    ("get", "/metrics"),
];

fn schema_properties(doc: &Value, name: &str) -> BTreeSet<String> {
    let schema = &doc["components"]["schemas"][name];
    schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {name}: {schema}"))
        .keys()
        .cloned()
        .collect()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

both_databases! {
    async fn health_tells_anyone_only_up_or_down_and_the_backends(app) {
        let reply = app.send(Method::GET, "/health", None, None).await.expect(200);
        let backend = if app.backend == Backend::Sqlite { "sqlite" } else { "postgres" };
        // No version, uptime, latency, nor the engine's detail and warnings, which name host paths.
        assert_eq!(reply.body, json!({
            "status": "degraded",
            "database": {"status": "ok", "backend": backend},
            "engine": {"backend": "none", "ready": false},
        }), "no engine yet, so not fully ok");
        // A user's access token is not the operator's.
        let user = app.register().await;
        app.get("/health", &user.access_token).await.expect_error(401, "unauthorized");
    }

    async fn health_tells_the_operator_the_detail(app) {
        let reply = app.operator_get("/health").await.expect(200);
        assert_eq!(reply.body["status"], "degraded");
        assert!(reply.body["version"].is_string());
        assert!(reply.body["uptime_s"].is_u64());
        assert!(reply.body["database"]["latency_ms"].is_f64());
        assert_eq!(reply.body["engine"]["backend"], "none");
        assert!(reply.body["engine"]["detail"].as_str().unwrap().contains("ENGINE_BACKEND=none"));
        assert_eq!(reply.body["engine"]["warnings"], json!([]));
    }

    async fn metrics_need_the_metrics_token(app) {
        app.send(Method::GET, "/metrics", None, None).await.expect_error(401, "unauthorized");
        let user = app.register().await;
        app.get("/metrics", &user.access_token).await.expect_error(401, "unauthorized");
        let mut wrong = app.metrics_token.clone().unwrap();
        wrong.push('x');
        let reply = app.get("/metrics", &wrong).await.expect_error(401, "unauthorized");
        assert_eq!(reply.headers["www-authenticate"], "Bearer");
        let reply = app.operator_get("/metrics").await.expect(200);
        assert!(reply.text.contains("voltrun_http_requests_total"));
    }

    async fn request_ids_are_generated_or_propagated(app) {
        let generated = app.send(Method::GET, "/health", None, None).await;
        assert!(!generated.headers["x-request-id"].to_str().unwrap().is_empty());
        let mine = app.client.get(format!("{}/api/nope", app.base)).header("x-request-id", "my-trace-123").send().await.unwrap();
        let reply = TestApp::read(mine).await.expect_error(404, "not_found");
        assert_eq!(reply.headers["x-request-id"], "my-trace-123");
        assert_eq!(reply.body["request_id"], "my-trace-123");
        // A hostile id (spaces, newlines would be refused by HTTP itself; long ones by us) is replaced.
        let long = app.client.get(format!("{}/health", app.base)).header("x-request-id", "x".repeat(500)).send().await.unwrap();
        assert_ne!(long.headers()["x-request-id"].to_str().unwrap(), "x".repeat(500));
    }

    async fn unknown_routes_and_methods_answer_in_the_error_format(app) {
        app.send(Method::GET, "/nope", None, None).await.expect_error(404, "not_found");
        app.send(Method::PATCH, "/api/functions", None, None).await.expect_error(405, "method_not_allowed");
    }

    async fn metrics_expose_requests_executions_and_pool(app) {
        app.send(Method::GET, "/health", None, None).await.expect(200);
        let reply = app.operator_get("/metrics").await.expect(200);
        for needle in [
            "voltrun_http_requests_total{",
            "route=\"/health\"",
            "voltrun_http_request_duration_seconds_bucket{",
            "voltrun_executions_total{status=\"succeeded\"}",
            "voltrun_db_pool_connections",
            "voltrun_db_pool_idle_connections",
        ] {
            assert!(reply.text.contains(needle), "metrics lack {needle}:\n{}", reply.text);
        }
    }

    async fn openapi_document_matches_the_served_routes(app) {
        let doc = app.send(Method::GET, "/api/openapi.json", None, None).await.expect(200).body;
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let served: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        assert_eq!(documented, served, "the document and the router disagree");

        // Each documented route is really there: never the router's 404/405.
        let id = uuid::Uuid::now_v7().to_string();
        for (method, path) in ROUTES {
            let url = path.replace("{id}", &id).replace("{name}", "none").replace("{version}", "1");
            let reply = app.send(method.to_uppercase().parse().unwrap(), &url, None, None).await;
            assert_ne!(reply.status.as_u16(), 405, "{method} {path}");
            assert_ne!(reply.body["error"]["message"], "no such route", "{method} {path}");
        }

        // Response schemas list exactly the fields the server sends.
        let user = app.register().await;
        let f = app.post("/api/functions", &user.access_token, crate::helpers::function_body("documented")).await.expect(201).body;
        assert_eq!(schema_properties(&doc, "FunctionResponse"), keys(&f));
        let key = app.post("/api/keys", &user.access_token, json!({"name": "doc"})).await.expect(201).body;
        let mut key_fields = schema_properties(&doc, "KeyResponse");
        key_fields.insert("key".into());
        assert_eq!(key_fields, keys(&key));
        let e = crate::executions::seed_execution(&app, &user.id, f["id"].as_str().unwrap(), voltrun_domain::execution::ExecutionStatus::Succeeded).await;
        let execution = app.get(&format!("/api/executions/{e}"), &user.access_token).await.expect(200).body;
        assert_eq!(schema_properties(&doc, "ExecutionResponse"), keys(&execution));
        let error = app.get("/api/functions/x", &user.access_token).await.body;
        assert_eq!(schema_properties(&doc, "ErrorBody"), keys(&error));
        let health = app.operator_get("/health").await.body;
        assert_eq!(schema_properties(&doc, "HealthResponse"), keys(&health));
        assert_eq!(schema_properties(&doc, "EngineHealth"), keys(&health["engine"]));
        assert_eq!(schema_properties(&doc, "DatabaseHealth"), keys(&health["database"]));
    }

    async fn docs_page_points_at_the_document(app) {
        let reply = app.client.get(format!("{}/docs", app.base)).send().await.unwrap();
        assert_eq!(reply.status(), 200);
        assert!(reply.text().await.unwrap().contains("/api/openapi.json"));
    }
}

/// A server without a METRICS_TOKEN keeps /metrics open (as before the token existed), and shows
/// /health's detail to no one: there is no operator to prove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_metrics_token_metrics_are_open_and_health_detail_is_shown_to_none() {
    let app = TestApp::spawn_with(Backend::Sqlite, |raw| raw.server.metrics_token = None).await;
    app.send(Method::GET, "/metrics", None, None)
        .await
        .expect(200);
    let health = app
        .send(Method::GET, "/health", None, None)
        .await
        .expect(200);
    assert_eq!(
        keys(&health.body),
        keys(&json!({"status": 0, "database": 0, "engine": 0}))
    );
    let with_some_token = app.get("/health", "anything-at-all").await.expect(200);
    assert!(with_some_token.body["engine"].get("detail").is_none());
}

/// With the database gone, /health says so with a 503 (PostgreSQL: the database is dropped under the
/// running server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_health_is_503_when_the_database_is_unreachable() {
    let app = TestApp::spawn(Backend::Postgres).await;
    app.send(Method::GET, "/health", None, None)
        .await
        .expect(200);
    use sqlx::Connection;
    let base = std::env::var("VOLTRUN_TEST_DATABASE_URL").unwrap();
    let name = app
        .database_url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let reply = app
        .send(Method::GET, "/health", None, None)
        .await
        .expect(503);
    assert_eq!(reply.body["status"], "unavailable");
    assert_eq!(reply.body["database"]["status"], "unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_data_directory_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let fresh = std::env::temp_dir()
        .join(format!("voltrun-private-{}", crate::helpers::unique()))
        .join("data");
    let database = fresh.join("voltrun.db");
    let app = TestApp::spawn_with(Backend::Sqlite, |raw| {
        raw.server.data_dir = fresh.clone();
        raw.server.database_url = Some(voltrun::config::Secret::new(format!(
            "sqlite://{}",
            database.display()
        )));
        // Development secrets kept in the data directory.
        raw.auth.jwt_secret = None;
    })
    .await;
    app.register().await;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fresh), 0o700, "data directory");
    assert_eq!(mode(&database), 0o600, "database file");
    assert_eq!(mode(&fresh.join("jwt_secret")), 0o600, "JWT secret");
    assert_eq!(mode(&fresh.join("encryption_key")), 0o600, "encryption key");
    let wal = fresh.join("voltrun.db-wal");
    if wal.exists() {
        assert_eq!(mode(&wal), 0o600, "write-ahead log");
    }
    let _ = std::fs::remove_dir_all(fresh.parent().unwrap());
}

/// Every byte the database keeps: SQLite's file and its write-ahead log.
async fn database_bytes(app: &TestApp) -> Vec<u8> {
    let path = app.database_url.trim_start_matches("sqlite://").to_string();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend(std::fs::read(format!("{path}-wal")).unwrap_or_default());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_never_stored_in_plaintext() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let user = app.register().await;
    let key = app
        .post("/api/keys", &user.access_token, json!({"name": "ci"}))
        .await
        .expect(201)
        .body["key"]
        .as_str()
        .unwrap()
        .to_string();
    let env_value = format!("env-secret-{}", crate::helpers::unique());
    let mut body = crate::helpers::function_body("with-secret");
    body["env"] = json!({"API_TOKEN": env_value});
    app.post("/api/functions", &user.access_token, body)
        .await
        .expect(201);
    // A rotated refresh token is stored (as its hash) too.
    let rotated = app
        .send(
            Method::POST,
            "/api/auth/refresh",
            None,
            Some(json!({"refresh_token": user.refresh_token})),
        )
        .await
        .expect(200)
        .body["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = database_bytes(&app).await;
    let contains = |needle: &str| stored.windows(needle.len()).any(|w| w == needle.as_bytes());
    // The check can see what is there: the user's email is stored as it is.
    assert!(contains(&user.email), "the scan reads the database");
    for (what, secret) in [
        ("an environment value", env_value.as_str()),
        ("an API key", key.as_str()),
        ("a refresh token", user.refresh_token.as_str()),
        ("a rotated refresh token", rotated.as_str()),
        ("a password", user.password.as_str()),
    ] {
        assert!(!contains(secret), "{what} is stored in plaintext");
    }
}
