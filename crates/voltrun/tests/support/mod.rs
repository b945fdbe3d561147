//! What the server's suites (api, engine, cli) share, in one place: `TestApp::spawn` starts a server
//! on a fresh database and returns a client for it, and `both_databases!` runs a test on SQLite and
//! on PostgreSQL. Each suite includes it as its `helpers` module.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use voltrun::config::{Secret, Settings, SettingsArgs};
use voltrun::startup::{Application, read_host};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Declares each test once and runs it on both databases: `mod sqlite { … }` and `mod postgres { … }`.
macro_rules! both_databases {
    ($(async fn $name:ident($app:ident) $body:block)*) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $app = $crate::helpers::TestApp::spawn($crate::helpers::Backend::Sqlite).await;
                    $body
                }
            )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $app = $crate::helpers::TestApp::spawn($crate::helpers::Backend::Postgres).await;
                    $body
                }
            )*
        }
    };
}

/// [`both_databases!`] for servers with settings of their own:
/// `both_databases_with! { |raw| { raw.server.port = …; } async fn name(app) { … } … }`.
#[allow(unused_macros)] // not every suite that shares these helpers customises its servers
macro_rules! both_databases_with {
    (|$raw:ident| $customise:block $(async fn $name:ident($app:ident) $body:block)*) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $app = $crate::helpers::TestApp::spawn_with(
                        $crate::helpers::Backend::Sqlite,
                        |$raw: &mut voltrun::config::SettingsArgs| $customise,
                    )
                    .await;
                    $body
                }
            )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $app = $crate::helpers::TestApp::spawn_with(
                        $crate::helpers::Backend::Postgres,
                        |$raw: &mut voltrun::config::SettingsArgs| $customise,
                    )
                    .await;
                    $body
                }
            )*
        }
    };
}

#[allow(missing_debug_implementations)]
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub database_url: String,
    pub backend: Backend,
    /// The server's `METRICS_TOKEN` (each test server has one unless the test removes it).
    pub metrics_token: Option<String>,
    data_dir: std::path::PathBuf,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl TestApp {
    /// The server's `DATA_DIR` (removed when the app is dropped).
    #[allow(dead_code)] // used by the engine suite, which shares these helpers
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A registered user with a live session.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub email: String,
    pub password: String,
    pub access_token: String,
    pub refresh_token: String,
}

/// A response: status, headers and parsed JSON body (`Value::Null` when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// Asserts the status; on mismatch prints the body, which says why.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts an error response in the API's format with this status and code.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Self {
        let reply = self.expect(status);
        assert_eq!(
            reply.body["error"]["code"], code,
            "wrong error code; body: {}",
            reply.text
        );
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            reply.text
        );
        let request_id = reply
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert_eq!(
            reply.body["request_id"], request_id,
            "request_id must match the header"
        );
        reply
    }
}

pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn postgres_database_url() -> String {
    let base = std::env::var("VOLTRUN_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "the PostgreSQL half of the suite needs a server: run scripts/test.sh (it starts a throwaway one), \
             or set VOLTRUN_TEST_DATABASE_URL=postgres://USER@HOST:PORT/DB for a server where USER may CREATE DATABASE"
        )
    });
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to VOLTRUN_TEST_DATABASE_URL: {e}"));
    let name = format!("voltrun_test_{}", unique());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("CREATE DATABASE");
    let (without_query, query) = match base.split_once('?') {
        Some((url, q)) => (url.to_string(), format!("?{q}")),
        None => (base.clone(), String::new()),
    };
    let (server, _db) = without_query
        .rsplit_once('/')
        .expect("database URL has a path");
    format!("{server}/{name}{query}")
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, customise: impl FnOnce(&mut SettingsArgs)) -> Self {
        let data_dir = std::env::temp_dir().join(format!("voltrun-test-{}", unique()));
        std::fs::create_dir_all(&data_dir).unwrap();
        let database_url = match backend {
            Backend::Sqlite => format!("sqlite://{}", data_dir.join("voltrun.db").display()),
            Backend::Postgres => postgres_database_url().await,
        };
        let mut raw = SettingsArgs::default();
        raw.server.port = 0;
        raw.server.bind_address = [127, 0, 0, 1].into();
        raw.server.database_url = Some(Secret::new(database_url.clone()));
        raw.server.data_dir = data_dir.clone();
        raw.auth.jwt_secret = Some(Secret::new(
            format!("test-secret-{}", unique()).into_bytes(),
        ));
        raw.server.log_level = std::env::var("TEST_LOG").unwrap_or_else(|_| "error".into());
        raw.server.db_max_connections = 5;
        // The API suite tests the API whatever the host can run; the engine suite opts in.
        raw.engine.backend = voltrun::config::EngineBackend::None;
        raw.server.metrics_token = Some(Secret::new(format!("metrics-{}", unique())));
        customise(&mut raw);
        let metrics_token = raw
            .server
            .metrics_token
            .as_ref()
            .map(|t| t.expose().clone());
        let settings = Settings::from_args(raw, &read_host()).expect("test settings");
        let _ = rustls::crypto::ring::default_provider().install_default();
        voltrun::telemetry::init(settings.log_format, &settings.log_level);
        let app = Application::build(&settings).await.expect("server starts");
        let port = app.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            database_url,
            backend,
            metrics_token,
            data_dir,
            _shutdown: tx,
        }
    }

    /// A second connection to this test's database, for arranging state the API cannot create.
    pub async fn store(&self) -> Arc<dyn voltrun_storage::Store> {
        voltrun_storage::connect(&self.database_url, 2)
            .await
            .expect("store")
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Self::read(request.send().await.expect("request sent")).await
    }

    /// POSTs `body` as a client whose request reached the server through a proxy on 127.0.0.1 that
    /// wrote `forwarded_for` into `X-Forwarded-For`. Only a server with 127.0.0.1 among its
    /// `TRUSTED_PROXIES` believes the header.
    pub async fn post_via_proxy(&self, forwarded_for: &str, path: &str, body: Value) -> Reply {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("x-forwarded-for", forwarded_for)
            .json(&body);
        Self::read(request.send().await.expect("request sent")).await
    }

    pub async fn read(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    /// GETs an operational endpoint (`/health`, `/metrics`) as the operator, with the metrics token.
    pub async fn operator_get(&self, path: &str) -> Reply {
        let token = self
            .metrics_token
            .as_deref()
            .expect("this test server has no METRICS_TOKEN");
        self.send(Method::GET, path, Some(token), None).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send(Method::PUT, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.send(Method::DELETE, path, Some(token), None).await
    }

    /// Sends raw bytes with the given content type.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Self::read(request.send().await.expect("request sent")).await
    }

    pub async fn register(&self) -> TestUser {
        let email = format!("user-{}@example.com", unique());
        let password = "correct horse battery staple".to_string();
        let reply = self
            .send(
                Method::POST,
                "/api/auth/register",
                None,
                Some(json!({"email": email, "password": password})),
            )
            .await
            .expect(201);
        TestUser {
            id: reply.body["user"]["id"].as_str().unwrap().to_string(),
            email,
            password,
            access_token: reply.body["access_token"].as_str().unwrap().to_string(),
            refresh_token: reply.body["refresh_token"].as_str().unwrap().to_string(),
        }
    }

    /// Creates a `provided` function (always offered) from one `bootstrap` source file.
    pub async fn create_function(&self, token: &str, name: &str) -> Value {
        self.post("/api/functions", token, function_body(name))
            .await
            .expect(201)
            .body
    }

    /// A runtime id of the given family that this host offers (`python`, `nodejs`).
    pub async fn runtime(&self, family: &str) -> Option<String> {
        let reply = self
            .send(Method::GET, "/api/runtimes", None, None)
            .await
            .expect(200);
        reply
            .body
            .as_array()?
            .iter()
            .find(|r| r["family"] == family)
            .map(|r| r["id"].as_str().unwrap().to_string())
    }
}

