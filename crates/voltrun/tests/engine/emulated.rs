//! The guest path booted for real: the Firecracker backend's guest kernel, root images, code drives
//! and agent (as PID 1 of a real kernel), booted by QEMU's `microvm` machine under emulation
//! (`ENGINE_BACKEND=emulated`), with the vsock device served by vhost-device-vsock over the same
//! hybrid-vsock handshake Firecracker uses, driven by a real server over HTTP.
//!
//! Runs wherever `qemu-system-x86_64` and `vhost-device-vsock` are found and the images are built
//! (`scripts/build-emulated-guest.sh`, which the README's test command runs): elsewhere each test
//! prints why it did not run. Emulation is slow: every guest boots in seconds, not milliseconds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use voltrun_vm::emulated::{DEFAULT_INSTALL_DIR, EmulatorConfig};

use crate::helpers::{Backend, TestApp};
use crate::{deploy, deploy_python, invoke, logs, skip};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where `scripts/build-emulated-guest.sh` builds the images (`VOLTRUN_EMULATED_IMAGES` overrides).
fn images_dir() -> PathBuf {
    std::env::var_os("VOLTRUN_EMULATED_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/emulated-guest/images"))
}

/// The programs and images, or why this host cannot boot emulated guests.
fn emulator() -> Result<(EmulatorConfig, PathBuf), String> {
    let config = EmulatorConfig::locate(
        None,
        None,
        &repo_root().join(DEFAULT_INSTALL_DIR),
        PathBuf::new(),
    )
    .map_err(|e| e.to_string())?;
    let images = images_dir();
    let manifest = voltrun_vm::images::Manifest::load(&images).map_err(|e| {
        format!("{e} (scripts/build-emulated-guest.sh builds the kernel and images)")
    })?;
    if manifest.bzimage.is_none() {
        return Err(format!(
            "the images in {} have no bzImage (scripts/build-emulated-guest.sh)",
            images.display()
        ));
    }
    Ok((config, images))
}

/// The tests here run one at a time: each emulated guest keeps a core busy while it boots, and two
/// tests' guests at once on a small host would measure the host, not the guest.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A server running functions in emulated guests (and this test's turn), or `None` after saying why
/// not.
async fn emulated_app(
    test: &str,
    customise: impl FnOnce(&mut voltrun::config::SettingsArgs),
) -> Option<(TestApp, tokio::sync::MutexGuard<'static, ()>)> {
    let (config, images) = match emulator() {
        Ok(found) => found,
        Err(why) => {
            skip(test, &why);
            return None;
        }
    };
    let turn = ONE_AT_A_TIME.lock().await;
    let qemu = qemu_with_a_wrong_clock(&config.qemu);
    Some((
        TestApp::spawn_with(Backend::Sqlite, |raw| {
            raw.engine.backend = voltrun::config::EngineBackend::Emulated;
            raw.vm.qemu_bin = Some(qemu.clone());
            raw.vm.vhost_vsock_bin = Some(config.vhost_vsock.clone());
            raw.vm.images_dir = Some(images.clone());
            raw.vm.boot_timeout_ms = 60000;
            raw.engine.keep_alive_s = 120;
            customise(raw);
        })
        .await,
        turn,
    ))
}

/// A wrapper around QEMU that starts every guest's hardware clock in 2001: a guest's log lines then
/// carry the host's time only because the host sets the guest's clock (`Clock`), which the tests
/// check; with the real time in the emulated clock, they would pass most of the time without it.
fn qemu_with_a_wrong_clock(qemu: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let wrapper = std::env::temp_dir().join(format!(
        "qemu-2001-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} \"$@\" -rtc base=2001-01-01T00:00:00\n",
            qemu.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

/// The guests' directories, and the processes running in one (an emulated guest's two).
fn guests_of(app: &TestApp) -> (Vec<String>, Vec<String>) {
    let run_dir = app.data_dir().join("vm").join("emulated");
    let dirs = std::fs::read_dir(&run_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("emu-"))
                .collect()
        })
        .unwrap_or_default();
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cwd.starts_with(&run_dir).then_some(cmdline)
        })
        .collect();
    (dirs, processes)
}

fn error_of(run: &Value) -> (String, String) {
    (
        run["error"]["type"].as_str().unwrap_or_default().into(),
        run["error"]["message"].as_str().unwrap_or_default().into(),
    )
}

