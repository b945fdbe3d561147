//! Disk: the code cache removes code no function references once nothing uses it, and never from
//! under a running instance.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::TestApp;
use crate::{deploy, engine_app, invoke};

async fn code_sha256(app: &TestApp, token: &str, id: &str) -> String {
    app.get(&format!("/api/functions/{id}"), token)
        .await
        .expect(200)
        .body["code_sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < Duration::from_secs(30), "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const KEPT: &str = "def handler(e, c):\n    return 'kept'\n";
/// Reads a file of its code after a pause: after its function was deleted.
const LATE_READER: &str = "import time\ndef handler(e, c):\n    time.sleep(e['sleep'])\n    return open('/var/task/data.txt').read()\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_code_is_collected_but_never_from_under_an_instance() {
    let test = "unreferenced_code_is_collected_but_never_from_under_an_instance";
    let Some(app) = engine_app(test, |raw| {
        raw.engine_code_gc_after_s = Some("1".into());
        raw.engine_keep_alive_s = Some("1".into());
    })
    .await
    else {
        return;
    };
    let python = app.runtime("python").await.unwrap();
    let user = app.register().await;
    let token = user.access_token.as_str();
    let kept = deploy(
        &app,
        token,
        "kept",
        &python,
        "main.handler",
        &[("main.py", KEPT)],
        json!({}),
    )
    .await;
    let late = deploy(
        &app,
        token,
        "late",
        &python,
        "main.handler",
        &[("main.py", LATE_READER), ("data.txt", "still here")],
        json!({"timeout_s": 60}),
    )
    .await;
    let code = app.data_dir().join("engine").join("code");
    let kept_dir = code.join(code_sha256(&app, token, &kept).await);
    let late_dir = code.join(code_sha256(&app, token, &late).await);
    assert_eq!(
        invoke(&app, token, &kept, json!({})).await["output"],
        "kept"
    );
    assert!(kept_dir.is_dir());

    // The function is deleted while an invocation runs that reads its code afterwards.
    let request = app
        .client
        .post(format!("{}/api/functions/{late}/execute", app.base))
        .bearer_auth(token)
        .json(&json!({"sleep": 4}));
    let running = tokio::spawn(async move { TestApp::read(request.send().await.unwrap()).await });
    let path = format!("/api/executions?function_id={late}&status=running");
    wait_until("the invocation never started", async || {
        late_dir.is_dir()
            && !app.get(&path, token).await.body["data"]
                .as_array()
                .unwrap()
                .is_empty()
    })
    .await;
    app.delete(&format!("/api/functions/{late}"), token)
        .await
        .expect(204);
    // Unreferenced now, and collections run every 250 ms: the instance's use keeps it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        late_dir.is_dir(),
        "code removed from under a running instance"
    );
    let done = running.await.unwrap().expect(200).body;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"], "still here");

    // Its instance stops after the 1 s keep-alive; a second later its code goes.
    wait_until("unreferenced code was never collected", async || {
        !late_dir.exists()
    })
    .await;
    // Referenced code stays, though its instance stopped and nothing has used it for seconds.
    assert!(kept_dir.is_dir(), "code a function references was removed");
    assert_eq!(
        invoke(&app, token, &kept, json!({})).await["output"],
        "kept"
    );
}
