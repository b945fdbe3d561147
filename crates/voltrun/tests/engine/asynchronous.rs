//! Asynchronous invocations: queued in the database, dispatched, retried with backoff, and never
//! lost, not even when the server is killed in the middle of a burst.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::{deploy_python, engine_app, unavailable};

async fn wait_terminal(app: &TestApp, token: &str, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let e = app
            .get(&format!("/api/executions/{id}"), token)
            .await
            .expect(200)
            .body;
        if !matches!(e["status"].as_str(), Some("queued" | "running")) {
            return e;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "execution never finished: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const FLAKY: &str = "calls = 0\ndef handler(e, c):\n    global calls\n    calls += 1\n    if calls < e['succeed_on']:\n        raise RuntimeError('attempt %d fails' % calls)\n    return calls\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_executions_retry_with_backoff_and_record_each_attempt() {
    let Some(app) = engine_app(
        "async_executions_retry_with_backoff_and_record_each_attempt",
        |raw| {
            raw.engine.retry_backoff_ms = 50;
        },
    )
    .await
    else {
        return;
    };
    let user = app.register().await;
    let id = deploy_python(&app, &user.access_token, "flaky", FLAKY, json!({})).await;
    let queued = app
        .client
        .post(format!("{}/api/functions/{id}/execute", app.base))
        .bearer_auth(&user.access_token)
        .header("x-invocation-type", "async")
        .json(&json!({"succeed_on": 3}))
        .send()
        .await
        .unwrap();
    let queued = TestApp::read(queued).await.expect(202).body;
    assert_eq!(queued["status"], "queued");
    let done = wait_terminal(
        &app,
        &user.access_token,
        queued["execution_id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"], 3);
    assert_eq!(done["attempts"], 3);
    assert_eq!(done["invocation_type"], "async");
    let history = done["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{done}");
    assert_eq!(history[0]["status"], "failed");
    assert_eq!(
        history[0]["error"]["message"],
        "RuntimeError: attempt 1 fails"
    );
    assert_eq!(history[2]["status"], "succeeded");

    // With retries off, the first failure is final.
    let strict = deploy_python(
        &app,
        &user.access_token,
        "strict",
        FLAKY,
        json!({"max_retries": 0}),
    )
    .await;
    let queued = app
        .post(
            &format!("/api/functions/{strict}/execute?async=true"),
            &user.access_token,
            json!({"succeed_on": 2}),
        )
        .await
        .expect(202)
        .body;
    let done = wait_terminal(
        &app,
        &user.access_token,
        queued["execution_id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["error"]["type"], "Runtime.Unhandled");
}

struct Server {
    child: Child,
    base: String,
}

/// A failing assertion must not leave a server running after the test.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(data_dir: &std::path::Path, port: u16, log_name: &str) -> Server {
    let log = std::fs::File::create(data_dir.join(log_name)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_voltrun"))
        .args([
            "server",
            "--port",
            &port.to_string(),
            "--bind-address",
            "127.0.0.1",
        ])
        .env("DATA_DIR", data_dir)
        .env("JWT_SECRET", "crash-test-secret-of-32-bytes-or-more")
        .env("ENGINE_BACKEND", "namespace")
        .env("LOG_LEVEL", "info")
        .env("LOG_FORMAT", "json")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if client
            .get(format!("{base}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not come up");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_mid_burst_loses_no_execution() {
    if let Some(why) = unavailable() {
        crate::skip("killing_the_server_mid_burst_loses_no_execution", &why);
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data_dir = std::env::temp_dir().join(format!("voltrun-crash-{}", crate::helpers::unique()));
    let client = reqwest::Client::new();
    let port = free_port();
    std::fs::create_dir_all(&data_dir).unwrap();
    let mut server = start_server(&data_dir, port, "first.log");
    wait_healthy(&client, &server.base).await;

    let register = client
        .post(format!("{}/api/auth/register", server.base))
        .json(&json!({"email": "crash@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    let token = register.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let function = client
        .post(format!("{}/api/functions", server.base))
        .bearer_auth(&token)
        .json(&json!({"name": "slow", "runtime": "provided", "handler": "x.y", "code": {"filename": "bootstrap", "source":
            "#!/bin/sh\nAPI=\"http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime\"\nwhile true; do\n  H=$(mktemp)\n  curl -sS -D \"$H\" \"$API/invocation/next\" >/dev/null\n  ID=$(grep -i Lambda-Runtime-Aws-Request-Id \"$H\" | tr -d '[:space:]' | cut -d: -f2)\n  sleep 0.3\n  curl -sS -X POST \"$API/invocation/$ID/response\" -d '\"done\"' >/dev/null\ndone\n"}}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let fid = function["id"].as_str().unwrap().to_string();
    let mut ids = Vec::new();
    for i in 0..12 {
        let queued = client
            .post(format!(
                "{}/api/functions/{fid}/execute?async=true",
                server.base
            ))
            .bearer_auth(&token)
            .json(&json!({"i": i}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        ids.push(queued["execution_id"].as_str().unwrap().to_string());
    }
    // Some are done, some running, most still queued: kill without warning.
    tokio::time::sleep(Duration::from_millis(900)).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let mut server = start_server(&data_dir, port, "second.log");
    wait_healthy(&client, &server.base).await;
    let started = Instant::now();
    loop {
        let mut statuses = Vec::new();
        for id in &ids {
            let e = client
                .get(format!("{}/api/executions/{id}", server.base))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap();
            statuses.push(e["status"].as_str().unwrap_or("missing").to_string());
        }
        if statuses.iter().all(|s| s == "succeeded") {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let first = std::fs::read_to_string(data_dir.join("first.log")).unwrap_or_default();
            let second = std::fs::read_to_string(data_dir.join("second.log")).unwrap_or_default();
            panic!(
                "not all executions finished: {statuses:?}\nids: {ids:?}\n--- first server\n{first}\n--- second server\n{second}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&data_dir);
}

const SLEEPER: &str =
    "import time\ndef handler(e, c):\n    time.sleep(e.get('sleep', 0))\n    return 'slept'\n";

/// Sends an asynchronous invocation.
async fn enqueue(app: &TestApp, token: &str, id: &str, event: Value) -> crate::helpers::Reply {
    let reply = app
        .client
        .post(format!(
            "{}/api/functions/{id}/execute?async=true",
            app.base
        ))
        .bearer_auth(token)
        .json(&event)
        .send()
        .await
        .unwrap();
    TestApp::read(reply).await
}

/// With the dispatcher's one slot taken by a long execution, concurrent enqueues of one user stop
/// at the queue quota: the rest answer 429 `queue_full` with Retry-After, and queue nothing.
async fn a_full_queue_answers_429_and_queues_nothing(backend: crate::helpers::Backend, test: &str) {
    let Some(app) = crate::engine_app_on(backend, test, |raw| {
        raw.quotas.queued_executions_per_user = 3;
        raw.engine.async_parallelism = 1;
    })
    .await
    else {
        return;
    };
    let user = app.register().await;
    let token = user.access_token.as_str();
    let id = deploy_python(&app, token, "sleeper", SLEEPER, json!({"timeout_s": 120})).await;
    let long = enqueue(&app, token, &id, json!({"sleep": 60}))
        .await
        .expect(202);
    let long = long.body["execution_id"].as_str().unwrap().to_string();
    let started = Instant::now();
    while app
        .get(&format!("/api/executions/{long}"), token)
        .await
        .body["status"]
        != "running"
    {
        assert!(started.elapsed() < Duration::from_secs(30), "never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let request = app
            .client
            .post(format!(
                "{}/api/functions/{id}/execute?async=true",
                app.base
            ))
            .bearer_auth(token)
            .json(&json!({}));
        tasks.push(tokio::spawn(async move {
            TestApp::read(request.send().await.unwrap()).await
        }));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    let outcomes: Vec<(u16, &Value)> = replies
        .iter()
        .map(|r| (r.status.as_u16(), &r.body["error"]["code"]))
        .collect();
    assert_eq!(
        replies.iter().filter(|r| r.status == 202).count(),
        3,
        "{outcomes:?}"
    );
    for full in replies.into_iter().filter(|r| r.status != 202) {
        let full = full.expect_error(429, "queue_full");
        assert!(
            full.headers.contains_key("retry-after"),
            "{:?}",
            full.headers
        );
        let message = full.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("3 queued") && message.contains("limit is 3"),
            "{message}"
        );
    }
    let listed = app
        .get("/api/executions?limit=100", token)
        .await
        .expect(200)
        .body;
    let statuses: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses.len(),
        4,
        "refused invocations were recorded: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == "queued").count(), 3);

    // The queue is per user.
    let other = app.register().await;
    let theirs = deploy_python(&app, &other.access_token, "sleeper", SLEEPER, json!({})).await;
    enqueue(&app, &other.access_token, &theirs, json!({}))
        .await
        .expect(202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_queues_nothing_on_sqlite() {
    a_full_queue_answers_429_and_queues_nothing(
        crate::helpers::Backend::Sqlite,
        "a_full_queue_answers_429_and_queues_nothing_on_sqlite",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_queues_nothing_on_postgres() {
    a_full_queue_answers_429_and_queues_nothing(
        crate::helpers::Backend::Postgres,
        "a_full_queue_answers_429_and_queues_nothing_on_postgres",
    )
    .await;
}
