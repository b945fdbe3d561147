//! Functions that work: results, logs, warm reuse, versions, the three runtime families.

use serde_json::json;

use crate::{deploy, deploy_python, engine_app, invoke, logs};

const PY_ECHO: &str = r#"
import os
print("init", flush=True)
def handler(event, context):
    print("got", event, flush=True)
    return {"echo": event, "fn": context.function_name, "mem": context.memory_limit_in_mb,
            "greeting": os.environ.get("GREETING"), "remaining_ok": context.get_remaining_time_in_millis() > 0,
            "pid": os.getpid()}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_runs_cold_then_warm_with_logs() {
    let Some(app) = engine_app("python_runs_cold_then_warm_with_logs", |_| {}).await else {
        return;
    };
    assert!(
        app.runtime("python").await.is_some(),
        "no python runtime detected"
    );
    let user = app.register().await;
    let id = deploy_python(
        &app,
        &user.access_token,
        "echo",
        PY_ECHO,
        json!({"env": {"GREETING": "hi"}}),
    )
    .await;

    let first = invoke(&app, &user.access_token, &id, json!({"n": 1})).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(first["output"]["echo"], json!({"n": 1}));
    assert_eq!(first["output"]["fn"], "echo");
    assert_eq!(first["output"]["mem"], "128");
    assert_eq!(first["output"]["greeting"], "hi");
    assert_eq!(first["output"]["remaining_ok"], true);
    assert_eq!(first["cold_start"], true);
    assert!(first["init_duration_ms"].as_i64().is_some());
    assert!(first["memory_peak_mb"].as_i64().unwrap() > 0, "{first}");

    let second = invoke(&app, &user.access_token, &id, json!({"n": 2})).await;
    assert_eq!(second["status"], "succeeded");
    assert_eq!(second["cold_start"], false);
    assert_eq!(
        second["instance_id"], first["instance_id"],
        "the warm instance is reused"
    );
    assert_eq!(second["output"]["pid"], first["output"]["pid"]);
    assert_eq!(second["init_duration_ms"], serde_json::Value::Null);

    let text = logs(&app, &user.access_token, first["id"].as_str().unwrap()).await;
    assert!(text.contains("START RequestId: "), "{text}");
    assert!(text.contains(" stdout init\n"), "{text}");
    assert!(text.contains("got {'n': 1}"), "{text}");
    assert!(text.contains("END RequestId: "), "{text}");
    assert!(
        text.contains("REPORT RequestId: ") && text.contains("Init Duration: "),
        "{text}"
    );
    let warm_logs = logs(&app, &user.access_token, second["id"].as_str().unwrap()).await;
    assert!(
        warm_logs.contains("got {'n': 2}") && !warm_logs.contains("Init Duration"),
        "{warm_logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_gets_new_instances() {
    let Some(app) = engine_app("a_new_version_gets_new_instances", |_| {}).await else {
        return;
    };
    let user = app.register().await;
    let v1 = "def handler(e, c):\n    return 'v1'\n";
    let id = deploy_python(&app, &user.access_token, "versioned", v1, json!({})).await;
    let a = invoke(&app, &user.access_token, &id, json!({})).await;
    assert_eq!(a["output"], "v1");
    app.put(
        &format!("/api/functions/{id}"),
        &user.access_token,
        json!({"code": {"source": "def handler(e, c):\n    return 'v2'\n"}}),
    )
    .await
    .expect(200);
    let b = invoke(&app, &user.access_token, &id, json!({})).await;
    assert_eq!(b["output"], "v2");
    assert_eq!(b["function_version"], 2);
    assert_eq!(b["cold_start"], true);
    assert_ne!(a["instance_id"], b["instance_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_async_callback_and_esm_handlers() {
    let Some(app) = engine_app("node_async_callback_and_esm_handlers", |_| {}).await else {
        return;
    };
    let Some(node) = app.runtime("nodejs").await else {
        panic!("no node runtime detected")
    };
    let user = app.register().await;
    let cases = [
        (
            "node-async",
            "index.handler",
            "index.js",
            "exports.handler = async (event, context) => { console.log('hello from node'); return { sum: event.a + event.b, fn: context.functionName }; };",
        ),
        (
            "node-callback",
            "index.handler",
            "index.js",
            "exports.handler = (event, context, callback) => { callback(null, { sum: event.a + event.b, fn: context.functionName }); };",
        ),
        (
            "node-esm",
            "index.handler",
            "index.mjs",
            "export const handler = async (event, context) => ({ sum: event.a + event.b, fn: context.functionName });",
        ),
        (
            "node-cjs",
            "index.handler",
            "index.cjs",
            "module.exports.handler = async (event, context) => ({ sum: event.a + event.b, fn: context.functionName });",
        ),
        (
            "node-nested",
            "src/api/app.handler",
            "src/api/app.js",
            "exports.handler = async (event, context) => ({ sum: event.a + event.b, fn: context.functionName });",
        ),
    ];
    for (name, handler, file, source) in cases {
        let id = deploy(
            &app,
            &user.access_token,
            name,
            &node,
            handler,
            &[(file, source)],
            json!({}),
        )
        .await;
        let run = invoke(&app, &user.access_token, &id, json!({"a": 2, "b": 3})).await;
        assert_eq!(run["status"], "succeeded", "{name}: {run}");
        assert_eq!(run["output"], json!({"sum": 5, "fn": name}), "{name}");
    }
    // A directory named like the module beside it is not the module (`app/` beside `app.js`).
    let id = deploy(
        &app,
        &user.access_token,
        "node-dir-beside",
        &node,
        "app.handler",
        &[
            (
                "app.js",
                "const util = require('./app/util.js');\nexports.handler = async () => util.x;\n",
            ),
            ("app/util.js", "exports.x = 'from app/util.js';\n"),
        ],
        json!({}),
    )
    .await;
    let run = invoke(&app, &user.access_token, &id, json!({})).await;
    assert_eq!(run["output"], "from app/util.js", "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provided_shell_bootstrap_speaks_the_runtime_api() {
    let Some(app) = engine_app("provided_shell_bootstrap_speaks_the_runtime_api", |_| {}).await
    else {
        return;
    };
    let user = app.register().await;
    let bootstrap = r#"#!/bin/sh
set -eu
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
while true; do
  HEADERS="$(mktemp)"
  EVENT=$(curl -sS -D "$HEADERS" "$API/invocation/next")
  ID=$(grep -i Lambda-Runtime-Aws-Request-Id "$HEADERS" | tr -d '[:space:]' | cut -d: -f2)
  echo "handling $ID"
  curl -sS -X POST "$API/invocation/$ID/response" -d "{\"shell\":true,\"event\":$EVENT}" > /dev/null
done
"#;
    let id = deploy(
        &app,
        &user.access_token,
        "shell",
        "provided",
        "function.handler",
        &[("bootstrap", bootstrap)],
        json!({}),
    )
    .await;
    let run = invoke(&app, &user.access_token, &id, json!({"x": [1, 2]})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        run["output"],
        json!({"shell": true, "event": {"x": [1, 2]}})
    );
    assert!(
        logs(&app, &user.access_token, run["id"].as_str().unwrap())
            .await
            .contains("handling ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_instances_are_prewarmed_and_survive_keep_alive() {
    let Some(app) = engine_app(
        "min_instances_are_prewarmed_and_survive_keep_alive",
        |raw| {
            raw.engine.keep_alive_s = 1;
        },
    )
    .await
    else {
        return;
    };
    let user = app.register().await;
    let source = "import os\ndef handler(e, c):\n    return os.getpid()\n";
    let id = deploy_python(
        &app,
        &user.access_token,
        "warm",
        source,
        json!({"min_instances": 1}),
    )
    .await;
    // Pre-warming runs in the background after the deploy answers; give it time to finish.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let first = invoke(&app, &user.access_token, &id, json!({})).await;
    assert_eq!(
        first["cold_start"], false,
        "the first call finds a pre-warmed instance: {first}"
    );
    // Well past the 1 s keep-alive, the kept-warm instance is still there.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let later = invoke(&app, &user.access_token, &id, json!({})).await;
    assert_eq!(later["cold_start"], false, "{later}");
    assert_eq!(
        later["output"], first["output"],
        "the same process served both"
    );
    // Without min_instances, an idle instance is gone after the keep-alive.
    app.put(
        &format!("/api/functions/{id}"),
        &user.access_token,
        json!({"min_instances": 0}),
    )
    .await
    .expect(200);
    let cold = invoke(&app, &user.access_token, &id, json!({})).await;
    assert_eq!(cold["cold_start"], true, "a new version starts cold");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let again = invoke(&app, &user.access_token, &id, json!({})).await;
    assert_eq!(
        again["cold_start"], true,
        "reaped after the keep-alive: {again}"
    );
}