const PYTHON: &str = r#"
import os, sys, time
print("module loaded in", os.uname().release)

def handler(event, context):
    action = event.get("action")
    if action == "fail":
        raise ValueError("bad input")
    if action == "big":
        return "x" * (7 * 1024 * 1024)
    if action == "hold":
        block = bytearray(event["mb"] * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        return len(block) // (1024 * 1024)
    if action == "hog":
        # In 1 MiB blocks, as programs grow: one 300 MiB request would be refused by the guest
        # kernel's overcommit check (a MemoryError) before any OOM killer ran.
        blocks = []
        for _ in range(event["mb"]):
            blocks.append(bytearray(1024 * 1024))
        return len(blocks)
    if action == "sleep":
        time.sleep(event["s"])
    if action == "exit":
        os._exit(3)
    if action == "orphans":
        # Children that fork grandchildren and exit: the grandchildren are orphans, reparented to
        # PID 1 (the agent), which must reap them once they exit.
        for _ in range(5):
            child = os.fork()
            if child == 0:
                if os.fork() == 0:
                    time.sleep(0.2)
                    os._exit(0)
                os._exit(0)
            os.waitpid(child, 0)
        time.sleep(1)
        zombies = 0
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open("/proc/%s/stat" % pid) as f:
                        zombies += f.read().rsplit(")", 1)[1].split()[0] == "Z"
                except OSError:
                    pass
        return {"zombies": zombies, "pid1": open("/proc/1/cmdline").read().split("\0")[0]}
    print("in a guest", event.get("n"))
    print("to stderr", file=sys.stderr)
    return {"n": event.get("n", 0) + 1, "kernel": os.uname().release, "pid": os.getpid()}
"#;

const NODE: &str = r#"
const os = require('os');
exports.handler = async (event) => {
  if (event.action === 'fail') { const e = new TypeError('not a number'); throw e; }
  console.log('in a guest', event.n);
  return { n: (event.n || 0) + 1, kernel: os.release() };
};
"#;

/// Python and Node.js functions cold then warm in emulated guests, their errors, logs with the guest's
/// timestamps, memory peaks and the response size limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_guests_run_python_and_node_functions_cold_then_warm() {
    let test = "emulated_guests_run_python_and_node_functions_cold_then_warm";
    let Some((app, _turn)) = emulated_app(test, |_| {}).await else {
        return;
    };
    let health = app.operator_get("/health").await.expect(200).body;
    assert_eq!(health["engine"]["backend"], "emulated", "{health}");
    let user = app.register().await;
    let t = &user.access_token;
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();

    let id = deploy_python(&app, t, "py", PYTHON, json!({"memory_mb": 256})).await;
    let cold = invoke(&app, t, &id, json!({"n": 1})).await;
    assert_eq!(cold["status"], "succeeded", "{cold}");
    assert_eq!(cold["output"]["n"], 2);
    assert_eq!(cold["cold_start"], true);
    // The function ran under the guest's kernel, not the host's.
    let guest_kernel = cold["output"]["kernel"].as_str().unwrap().to_string();
    assert_ne!(guest_kernel, host_kernel.trim(), "{cold}");
    let warm = invoke(&app, t, &id, json!({"n": 2})).await;
    assert_eq!(warm["output"]["n"], 3, "{warm}");
    assert_eq!(warm["cold_start"], false, "the warm guest was not reused");
    assert_eq!(warm["output"]["pid"], cold["output"]["pid"]);

    // Log lines, stamped in the guest, fall within the invocation.
    let lines = app
        .get(
            &format!("/api/executions/{}/logs", warm["id"].as_str().unwrap()),
            t,
        )
        .await
        .expect(200)
        .body;
    let text = logs(&app, t, warm["id"].as_str().unwrap()).await;
    assert!(text.contains("in a guest 2"), "{text}");
    assert!(text.contains("to stderr"), "{text}");
    let cold_text = logs(&app, t, cold["id"].as_str().unwrap()).await;
    assert!(cold_text.contains("module loaded in"), "{cold_text}");
    let stamp = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let (started, finished) = (stamp(&warm["started_at"]), stamp(&warm["finished_at"]));
    let guest_line = lines["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l["line"]
                .as_str()
                .unwrap_or_default()
                .contains("in a guest")
        })
        .unwrap_or_else(|| panic!("{lines}"));
    let at = stamp(&guest_line["timestamp"]);
    assert!(
        started - 250 <= at && at <= finished + 250,
        "a guest line stamped {at} outside {started}..{finished}"
    );

    // Errors keep their type; the instance stays warm after a handled error.
    let failed = invoke(&app, t, &id, json!({"action": "fail"})).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let (kind, message) = error_of(&failed);
    assert_eq!(kind, "Runtime.Unhandled", "{failed}");
    assert!(message.contains("ValueError: bad input"), "{failed}");
    assert!(
        logs(&app, t, failed["id"].as_str().unwrap())
            .await
            .contains("Traceback"),
        "the traceback is logged"
    );
    assert_eq!(failed["cold_start"], false, "{failed}");

    // The guest's memory peak, measured inside it.
    let held = invoke(&app, t, &id, json!({"action": "hold", "mb": 64})).await;
    assert_eq!(held["output"], 64, "{held}");
    let peak = held["memory_peak_mb"].as_i64().unwrap_or_default();
    assert!((64..256).contains(&peak), "memory_peak_mb {peak}: {held}");

    // Lambda's 6 MiB response limit, enforced on the guest's reply.
    let big = invoke(&app, t, &id, json!({"action": "big"})).await;
    assert_eq!(big["status"], "failed", "{big}");
    assert_eq!(error_of(&big).0, "Function.ResponseSizeTooLarge", "{big}");

    let node = app.runtime("nodejs").await.unwrap();
    let id = deploy(
        &app,
        t,
        "js",
        &node,
        "index.handler",
        &[("index.js", NODE)],
        json!({}),
    )
    .await;
    let cold = invoke(&app, t, &id, json!({"n": 10})).await;
    assert_eq!(cold["status"], "succeeded", "{cold}");
    assert_eq!(cold["output"]["n"], 11);
    assert_eq!(cold["output"]["kernel"], guest_kernel.as_str());
    let warm = invoke(&app, t, &id, json!({"n": 11})).await;
    assert_eq!(warm["cold_start"], false, "{warm}");
    assert!(
        logs(&app, t, warm["id"].as_str().unwrap())
            .await
            .contains("in a guest 11")
    );
    let failed = invoke(&app, t, &id, json!({"action": "fail"})).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let (kind, message) = error_of(&failed);
    assert_eq!(kind, "Runtime.Unhandled", "{failed}");
    assert!(message.contains("TypeError: not a number"), "{failed}");

    // Layers reach the guest as a drive of their own, mounted at /opt.
    crate::layers::layers_reach_python_and_node(&app, t, false).await;
}

