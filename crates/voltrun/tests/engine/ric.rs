//! AWS's official runtime interface clients, unmodified, as `provided` functions: `awslambdaric`
//! (PyPI) and `aws-lambda-ric` (npm), started from the function's `bootstrap` against the platform's
//! Runtime API. The clients come from `scripts/install-rics.sh` (a cache under `target/rics`, or
//! `VOLTRUN_RIC_DIR`); without them these tests fail rather than pass unchecked.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::helpers::{self, TestApp};
use crate::{engine_app, invoke, logs};

pub(crate) const PY_RIC_VERSION: &str = "4.2.2";
const NODE_RIC_VERSION: &str = "4.0.2";

/// Where `scripts/install-rics.sh` puts the clients (a relative `VOLTRUN_RIC_DIR` is taken from the
/// repository root, as the script does).
pub(crate) fn ric_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    match std::env::var_os("VOLTRUN_RIC_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target/rics"),
    }
}

pub(crate) fn not_installed(what: &str, dir: &Path) -> ! {
    panic!(
        "{what} is not installed in {}: run scripts/install-rics.sh (it installs the official runtime \
         interface clients from PyPI and npm into target/rics, or VOLTRUN_RIC_DIR)",
        dir.display()
    )
}

/// Every file and symlink under `dir`, as `(path in the archive under prefix, contents, unix mode)`;
/// a symlink's contents are its target.
pub(crate) fn tree(dir: &Path, prefix: &str, out: &mut Vec<(String, Vec<u8>, u32)>) {
    use std::os::unix::fs::MetadataExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = format!("{prefix}{}", entry.file_name().to_str().unwrap());
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).unwrap();
            out.push((name, target.to_str().unwrap().as_bytes().to_vec(), 0o120777));
        } else if meta.is_dir() {
            if entry.file_name() == "__pycache__" {
                continue;
            }
            tree(&path, &format!("{name}/"), out);
        } else {
            out.push((name, std::fs::read(&path).unwrap(), meta.mode() & 0o170777));
        }
    }
}

/// Zips the bundle (keeping unix modes and symlinks) and deploys it as a `provided` function.
pub(crate) async fn deploy_bundle(
    app: &TestApp,
    token: &str,
    name: &str,
    handler: &str,
    files: &[(String, Vec<u8>, u32)],
) -> String {
    let entries: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(p, c, m)| (p.as_str(), c.as_slice(), *m))
        .collect();
    let zip = helpers::zip_of(&entries);
    let unzipped: usize = files.iter().map(|(_, c, _)| c.len()).sum();
    assert!(
        zip.len() < 50 << 20 && unzipped < 250 << 20,
        "the {name} bundle ({} bytes zipped, {unzipped} unzipped) exceeds the code limits",
        zip.len()
    );
    let reply = app
        .post(
            "/api/functions",
            token,
            json!({
                "name": name,
                "runtime": "provided",
                "handler": handler,
                "memory_mb": 256,
                "code": {"zip_base64": helpers::b64(&zip)},
            }),
        )
        .await
        .expect(201);
    reply.body["id"].as_str().unwrap().to_string()
}

/// Invokes twice (cold, then warm on the same process), then a failing event; checks what the
/// client reported each time; `expected_error` is the exception's type name.
async fn exercise(app: &TestApp, token: &str, id: &str, name: &str, expected_error: &str) {
    let first = invoke(app, token, id, json!({"name": "ada"})).await;
    if first["status"] != "succeeded" {
        let text = logs(app, token, first["id"].as_str().unwrap()).await;
        panic!("{name}: the first call failed: {first}\nits logs:\n{text}");
    }
    assert_eq!(first["cold_start"], true, "{first}");
    let out = &first["output"];
    assert_eq!(out["hello"], "ADA", "{first}");
    assert_eq!(out["fn"], name, "{first}");
    assert_eq!(
        out["request_id"], first["id"],
        "the request id header: {first}"
    );
    assert_eq!(
        out["arn"],
        format!("arn:voltrun:function:{name}:1"),
        "the function ARN header: {first}"
    );
    assert_eq!(out["remaining_ok"], true, "the deadline header: {first}");
    assert_eq!(out["log_group"], format!("/voltrun/{name}"), "{first}");

    let second = invoke(app, token, id, json!({"name": "grace"})).await;
    assert_eq!(second["status"], "succeeded", "{name}: {second}");
    assert_eq!(second["output"]["hello"], "GRACE", "{second}");
    assert_eq!(second["cold_start"], false, "{second}");
    assert_eq!(second["instance_id"], first["instance_id"]);
    assert_eq!(
        second["output"]["pid"], out["pid"],
        "the same client process serves the warm call"
    );
    let text = logs(app, token, second["id"].as_str().unwrap()).await;
    assert!(text.contains("handling grace"), "{name} logs: {text}");

    let failed = invoke(app, token, id, json!({"fail": "no such name"})).await;
    assert_eq!(failed["status"], "failed", "{name}: {failed}");
    assert_eq!(failed["error"]["type"], "Runtime.Unhandled", "{failed}");
    assert_eq!(
        failed["error"]["message"],
        format!("{expected_error}: boom: no such name"),
        "{name}: the exception's type and message: {failed}"
    );
    assert_eq!(
        failed["cold_start"], false,
        "an exception keeps the instance: {failed}"
    );

    let third = invoke(app, token, id, json!({"name": "linus"})).await;
    assert_eq!(third["status"], "succeeded", "{name}: {third}");
    assert_eq!(third["output"]["hello"], "LINUS");
    assert_eq!(third["output"]["pid"], out["pid"]);
}