pub fn function_body(name: &str) -> Value {
    json!({
        "name": name,
        "runtime": "provided",
        "handler": "function.handler",
        "code": {"source": "#!/bin/sh\necho hello\n", "filename": "bootstrap"},
    })
}

/// A zip archive built in memory from (path, contents, unix mode) entries.
pub fn zip_of(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        for (path, contents, mode) in entries {
            let options: zip::write::SimpleFileOptions = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(*mode);
            if mode & 0o170000 == 0o120000 {
                zip.add_symlink(*path, std::str::from_utf8(contents).unwrap(), options)
                    .unwrap();
            } else {
                zip.start_file(*path, options).unwrap();
                zip.write_all(contents).unwrap();
            }
        }
        zip.finish().unwrap();
    }
    buf.into_inner()
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A finished execution's outcome as the seeded-history tests store it: succeeded with
/// `{"ok": true}` or failed with `Runtime.Unhandled: boom`, 3 ms, a 40 ms cold start.
#[allow(dead_code)] // not every suite that shares these helpers seeds executions
pub fn sample_outcome(
    status: voltrun_domain::execution::ExecutionStatus,
) -> voltrun_domain::execution::ExecutionOutcome {
    let now = voltrun_storage::now();
    let failed = status == voltrun_domain::execution::ExecutionStatus::Failed;
    voltrun_domain::execution::ExecutionOutcome {
        status,
        output: (!failed).then(|| json!({"ok": true})),
        error: failed.then(|| voltrun_domain::execution::ExecutionError {
            error_type: "Runtime.Unhandled".into(),
            message: "boom".into(),
        }),
        started_at: now,
        finished_at: now,
        duration_ms: 3,
        init_duration_ms: Some(40),
        memory_peak_mb: Some(20),
        cold_start: true,
        node: "node-a".into(),
        instance_id: "inst-1".into(),
    }
}

/// Records an execution of `function_id` for `user_id` as the engine would: queued, running, or
/// finished with [`sample_outcome`].
#[allow(dead_code)] // not every suite that shares these helpers seeds executions
pub async fn seed_execution(
    app: &TestApp,
    user_id: &str,
    function_id: &str,
    status: voltrun_domain::execution::ExecutionStatus,
) -> uuid::Uuid {
    use voltrun_domain::execution::{ExecutionRecord, ExecutionStatus, InvocationType};
    let store = app.store().await;
    let record = ExecutionRecord::new_queued(
        user_id.parse().unwrap(),
        function_id.parse().unwrap(),
        1,
        InvocationType::Sync,
        json!({"n": 1}),
        voltrun_storage::now(),
    );
    let id = record.id;
    store.insert_execution(&record).await.unwrap();
    match status {
        ExecutionStatus::Queued => {}
        ExecutionStatus::Running => store
            .mark_execution_running(id, voltrun_storage::now(), "test-node")
            .await
            .unwrap(),
        _ => store
            .finish_execution(id, &sample_outcome(status))
            .await
            .unwrap(),
    }
    store.close().await;
    id
}