/// A timeout, a runtime's exit and the guest's own OOM killer each end the guest with Lambda's error;
/// orphans are reaped by the agent as PID 1; nothing of a guest outlives the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_guests_end_on_timeouts_exits_and_out_of_memory() {
    let test = "emulated_guests_end_on_timeouts_exits_and_out_of_memory";
    let Some((app, _turn)) = emulated_app(test, |_| {}).await else {
        return;
    };
    let user = app.register().await;
    let t = &user.access_token;
    let id = deploy_python(
        &app,
        t,
        "ends",
        PYTHON,
        json!({"memory_mb": 128, "timeout_s": 3}),
    )
    .await;

    let reaped = invoke(&app, t, &id, json!({"action": "orphans"})).await;
    assert_eq!(reaped["status"], "succeeded", "{reaped}");
    assert_eq!(reaped["output"]["pid1"], "/sbin/init", "{reaped}");
    assert_eq!(
        reaped["output"]["zombies"], 0,
        "orphans were not reaped: {reaped}"
    );

    let slept = invoke(&app, t, &id, json!({"action": "sleep", "s": 30})).await;
    assert_eq!(slept["status"], "timed_out", "{slept}");
    assert_eq!(error_of(&slept).0, "Sandbox.Timedout", "{slept}");
    let after = invoke(&app, t, &id, json!({"n": 1})).await;
    assert_eq!(after["status"], "succeeded", "{after}");
    assert_eq!(after["cold_start"], true, "a timed-out guest was reused");

    let exited = invoke(&app, t, &id, json!({"action": "exit"})).await;
    assert_eq!(exited["status"], "failed", "{exited}");
    let (kind, message) = error_of(&exited);
    assert_eq!(kind, "Runtime.ExitError", "{exited}");
    assert!(message.contains("exit status: 3"), "{exited}");

    // 300 MiB in a 128 MB guest: the guest kernel's OOM killer ends the runtime. Filling 128 MB a
    // MiB at a time under emulation can take longer than the 3 s the timeouts above needed (it
    // timed out once in a loaded CI run), so the function gets 30 s for it.
    app.put(&format!("/api/functions/{id}"), t, json!({"timeout_s": 30}))
        .await
        .expect(200);
    let hog = invoke(&app, t, &id, json!({"action": "hog", "mb": 300})).await;
    assert_eq!(hog["status"], "failed", "{hog}");
    assert_eq!(error_of(&hog).0, "Runtime.OutOfMemory", "{hog}");
    let after = invoke(&app, t, &id, json!({"n": 2})).await;
    assert_eq!(after["status"], "succeeded", "{after}");
    assert_eq!(after["cold_start"], true, "{after}");

    let (dirs, processes) = guests_of(&app);
    assert_eq!(dirs.len(), 1, "one live guest: {dirs:?}");
    assert_eq!(
        processes.len(),
        2,
        "QEMU and its vsock backend: {processes:?}"
    );
    app.delete(&format!("/api/functions/{id}"), t)
        .await
        .expect(204);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (dirs, processes) = guests_of(&app);
        if dirs.is_empty() && processes.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a deleted function's guest outlived it: {dirs:?} {processes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A guest whose agent does not answer in time fails with the step named, and leaves no process or