/// Deploys the same bundle with a handler whose module does not exist: the client reports that to
/// `init/error` and exits, and the execution fails with the client's error type.
async fn init_failure(app: &TestApp, token: &str, name: &str, files: &[(String, Vec<u8>, u32)]) {
    let id = deploy_bundle(app, token, name, "missing.handler", files).await;
    let run = invoke(app, token, &id, json!({})).await;
    assert_eq!(run["status"], "failed", "{name}: {run}");
    assert_eq!(run["error"]["type"], "Runtime.ImportModuleError", "{run}");
    assert!(
        run["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("missing")),
        "{run}"
    );
}

const PY_HANDLER: &str = r#"import os

def handler(event, context):
    if "fail" in event:
        raise ValueError("boom: " + event["fail"])
    print("handling", event["name"], flush=True)
    return {
        "hello": event["name"].upper(),
        "fn": context.function_name,
        "request_id": context.aws_request_id,
        "arn": context.invoked_function_arn,
        "log_group": context.log_group_name,
        "remaining_ok": context.get_remaining_time_in_millis() > 0,
        "pid": os.getpid(),
    }
"#;

/// Starts the client as its README says (`python -m awslambdaric <handler>`), on the sandbox's
/// interpreter, with the vendored packages on the path.
pub(crate) const PY_BOOTSTRAP: &str = r#"#!/bin/sh
export PYTHONPATH=/var/task/vendor
exec /usr/bin/python3 -m awslambdaric "$_HANDLER"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awslambdaric_runs_as_a_provided_runtime() {
    let Some(app) = engine_app("awslambdaric_runs_as_a_provided_runtime", |_| {}).await else {
        return;
    };
    let files = with_python_ric(vec![("main.py".into(), PY_HANDLER.into(), 0o100644)]);

    let user = app.register().await;
    let id = deploy_bundle(&app, &user.access_token, "py-ric", "main.handler", &files).await;
    exercise(&app, &user.access_token, &id, "py-ric", "ValueError").await;
    init_failure(&app, &user.access_token, "py-ric-broken", &files).await;
}

/// The npm prefix holding aws-lambda-ric at the pinned version with its built native addon; fails
/// the test when it is not there.
pub(crate) fn node_ric() -> PathBuf {
    let installed = ric_dir().join("node");
    let package = installed.join("node_modules/aws-lambda-ric");
    let version = std::fs::read(package.join("package.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string));
    if version.as_deref() != Some(NODE_RIC_VERSION) || !package.join("rapid-client.node").is_file()
    {
        not_installed(
            &format!("aws-lambda-ric {NODE_RIC_VERSION} (with its native addon)"),
            &installed,
        );
    }
    installed
}

const NODE_HANDLER: &str = r#"export const handler = async (event, context) => {
  if (event.fail) {
    throw new TypeError(`boom: ${event.fail}`);
  }
  console.log(`handling ${event.name}`);
  return {
    hello: event.name.toUpperCase(),
    fn: context.functionName,
    request_id: context.awsRequestId,
    arn: context.invokedFunctionArn,
    log_group: context.logGroupName,
    remaining_ok: context.getRemainingTimeInMillis() > 0,
    pid: process.pid,
  };
};
"#;

/// Starts the client through the command its package installs (`node_modules/.bin/aws-lambda-ric`,
/// a symlink to its `index.mjs`, which runs under `/usr/bin/env node`) with the handler argument.
pub(crate) const NODE_BOOTSTRAP: &str = r#"#!/bin/sh
exec /var/task/node_modules/.bin/aws-lambda-ric "$_HANDLER"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_lambda_ric_runs_as_a_provided_runtime() {
    let Some(app) = engine_app("aws_lambda_ric_runs_as_a_provided_runtime", |_| {}).await else {
        return;
    };
    let installed = node_ric();
    // The whole tree npm installed (the client's package, its dependencies and `.bin` links).
    let mut files = Vec::new();
    tree(&installed.join("node_modules"), "node_modules/", &mut files);
    files.push(("index.mjs".into(), NODE_HANDLER.into(), 0o100644));
    files.push(("bootstrap".into(), NODE_BOOTSTRAP.into(), 0o100755));

    let user = app.register().await;
    let id = deploy_bundle(
        &app,
        &user.access_token,
        "node-ric",
        "index.handler",
        &files,
    )
    .await;
    exercise(&app, &user.access_token, &id, "node-ric", "TypeError").await;
}

/// A response-streaming handler (`awslambda.streamifyResponse`): the client posts the response as a
/// chunked stream and reports a failure in its trailers, which must fail the execution.
/// `code` with aws-lambda-ric beside it and a `bootstrap` that starts it: a `provided` bundle. The
/// package alone is enough at run time (its index.mjs bundles its JavaScript dependencies).
/// `code` with awslambdaric (vendored) and the bootstrap that starts it: the bundle of a `provided`
/// function running the code on AWS's Python client.
pub(crate) fn with_python_ric(
    mut code: Vec<(String, Vec<u8>, u32)>,
) -> Vec<(String, Vec<u8>, u32)> {
    let installed = ric_dir().join("python");
    if !installed
        .join(format!("awslambdaric-{PY_RIC_VERSION}.dist-info"))
        .is_dir()
    {
        not_installed(&format!("awslambdaric {PY_RIC_VERSION}"), &installed);
    }
    tree(&installed, "vendor/", &mut code);
    code.push(("bootstrap".into(), PY_BOOTSTRAP.into(), 0o100755));
    code
}

pub(crate) fn with_node_ric(mut code: Vec<(String, Vec<u8>, u32)>) -> Vec<(String, Vec<u8>, u32)> {
    let package = node_ric().join("node_modules/aws-lambda-ric");
    tree(&package, "node_modules/aws-lambda-ric/", &mut code);
    code.push(("bootstrap".into(), NODE_BOOTSTRAP.into(), 0o100755));
    code.push((
        "node_modules/.bin/aws-lambda-ric".into(),
        b"../aws-lambda-ric/index.mjs".to_vec(),
        0o120777,
    ));
    code
}

pub(crate) const NODE_STREAMING_HANDLER: &str = r#"export const handler = awslambda.streamifyResponse(async (event, responseStream) => {
  if (event.fail === "early") {
    throw new TypeError("boom before any output");
  }
  responseStream.write('{"streamed":');
  responseStream.write(`"${event.name}"}`);
  if (event.fail === "late") {
    throw new RangeError("boom after some output");
  }
  responseStream.end();
});
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_lambda_ric_streams_responses_and_their_errors() {
    let Some(app) = engine_app("aws_lambda_ric_streams_responses_and_their_errors", |_| {}).await
    else {
        return;
    };
    let files = with_node_ric(vec![(
        "index.mjs".into(),
        NODE_STREAMING_HANDLER.into(),
        0o100644,
    )]);
    let user = app.register().await;
    let t = &user.access_token;
    let id = deploy_bundle(&app, t, "node-ric-stream", "index.handler", &files).await;

    let run = invoke(&app, t, &id, json!({"name": "ada"})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], json!({"streamed": "ada"}), "{run}");

    for (fail, error, message) in [
        ("early", "TypeError", "boom before any output"),
        ("late", "RangeError", "boom after some output"),
    ] {
        let failed = invoke(&app, t, &id, json!({"name": "x", "fail": fail})).await;
        assert_eq!(failed["status"], "failed", "{fail}: {failed}");
        assert_eq!(failed["error"]["type"], "Runtime.Unhandled", "{failed}");
        assert_eq!(
            failed["error"]["message"],
            format!("{error}: {message}"),
            "{failed}"
        );
        assert_eq!(failed["output"], Value::Null, "{failed}");
    }
    let again = invoke(&app, t, &id, json!({"name": "grace"})).await;
    assert_eq!(again["output"], json!({"streamed": "grace"}), "{again}");
    assert_eq!(again["cold_start"], false, "{again}");
    init_failure(&app, t, "node-ric-broken", &files).await;
}
