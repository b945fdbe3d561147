//! The execution engine suite: real functions in Python, Node.js and `provided` runtimes, run in the
//! namespace sandbox by a real server over HTTP. Needs root and bubblewrap; where either is missing,
//! each test prints why it did not run (scripts/test.sh says so in its summary too).

#[path = "../support/mod.rs"]
#[macro_use]
#[allow(dead_code, unused_macros)]
mod helpers;

mod asynchronous;
mod disk;
mod durability;
mod emulated;
mod errors;
mod firecracker;
mod hardening;
mod isolation;
mod layers;
mod parity;
mod ric;
mod runs;
mod walkthrough;

use helpers::{Backend, TestApp};
use serde_json::{Value, json};

/// Why the sandbox cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        return Some("the namespace sandbox needs root".into());
    }
    if !std::path::Path::new("/usr/bin/bwrap").exists() {
        return Some("bubblewrap is not installed (apt-get install bubblewrap)".into());
    }
    None
}

pub use voltrun_test_support::skip;

/// Starts a server with the namespace engine, or returns `None` after printing why it cannot.
pub async fn engine_app(
    test: &str,
    customise: impl FnOnce(&mut voltrun::config::SettingsArgs),
) -> Option<TestApp> {
    engine_app_on(Backend::Sqlite, test, customise).await
}

/// [`engine_app`] on the given database.
pub async fn engine_app_on(
    backend: Backend,
    test: &str,
    customise: impl FnOnce(&mut voltrun::config::SettingsArgs),
) -> Option<TestApp> {
    if let Some(why) = unavailable() {
        skip(test, &why);
        return None;
    }
    Some(
        TestApp::spawn_with(backend, |raw| {
            raw.engine.backend = voltrun::config::EngineBackend::Namespace;
            raw.engine.keep_alive_s = 60;
            customise(raw);
        })
        .await,
    )
}

/// Deploys a function and returns its id.
pub async fn deploy(
    app: &TestApp,
    token: &str,
    name: &str,
    runtime: &str,
    handler: &str,
    files: &[(&str, &str)],
    extra: Value,
) -> String {
    let code = if files.len() == 1 && files[0].0 != "bootstrap"
        || files.len() == 1 && runtime == "provided"
    {
        json!({"source": files[0].1, "filename": files[0].0})
    } else {
        let entries: Vec<(&str, &[u8], u32)> = files
            .iter()
            .map(|(p, c)| {
                (
                    *p,
                    c.as_bytes(),
                    if *p == "bootstrap" {
                        0o100755
                    } else {
                        0o100644
                    },
                )
            })
            .collect();
        json!({"zip_base64": helpers::b64(&helpers::zip_of(&entries))})
    };
    let mut body = json!({"name": name, "runtime": runtime, "handler": handler, "code": code});
    for (k, v) in extra.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    let reply = app.post("/api/functions", token, body).await.expect(201);
    reply.body["id"].as_str().unwrap().to_string()
}

/// Deploys one Python file, `main.py`, with the handler `main.handler`, on this server's Python.
pub async fn deploy_python(
    app: &TestApp,
    token: &str,
    name: &str,
    source: &str,
    extra: Value,
) -> String {
    let python = app.runtime("python").await.unwrap();
    deploy(
        app,
        token,
        name,
        &python,
        "main.handler",
        &[("main.py", source)],
        extra,
    )
    .await
}

pub async fn invoke(app: &TestApp, token: &str, id: &str, event: Value) -> Value {
    app.post(&format!("/api/functions/{id}/execute"), token, event)
        .await
        .expect(200)
        .body
}

/// Starts a synchronous invocation in the background; its task ends with the HTTP status.
pub fn execute_in_background(
    app: &TestApp,
    token: &str,
    id: &str,
    event: Value,
) -> tokio::task::JoinHandle<u16> {
    let request = app
        .client
        .post(format!("{}/api/functions/{id}/execute", app.base))
        .bearer_auth(token)
        .json(&event);
    tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
}

pub async fn logs(app: &TestApp, token: &str, execution_id: &str) -> String {
    app.get(
        &format!("/api/executions/{execution_id}/logs?format=text"),
        token,
    )
    .await
    .expect(200)
    .text
}

/// Where this server unpacks code with this sha256: uploaded as an archive (`None`), or as a single
/// source file of this name, whose directory name also carries a hash of the file name.
pub fn code_entry(app: &TestApp, sha256: &str, source_name: Option<&str>) -> std::path::PathBuf {
    use sha2::Digest as _;
    let entry = match source_name {
        None => sha256.to_string(),
        Some(name) => format!(
            "{sha256}-{}",
            &hex::encode(sha2::Sha256::digest(name.as_bytes()))[..16]
        ),
    };
    app.data_dir().join("engine").join("code").join(entry)
}
