//! Attacks on what runs around a function rather than inside it: the launcher's environment, the
//! seccomp filter (checked with calls that succeed on this host without it, so a refusal is the
//! filter's and not a missing capability's), and a private data directory.

use serde_json::{Value, json};

use crate::{deploy, deploy_python, engine_app, execute_in_background, invoke};

/// Host processes (in this process's PID namespace, so outside every sandbox) whose environment or
/// command line contains `needle`, and how many bubblewrap launchers there are.
fn host_processes_holding(needle: &str) -> (Vec<String>, usize) {
    let own_pid_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let mut holding = Vec::new();
    let mut launchers = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = entry.path();
        if std::fs::read_link(dir.join("ns/pid")).ok().as_ref() != Some(&own_pid_ns) {
            continue;
        }
        let exe = std::fs::read_link(dir.join("exe")).unwrap_or_default();
        if exe.file_name().is_some_and(|n| n == "bwrap") {
            launchers += 1;
        }
        for file in ["environ", "cmdline"] {
            let bytes = std::fs::read(dir.join(file)).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                holding.push(format!("{} ({}, {file})", name, exe.display()));
            }
        }
    }
    (holding, launchers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_launcher_never_sees_the_functions_environment() {
    let Some(app) = engine_app("the_launcher_never_sees_the_functions_environment", |_| {}).await
    else {
        return;
    };
    let python = app.runtime("python").await.unwrap();
    let user = app.register().await;
    let secret = format!("launcher-probe-{}", crate::helpers::unique());
    let id = deploy(
        &app,
        &user.access_token,
        "env-probe",
        &python,
        "main.handler",
        &[(
            "main.py",
            "import os\ndef handler(e, c):\n    return os.environ.get('PROBE_SECRET')\n",
        )],
        json!({"env": {"PROBE_SECRET": secret}}),
    )
    .await;
    let run = invoke(&app, &user.access_token, &id, json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        run["output"], secret,
        "the function still gets its variable"
    );
    // The instance stays warm: its launcher is alive now.
    let (holding, launchers) = host_processes_holding(&secret);
    assert!(launchers > 0, "no bubblewrap launcher found to inspect");
    assert!(
        holding.is_empty(),
        "host-side processes hold the function's variable: {holding:?}"
    );
}

/// Calls that an unprivileged process may make on this kernel, so that without the filter they
/// succeed (or fail with something other than EPERM); the probe runs on the host too, as the control.
const SECCOMP_PROBE: &str = r#"
import ctypes, json, os, sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def errno_of(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return ctypes.get_errno() if r == -1 else 0

def probe():
    params = ctypes.create_string_buffer(120)
    return {
        "personality": errno_of(135, 0xFFFFFFFF),
        "io_uring_setup": errno_of(425, 4, ctypes.addressof(params)),
        "x32_getpid": errno_of(39 | 0x40000000),
        "keyctl": errno_of(250, 0, -3, 0),
        "ptrace_traceme": errno_of(101, 0, 0, 0, 0),
        "unshare_user_and_net": errno_of(272, 0x10000000 | 0x40000000),
    }

def handler(event, context):
    return probe()

if __name__ == "__main__":
    print(json.dumps(probe()))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_refuses_calls_the_kernel_would_otherwise_allow() {
    let Some(app) = engine_app(
        "seccomp_refuses_calls_the_kernel_would_otherwise_allow",
        |_| {},
    )
    .await
    else {
        return;
    };
    if std::env::consts::ARCH != "x86_64" {
        crate::skip(
            "seccomp_refuses_calls_the_kernel_would_otherwise_allow",
            "the probe uses x86-64 system-call numbers",
        );
        return;
    }
    let control = std::process::Command::new("python3")
        .arg("-c")
        .arg(SECCOMP_PROBE)
        .output()
        .expect("python3 runs on the host");
    let control: Value = serde_json::from_slice(&control.stdout).expect("control probe output");
    let user = app.register().await;
    let id = deploy_python(
        &app,
        &user.access_token,
        "seccomp-probe",
        SECCOMP_PROBE,
        json!({}),
    )
    .await;
    let run = invoke(&app, &user.access_token, &id, json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    const EPERM: i64 = 1;
    for call in [
        "personality",
        "io_uring_setup",
        "x32_getpid",
        "keyctl",
        "ptrace_traceme",
        "unshare_user_and_net",
    ] {
        assert_eq!(
            run["output"][call], EPERM,
            "{call} must be refused by the filter: sandbox {} (host {})",
            run["output"], control
        );
    }
    // The control: these are refused by nothing else on this host.
    assert_eq!(control["personality"], 0, "host: {control}");
    assert_eq!(control["io_uring_setup"], 0, "host: {control}");
    assert_ne!(control["x32_getpid"], EPERM, "host: {control}");
    assert_eq!(control["ptrace_traceme"], 0, "host: {control}");
    assert_eq!(control["unshare_user_and_net"], 0, "host: {control}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_run_whatever_the_data_directorys_mode() {
    let Some(app) = engine_app("functions_run_whatever_the_data_directorys_mode", |_| {}).await
    else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    // What a careful operator (or systemd's StateDirectory=) leaves: nobody else may enter.
    std::fs::set_permissions(app.data_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let user = app.register().await;
    let id = deploy_python(
        &app,
        &user.access_token,
        "private",
        "def handler(e, c):\n    return 'ran'\n",
        json!({}),
    )
    .await;
    let run = invoke(&app, &user.access_token, &id, json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], "ran");
}

/// A function that attacks its own instance's Runtime API and log pipes, as a tenant could.
const SPAMMER: &str = r#"
import http.client, json, os, socket, sys, time

HOST, PORT = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")

def init_errors(n, size):
    body = json.dumps({"errorType": "Spam" * 1000, "errorMessage": "x" * size})
    conn, sent = http.client.HTTPConnection(HOST, int(PORT), timeout=5), 0
    for _ in range(n):
        try:
            conn.request("POST", "/2018-06-01/runtime/init/error", body)
            conn.getresponse().read()
            sent += 1
        except Exception:
            conn = http.client.HTTPConnection(HOST, int(PORT), timeout=5)
    return sent

def accepted_connections():
    # Server-side sockets on the Runtime API's port that the server accepted (a socket still in the
    # accept queue has no inode yet).
    count = 0
    for line in open("/proc/net/tcp").readlines()[1:]:
        f = line.split()
        if f[1].endswith(":%04X" % int(PORT)) and f[3] == "01" and f[9] != "0":
            count += 1
    return count

def connections(n):
    held = []
    for _ in range(n):
        try:
            held.append(socket.create_connection((HOST, int(PORT)), timeout=1))
        except OSError:
            break
    time.sleep(0.5)
    return {"opened": len(held), "accepted": accepted_connections()}

def handler(event, context):
    kind = event["kind"]
    if kind == "init_errors":
        return init_errors(event["n"], event["size"])
    if kind == "empty_lines":
        chunk = "\n" * 100_000
        for _ in range(event["n"] // 100_000):
            sys.stdout.write(chunk)
        sys.stdout.flush()
        return "written"
    if kind == "connections":
        return connections(event["n"])
"#;

fn resident_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_flooding_its_runtime_api_and_logs_cannot_exhaust_the_server() {
    let Some(app) = engine_app(
        "a_function_flooding_its_runtime_api_and_logs_cannot_exhaust_the_server",
        |raw| raw.engine.keep_alive_s = 1,
    )
    .await
    else {
        return;
    };
    let attacker = app.register().await;
    let id = deploy_python(
        &app,
        &attacker.access_token,
        "spammer",
        SPAMMER,
        json!({"timeout_s": 60, "memory_mb": 256}),
    )
    .await;
    let bystander = app.register().await;
    let echo = deploy_python(
        &app,
        &bystander.access_token,
        "bystander",
        "def handler(e, c):\n    return e\n",
        json!({}),
    )
    .await;
    invoke(&app, &bystander.access_token, &echo, json!({"warm": true})).await;
    let before = resident_mib();

    // 2,000 init errors of 60 KiB (under the error documents' size cap) after the instance is
    // running, when nobody reads them any more: 120 MB if they were kept.
    let sent = invoke(
        &app,
        &attacker.access_token,
        &id,
        json!({"kind": "init_errors", "n": 2000, "size": 60 * 1024}),
    )
    .await;
    assert_eq!(sent["status"], "succeeded", "{sent}");
    assert!(sent["output"].as_i64().unwrap() >= 1900, "{sent}");
    let answer = invoke(
        &app,
        &bystander.access_token,
        &echo,
        json!({"still": "here"}),
    )
    .await;
    assert_eq!(answer["output"], json!({"still": "here"}));

    // Two million empty lines: each costs its overhead, so at most 4 MiB / 32 B of them are kept.
    let flood = invoke(
        &app,
        &attacker.access_token,
        &id,
        json!({"kind": "empty_lines", "n": 2_000_000}),
    )
    .await;
    assert_eq!(flood["status"], "succeeded", "{flood}");
    assert_eq!(flood["logs_truncated"], true, "{flood}");
    let answer = invoke(
        &app,
        &bystander.access_token,
        &echo,
        json!({"still": "here"}),
    )
    .await;
    assert_eq!(answer["output"], json!({"still": "here"}));

    let grown = resident_mib().saturating_sub(before);
    assert!(
        grown < 100,
        "the server's resident memory grew by {grown} MiB under the flood"
    );

    // Hundreds of connections to its own Runtime API: the server accepts only a few.
    let conns = invoke(
        &app,
        &attacker.access_token,
        &id,
        json!({"kind": "connections", "n": 600}),
    )
    .await;
    assert_eq!(conns["status"], "succeeded", "{conns}");
    let opened = conns["output"]["opened"].as_u64().unwrap();
    let accepted = conns["output"]["accepted"].as_u64().unwrap();
    assert!(opened > 100, "the attack opened only {opened} connections");
    eprintln!(
        "flood: resident memory grew {grown} MiB; {accepted} of {opened} connections accepted"
    );
    // A literal, not the constant: the test must fail if the cap is lifted.
    assert!(
        accepted <= 16,
        "the server accepted {accepted} of {opened} connections"
    );
    let answer = invoke(
        &app,
        &bystander.access_token,
        &echo,
        json!({"still": "here"}),
    )
    .await;
    assert_eq!(answer["output"], json!({"still": "here"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_instances_never_share_a_host_uid() {
    let Some(app) = engine_app("live_instances_never_share_a_host_uid", |raw| {
        raw.engine.sandbox_uid_count = 2
    })
    .await
    else {
        return;
    };
    let python = app.runtime("python").await.unwrap();
    let user = app.register().await;
    let sleeper =
        "import time\ndef handler(e, c):\n    time.sleep(e.get('s', 0))\n    return 'ok'\n";
    let mut ids = Vec::new();
    for name in ["uid-a", "uid-b", "uid-c"] {
        ids.push(
            deploy(
                &app,
                &user.access_token,
                name,
                &python,
                "main.handler",
                &[("main.py", sleeper)],
                json!({}),
            )
            .await,
        );
    }
    // Two busy instances hold both uids.
    let busy: Vec<_> = ids[..2]
        .iter()
        .map(|id| execute_in_background(&app, &user.access_token, id, json!({"s": 3})))
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // A third instance would have to share one: it is refused instead.
    app.post(
        &format!("/api/functions/{}/execute", ids[2]),
        &user.access_token,
        json!({}),
    )
    .await
    .expect(429);
    for task in busy {
        assert_eq!(task.await.unwrap(), 200);
    }
    // Once they are idle, a cold start takes the uid of the one idle the longest.
    let run = invoke(&app, &user.access_token, &ids[2], json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
}

/// How many processes on this host run as the function named `name` (sandboxed runtimes carry it in
/// `AWS_LAMBDA_FUNCTION_NAME`).
fn processes_of_function(name: &str) -> usize {
    let needle = format!("AWS_LAMBDA_FUNCTION_NAME={name}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
            environ
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        })
        .count()
}

async fn wait_for_processes(name: &str, want_some: bool, within: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if (processes_of_function(name) > 0) == want_some {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_or_deleting_releases_the_warm_floor() {
    let Some(app) = engine_app("lowering_or_deleting_releases_the_warm_floor", |raw| {
        raw.engine.keep_alive_s = 1
    })
    .await
    else {
        return;
    };
    let user = app.register().await;
    let name = format!("floor-{}", &crate::helpers::unique()[..8]);
    let id = deploy_python(
        &app,
        &user.access_token,
        &name,
        "def handler(e, c):\n    return 1\n",
        json!({"min_instances": 1}),
    )
    .await;
    let secs = std::time::Duration::from_secs;
    assert!(
        wait_for_processes(&name, true, secs(10)).await,
        "pre-warmed"
    );
    tokio::time::sleep(secs(3)).await;
    assert!(
        processes_of_function(&name) > 0,
        "the floor outlives the keep-alive"
    );

    app.put(
        &format!("/api/functions/{id}"),
        &user.access_token,
        json!({"min_instances": 0}),
    )
    .await
    .expect(200);
    assert!(
        wait_for_processes(&name, false, secs(6)).await,
        "min_instances 0 let the keep-alive reap the instance"
    );

    app.put(
        &format!("/api/functions/{id}"),
        &user.access_token,
        json!({"min_instances": 1}),
    )
    .await
    .expect(200);
    assert!(
        wait_for_processes(&name, true, secs(10)).await,
        "warm again"
    );
    app.delete(&format!("/api/functions/{id}"), &user.access_token)
        .await
        .expect(204);
    assert!(
        wait_for_processes(&name, false, secs(3)).await,
        "deleting the function stopped its warm instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_source_under_another_name_is_not_shared_between_tenants() {
    let Some(app) = engine_app(
        "the_same_source_under_another_name_is_not_shared_between_tenants",
        |_| {},
    )
    .await
    else {
        return;
    };
    let python = app.runtime("python").await.unwrap();
    let source = "def handler(e, c):\n    return 'mine'\n";
    // The squatter runs the text first, under another file name.
    let squatter = app.register().await;
    let first = deploy(
        &app,
        &squatter.access_token,
        "squat",
        &python,
        "zzz.handler",
        &[("zzz.py", source)],
        json!({}),
    )
    .await;
    assert_eq!(
        invoke(&app, &squatter.access_token, &first, json!({})).await["output"],
        "mine"
    );
    let victim = app.register().await;
    let second = deploy(
        &app,
        &victim.access_token,
        "victim",
        &python,
        "app.handler",
        &[("app.py", source)],
        json!({}),
    )
    .await;
    let run = invoke(&app, &victim.access_token, &second, json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], "mine");
}

/// A function that leaves a thread and a forked process ticking every 20 ms. Each invocation
/// reports when it ran and every tick so far (both ticker kinds), on the sandbox's monotonic clock.
const TICKERS: &str = r#"
import os, threading, time

TICKS = "/tmp/child-ticks"
thread_ticks = []

def tick_forever(record):
    while True:
        record(time.monotonic())
        time.sleep(0.02)

def append_to_file(t):
    with open(TICKS, "a") as f:
        f.write("%f\n" % t)

def handler(event, context):
    if event.get("start"):
        threading.Thread(target=tick_forever, args=(thread_ticks.append,), daemon=True).start()
        open(TICKS, "a").close()
        if os.fork() == 0:
            tick_forever(append_to_file)
    with open(TICKS) as f:
        child_ticks = [float(line) for line in f if line.strip()]
    time.sleep(0.1)
    return {"now": time.monotonic(), "thread": thread_ticks[:], "child": child_ticks}
"#;

/// Lambda freezes an idle sandbox; so does the engine: what a function leaves running (a thread, a
/// forked process) gets no CPU between invocations, and a frozen instance still dies when deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_function_leaves_running_gets_no_cpu_between_invocations() {
    let test = "what_a_function_leaves_running_gets_no_cpu_between_invocations";
    let Some(app) = engine_app(test, |_| {}).await else {
        return;
    };
    if !std::path::Path::new("/sys/fs/cgroup/freezer").exists()
        && !std::fs::read_to_string("/proc/self/cgroup")
            .unwrap_or_default()
            .starts_with("0::")
    {
        crate::skip(test, "this host has no cgroup freezer (v1) nor cgroup v2");
        return;
    }
    let user = app.register().await;
    let name = format!("ticker-{}", &crate::helpers::unique()[..8]);
    let id = deploy_python(&app, &user.access_token, &name, TICKERS, json!({})).await;
    let first = invoke(&app, &user.access_token, &id, json!({"start": true})).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let idle_from = first["output"]["now"].as_f64().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let second = invoke(&app, &user.access_token, &id, json!({})).await;
    assert_eq!(second["status"], "succeeded", "{second}");
    let output = &second["output"];
    // The invocation began at least 100 ms before `now` (its sleep): anything ticking between the
    // two invocations, with a margin each side for the thaw and the reply, ran while it was idle.
    let idle_until = output["now"].as_f64().unwrap() - 0.1;
    for ticker in ["thread", "child"] {
        let ticks: Vec<f64> = output[ticker]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_f64().unwrap())
            .collect();
        assert!(
            ticks.len() >= 3,
            "the {ticker} ticked while invoked: {ticks:?}"
        );
        let while_idle = ticks
            .iter()
            .filter(|&&t| t > idle_from + 0.1 && t < idle_until - 0.1)
            .count();
        assert_eq!(
            while_idle,
            0,
            "the {ticker} ran {while_idle} times in the {:.1} s the instance was idle",
            idle_until - idle_from
        );
    }

    // A frozen process dies of SIGKILL only once thawed: bounded, so a kill that forgets to thaw
    // fails here rather than hanging the suite.
    let deleted = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        app.delete(&format!("/api/functions/{id}"), &user.access_token),
    )
    .await
    .expect("deleting a function with a frozen instance answered within 10 s");
    deleted.expect(204);
    assert!(
        wait_for_processes(&name, false, std::time::Duration::from_secs(3)).await,
        "deleting the function killed its frozen instance"
    );
}

/// Archives are unpacked by an unprivileged user (the uid just below the sandboxes' range), not by
/// the server's root, and then handed to root after a check that the extractor wrote every entry:
/// a server that unpacked as root fails that check (the function cannot start), and no uid, the
/// extractor's included, can alter any tenant's unpacked code afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_is_unpacked_by_an_unprivileged_user() {
    let Some(app) = engine_app("code_is_unpacked_by_an_unprivileged_user", |_| {}).await else {
        return;
    };
    let python = app.runtime("python").await.unwrap();
    let user = app.register().await;
    let token = user.access_token.as_str();
    let reader = "def handler(e, c):\n    return open('lib/data.txt').read()\n";
    let id = deploy(
        &app,
        token,
        "unpacked",
        &python,
        "main.handler",
        &[("main.py", reader), ("lib/data.txt", "unpacked")],
        json!({}),
    )
    .await;
    let run = invoke(&app, token, &id, json!({})).await;
    assert_eq!(run["output"], "unpacked", "{run}");
    let sha = app
        .get(&format!("/api/functions/{id}"), token)
        .await
        .expect(200)
        .body["code_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = crate::code_entry(&app, &sha, None);
    use std::os::unix::fs::MetadataExt;
    for path in ["", "main.py", "lib", "lib/data.txt"] {
        let meta = std::fs::symlink_metadata(dir.join(path)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (0, 0),
            "{path:?} in the unpacked code"
        );
    }
}

/// One tenant cannot hold the whole memory budget: its live instances hold at most its share
/// (`ENGINE_USER_MEMORY_MB`), so a tenant asking for all of it with functions that only sleep gets
/// 429 past its share, and another tenant's cold start still finds room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_hold_the_whole_memory_budget() {
    let Some(app) = engine_app("one_tenant_cannot_hold_the_whole_memory_budget", |raw| {
        raw.engine.memory_budget_mb = Some(512);
        raw.engine.user_memory_mb = Some(256);
        raw.engine.queue_timeout_s = 1;
    })
    .await
    else {
        return;
    };
    let sleeper =
        "import time\ndef handler(e, c):\n    time.sleep(e.get('s', 0))\n    return 'ok'\n";
    let (hog, victim) = (app.register().await, app.register().await);
    let mut hogs = Vec::new();
    for name in ["hog-a", "hog-b"] {
        hogs.push(
            deploy_python(
                &app,
                &hog.access_token,
                name,
                sleeper,
                json!({"memory_mb": 256}),
            )
            .await,
        );
    }
    let victims_fn = deploy_python(
        &app,
        &victim.access_token,
        "victim",
        sleeper,
        json!({"memory_mb": 256}),
    )
    .await;
    // The hog's two sleeping invocations would hold all 512 MB.
    let busy: Vec<_> = hogs
        .iter()
        .map(|id| execute_in_background(&app, &hog.access_token, id, json!({"s": 4})))
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let run = invoke(&app, &victim.access_token, &victims_fn, json!({})).await;
    assert_eq!(
        run["status"], "succeeded",
        "the other tenant found room: {run}"
    );
    let mut statuses = Vec::new();
    for task in busy {
        statuses.push(task.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 429],
        "one of the hog's two cold starts is past its share"
    );

    // Within its share a user's second cold start waits for the first instance to go idle and
    // takes its place, rather than waiting out the queue timeout.
    let quick: Vec<_> = (0..2)
        .map(|_| execute_in_background(&app, &hog.access_token, &hogs[0], json!({"s": 0.2})))
        .collect();
    for task in quick {
        assert_eq!(task.await.unwrap(), 200);
    }

    // A function asking for more than one user's share is refused with the reason, not a 500.
    let too_big = deploy_python(
        &app,
        &hog.access_token,
        "too-big",
        sleeper,
        json!({"memory_mb": 512}),
    )
    .await;
    let refused = app
        .post(
            &format!("/api/functions/{too_big}/execute"),
            &hog.access_token,
            json!({}),
        )
        .await
        .expect_error(422, "validation_failed");
    assert_eq!(
        refused.body["error"]["field"], "memory_mb",
        "{}",
        refused.text
    );
}

/// An update replaces the warm floor rather than adding to it: the old version's idle instances stop
/// as the new version's start, so updates cannot pile up warm instances (each holding memory, a uid
/// and CPU during its initialisation) without a single invocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_replace_the_warm_floor_instead_of_adding_to_it() {
    let Some(app) = engine_app(
        "updates_replace_the_warm_floor_instead_of_adding_to_it",
        |_| {},
    )
    .await
    else {
        return;
    };
    let user = app.register().await;
    let name = format!("floor-{}", &crate::helpers::unique()[..8]);
    let id = deploy_python(
        &app,
        &user.access_token,
        &name,
        "def handler(e, c):\n    return 1\n",
        json!({"min_instances": 2}),
    )
    .await;
    let secs = std::time::Duration::from_secs;
    let settled = async |want: usize| {
        let deadline = std::time::Instant::now() + secs(10);
        while std::time::Instant::now() < deadline {
            if processes_of_function(&name) == want {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    };
    assert!(settled(2).await, "two warm instances");
    for description in ["first", "second"] {
        app.put(
            &format!("/api/functions/{id}"),
            &user.access_token,
            json!({"description": description}),
        )
        .await
        .expect(200);
    }
    tokio::time::sleep(secs(2)).await;
    assert!(
        settled(2).await,
        "still two after two updates, not {}",
        processes_of_function(&name)
    );
}
