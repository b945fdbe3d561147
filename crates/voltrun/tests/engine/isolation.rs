//! Attacks from inside real functions. Each must fail while the server stays healthy.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{deploy, engine_app, invoke};

/// A Python probe that tries many escapes and reports what it saw.
const PROBE: &str = r#"
import ctypes, errno, os, socket

libc = ctypes.CDLL(None, use_errno=True)

def attempt(fn):
    try:
        return "ok: %r" % (fn(),)
    except Exception as e:
        return "refused: %s" % type(e).__name__

def syscall_errno(name, *args):
    f = getattr(libc, name)
    r = f(*args)
    return ctypes.get_errno() if r != 0 else 0

def connect(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()

def status_field(name):
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()

def handler(event, context):
    return {
        "uid": os.getuid(),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "cap_eff": status_field("CapEff"),
        "no_new_privs": status_field("NoNewPrivs"),
        "seccomp": status_field("Seccomp"),
        "root_entries": sorted(os.listdir("/")),
        "task": sorted(os.listdir("/var/task")),
        "shadow": attempt(lambda: open("/etc/shadow").read()),
        "host_root": os.path.exists("/root"),
        "data_dir": os.path.exists(event["data_dir"]),
        "database": os.path.exists(event["database"]),
        "interfaces": sorted(os.listdir("/sys/class/net")) if os.path.exists("/sys/class/net") else sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]),
        "routes": open("/proc/net/route").read().strip().splitlines()[1:],
        "server_port": connect("127.0.0.1", event["server_port"]),
        "postgres": connect("127.0.0.1", 5432),
        "runtime_api": connect("127.0.0.1", 9001),
        "write_task": attempt(lambda: open("/var/task/evil", "w").write("x")),
        "write_usr": attempt(lambda: open("/usr/evil", "w").write("x")),
        "write_root": attempt(lambda: open("/evil", "w").write("x")),
        "write_tmp": attempt(lambda: open("/tmp/fine", "w").write("x")),
        "mount": syscall_errno("mount", b"none", b"/tmp", b"tmpfs", 0, None),
        "unshare_user": syscall_errno("unshare", 0x10000000),
        "unshare_net": syscall_errno("unshare", 0x40000000),
        "ptrace": syscall_errno("ptrace", 16, 1, None, None),
        "setuid0": syscall_errno("setuid", 0),
        "kill_init": syscall_errno("kill", 1, 9),
    }
"#;