/// file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulated_guest_that_does_not_answer_names_the_step_and_leaves_nothing() {
    let test = "an_emulated_guest_that_does_not_answer_names_the_step_and_leaves_nothing";
    let Some((app, _turn)) = emulated_app(test, |raw| {
        // Far too short for an emulated boot.
        raw.vm.boot_timeout_ms = 200;
    })
    .await
    else {
        return;
    };
    let user = app.register().await;
    let t = &user.access_token;
    let id = deploy_python(&app, t, "late", PYTHON, json!({})).await;
    let run = invoke(&app, t, &id, json!({})).await;
    assert_eq!(run["status"], "failed", "{run}");
    let (kind, message) = error_of(&run);
    assert_eq!(kind, "Platform.SandboxError", "{run}");
    assert!(
        message.contains("vm.agent_connect: the guest agent did not answer"),
        "{run}"
    );
    let (dirs, processes) = guests_of(&app);
    assert!(dirs.is_empty(), "{dirs:?}");
    assert!(processes.is_empty(), "{processes:?}");
}

/// A `provided` function whose bootstrap is a static executable (the provided root image holds no
/// interpreter), built here from `guest/bootstrap.c`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulated_guest_runs_a_provided_bootstrap() {
    let test = "an_emulated_guest_runs_a_provided_bootstrap";
    let dir = std::env::temp_dir().join(format!("provided-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("bootstrap");
    let built = std::process::Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&binary)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/engine/guest/bootstrap.c"))
        .output();
    let bootstrap = match built {
        Ok(out) if out.status.success() => std::fs::read(&binary).unwrap(),
        Ok(out) => {
            let _ = std::fs::remove_dir_all(&dir);
            return skip(
                test,
                &format!(
                    "gcc could not build a static bootstrap (libc6-dev): {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return skip(test, &format!("no gcc to build a static bootstrap: {e}"));
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let Some((app, _turn)) = emulated_app(test, |_| {}).await else {
        return;
    };
    let user = app.register().await;
    let t = &user.access_token;
    let zip = crate::helpers::zip_of(&[("bootstrap", &bootstrap, 0o100755)]);
    let created = app
        .post(
            "/api/functions",
            t,
            json!({"name": "static", "runtime": "provided", "handler": "echo.it",
                   "code": {"zip_base64": crate::helpers::b64(&zip)}}),
        )
        .await
        .expect(201);
    let id = created.body["id"].as_str().unwrap();
    let cold = invoke(&app, t, id, json!({"n": 1})).await;
    assert_eq!(cold["status"], "succeeded", "{cold}");
    assert_eq!(
        cold["output"],
        json!({"echo": {"n": 1}, "handler": "echo.it"})
    );
    let warm = invoke(&app, t, id, json!({"n": 2})).await;
    assert_eq!(warm["cold_start"], false, "{warm}");
    assert!(
        logs(&app, t, warm["id"].as_str().unwrap())
            .await
            .contains("provided runtime got {\"n\":2}")
    );
}