fn assert_refused(report: &Value, key: &str) {
    assert!(
        report[key].as_str().unwrap_or("").starts_with("refused"),
        "{key}: {}",
        report[key]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escapes_fail_from_inside_a_function() {
    let Some(app) = engine_app("escapes_fail_from_inside_a_function", |_| {}).await else {
        return;
    };
    let python = app.runtime("python").await.unwrap();
    let user = app.register().await;
    // Another tenant's function, whose code must not be visible.
    let other = app.register().await;
    deploy(
        &app,
        &other.access_token,
        "secret-code",
        &python,
        "main.handler",
        &[(
            "main.py",
            "SECRET = 1\ndef handler(e, c):\n    return SECRET\n",
        )],
        json!({}),
    )
    .await;

    let id = deploy(
        &app,
        &user.access_token,
        "probe",
        &python,
        "main.handler",
        &[("main.py", PROBE)],
        json!({}),
    )
    .await;
    let data_dir = app
        .database_url
        .trim_start_matches("sqlite://")
        .rsplit_once('/')
        .unwrap()
        .0
        .to_string();
    let port: u16 = app.base.rsplit(':').next().unwrap().parse().unwrap();
    let run = invoke(&app, &user.access_token, &id, json!({"data_dir": data_dir, "database": app.database_url.trim_start_matches("sqlite://"), "server_port": port})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let r = &run["output"];

    assert_ne!(r["uid"], 0, "runs as an unprivileged uid");
    assert!(
        r["pids"].as_array().unwrap().len() <= 4,
        "sees only its own processes: {}",
        r["pids"]
    );
    assert_eq!(r["cap_eff"], "0000000000000000", "no capabilities");
    assert_eq!(r["no_new_privs"], "1");
    assert_eq!(r["seccomp"], "2", "a seccomp filter is active");
    assert_eq!(
        r["task"],
        json!(["main.py"]),
        "only its own code at /var/task"
    );
    for absent in ["root", "home", "work", "data", "srv", "opt"] {
        assert!(
            !r["root_entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e == absent),
            "/{absent} is visible: {}",
            r["root_entries"]
        );
    }
    assert_refused(r, "shadow");
    assert_eq!(r["host_root"], false);
    assert_eq!(
        r["data_dir"], false,
        "the server's data directory is invisible"
    );
    assert_eq!(r["database"], false, "the database file is invisible");
    assert_eq!(r["interfaces"], json!(["lo"]), "only a loopback interface");
    assert_eq!(r["routes"], json!([]), "no route anywhere");
    assert_eq!(
        r["server_port"], false,
        "the host's loopback services are unreachable"
    );
    assert_eq!(r["postgres"], false);
    assert_eq!(r["runtime_api"], true, "its own Runtime API is reachable");
    for key in ["write_task", "write_usr", "write_root"] {
        assert_refused(r, key);
    }
    assert!(
        r["write_tmp"].as_str().unwrap().starts_with("ok"),
        "/tmp is writable: {}",
        r["write_tmp"]
    );
    for key in ["mount", "unshare_user", "unshare_net", "ptrace"] {
        assert_eq!(r[key], 1, "{key} must fail with EPERM: {r}");
    }
    assert_ne!(r["setuid0"], 0, "cannot become root");
    let health = app.operator_get("/health").await.expect(200).body;
    assert_eq!(health["engine"]["backend"], "namespace");
    assert_eq!(health["engine"]["ready"], true);
    // This host has writable cgroups, so nothing is degraded; elsewhere the warning says why.
    assert_eq!(health["engine"]["warnings"], json!([]), "{health}");
    assert_eq!(health["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_contained() {
    let Some(app) = engine_app("a_fork_bomb_is_contained", |raw| {
        raw.engine_max_processes = Some("64".into())
    })
    .await
    else {
        return;
    };
    let python = app.runtime("python").await.unwrap();
    let user = app.register().await;
    let bomb = "import os, time\ndef handler(e, c):\n    n = 0\n    while True:\n        try:\n            if os.fork() == 0:\n                time.sleep(60)\n                os._exit(0)\n            n += 1\n        except OSError:\n            return n\n";
    let id = deploy(
        &app,
        &user.access_token,
        "bomb",
        &python,
        "main.handler",
        &[("main.py", bomb)],
        json!({"timeout_s": 5}),
    )
    .await;
    let run = invoke(&app, &user.access_token, &id, json!({})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let forked = run["output"].as_i64().unwrap();
    assert!(forked < 64, "the process cap stopped the bomb at {forked}");
    app.send(Method::GET, "/health", None, None)
        .await
        .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_is_size_limited() {
    let Some(app) = engine_app("tmp_is_size_limited", |raw| {
        raw.engine_tmp_size_mb = Some("8".into())
    })
    .await
    else {
        return;
    };
    let python = app.runtime("python").await.unwrap();
    let user = app.register().await;
    let fill = "def handler(e, c):\n    try:\n        with open('/tmp/big', 'wb') as f:\n            f.write(b'x' * (16 * 1024 * 1024))\n        return 'wrote'\n    except OSError as err:\n        return err.strerror\n";
    let id = deploy(
        &app,
        &user.access_token,
        "filler",
        &python,
        "main.handler",
        &[("main.py", fill)],
        json!({}),
    )
    .await;
    let run = invoke(&app, &user.access_token, &id, json!({})).await;
    assert_eq!(run["output"], "No space left on device", "{run}");
}
