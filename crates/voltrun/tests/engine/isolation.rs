//! Attacks from inside real functions. Each must fail while the server stays healthy.

use reqwest::Method;
use serde_json::json;

use crate::{deploy, deploy_python, engine_app, invoke};

/// A Python probe that tries many escapes and reports what it saw.
const PROBE: &str = r#"
import ctypes, errno, os, socket

libc = ctypes.CDLL(None, use_errno=True)

def attempt(fn):
    # The errno of an OSError, so a test can tell a read-only file system from a missing file.
    try:
        fn()
        return 0
    except OSError as e:
        return e.errno

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

def fill_shm():
    chunk = b"x" * (1 << 20)
    with open("/dev/shm/big", "wb") as f:
        for _ in range(100):
            f.write(chunk)
            f.flush()

def find_marker(marker, roots):
    # Every readable file under these roots that contains the other tenant's marker.
    found = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    with open(path, "rb") as f:
                        if marker in f.read(1 << 20):
                            found.append(path)
                except OSError:
                    pass
    return found

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
        "other_code": os.path.exists(event["other_code"]),
        "marker_found": find_marker(event["marker"].encode(), ["/tmp", "/var", "/etc", "/run", "/home", "/root", "/srv", "/opt", "/mnt", "/data"]),
        "host_root": os.path.exists("/root"),
        "data_dir": os.path.exists(event["data_dir"]),
        "database": os.path.exists(event["database"]),
        "interfaces": sorted(os.listdir("/sys/class/net")) if os.path.exists("/sys/class/net") else sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]),
        "routes": open("/proc/net/route").read().strip().splitlines()[1:],
        "server_port": connect("127.0.0.1", event["server_port"]),
        "postgres": connect("127.0.0.1", event["postgres_port"]),
        "runtime_api": connect("127.0.0.1", 9001),
        "write_task": attempt(lambda: open("/var/task/evil", "w").write("x")),
        "write_usr": attempt(lambda: open("/usr/evil", "w").write("x")),
        "write_root": attempt(lambda: open("/evil", "w").write("x")),
        "write_tmp": attempt(lambda: open("/tmp/fine", "w").write("x")),
        "write_dev": attempt(lambda: open("/dev/evil", "w").write("x")),
        "dev_null": attempt(lambda: open("/dev/null", "w").write("x")),
        "fill_shm": attempt(fill_shm),
        "mount": syscall_errno("mount", b"none", b"/tmp", b"tmpfs", 0, None),
        "unshare_user": syscall_errno("unshare", 0x10000000),
        "unshare_net": syscall_errno("unshare", 0x40000000),
        "ptrace": syscall_errno("ptrace", 16, 1, None, None),
        "setuid0": syscall_errno("setuid", 0),
        "kill_server": syscall_errno("kill", event["server_pid"], 0),
    }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escapes_fail_from_inside_a_function() {
    let Some(app) = engine_app("escapes_fail_from_inside_a_function", |_| {}).await else {
        return;
    };
    let python = app.runtime("python").await.unwrap();
    let user = app.register().await;
    // Another tenant's function, invoked first so that its code is unpacked on this host (and its
    // instance stays warm) while the probe looks for it.
    let other = app.register().await;
    let marker = format!(
        "OTHER_TENANT_MARKER_{}",
        crate::helpers::unique().replace('-', "")
    );
    let other_id = deploy(
        &app,
        &other.access_token,
        "secret-code",
        &python,
        "main.handler",
        &[(
            "main.py",
            &format!("SECRET = '{marker}'\ndef handler(e, c):\n    return len(SECRET)\n"),
        )],
        json!({}),
    )
    .await;
    let ran = invoke(&app, &other.access_token, &other_id, json!({})).await;
    assert_eq!(ran["status"], "succeeded", "{ran}");
    let other_sha = app
        .get(&format!("/api/functions/{other_id}"), &other.access_token)
        .await
        .expect(200)
        .body["code_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let other_code = crate::code_entry(&app, &other_sha, Some("main.py"));
    assert!(
        other_code.is_dir(),
        "the other tenant's code is on this host's disk"
    );

    let id = deploy_python(&app, &user.access_token, "probe", PROBE, json!({})).await;
    let data_dir = app
        .database_url
        .trim_start_matches("sqlite://")
        .rsplit_once('/')
        .unwrap()
        .0
        .to_string();
    let port: u16 = app.base.rsplit(':').next().unwrap().parse().unwrap();
    // The PostgreSQL the suite runs against (on its own port), or the default one.
    let postgres_port: u16 = std::env::var("VOLTRUN_TEST_DATABASE_URL")
        .ok()
        .and_then(|url| {
            url.rsplit_once('@')?
                .1
                .split(['/', ':'])
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(5432);
    let event = json!({
        "data_dir": data_dir,
        "database": app.database_url.trim_start_matches("sqlite://"),
        "server_port": port,
        "postgres_port": postgres_port,
        "other_code": other_code,
        "marker": marker,
        "server_pid": std::process::id(),
    });
    let run = invoke(&app, &user.access_token, &id, event).await;
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
    const ENOENT: i64 = 2;
    const ESRCH: i64 = 3;
    const EROFS: i64 = 30;
    const EPERM: i64 = 1;
    assert_eq!(
        r["shadow"], ENOENT,
        "the host's /etc/shadow is not in the sandbox"
    );
    assert_eq!(r["host_root"], false);
    assert_eq!(
        r["data_dir"], false,
        "the server's data directory is invisible"
    );
    assert_eq!(r["database"], false, "the database file is invisible");
    assert_eq!(
        r["other_code"], false,
        "the other tenant's code directory is invisible"
    );
    assert_eq!(
        r["marker_found"],
        json!([]),
        "the other tenant's code is nowhere to be read"
    );
    assert_eq!(r["interfaces"], json!(["lo"]), "only a loopback interface");
    assert_eq!(r["routes"], json!([]), "no route anywhere");
    assert_eq!(
        r["server_port"], false,
        "the host's loopback services are unreachable"
    );
    assert_eq!(
        r["postgres"], false,
        "the suite's PostgreSQL (port {postgres_port}) is unreachable"
    );
    assert_eq!(r["runtime_api"], true, "its own Runtime API is reachable");
    for key in ["write_task", "write_usr", "write_root"] {
        assert_eq!(r[key], EROFS, "{key} fails as a read-only file system: {r}");
    }
    assert_eq!(r["write_tmp"], 0, "/tmp is writable: {r}");
    const ENOSPC: i64 = 28;
    assert_eq!(r["write_dev"], EROFS, "/dev is read-only: {r}");
    assert_eq!(r["dev_null"], 0, "/dev/null still takes writes: {r}");
    assert_eq!(r["fill_shm"], ENOSPC, "/dev/shm is size-limited: {r}");
    // Without capabilities (not the seccomp filter, whose refusals hardening.rs checks against a
    // host control run).
    for key in ["mount", "unshare_user", "unshare_net", "ptrace"] {
        assert_eq!(r[key], EPERM, "{key} must fail with EPERM: {r}");
    }
    assert_eq!(
        r["kill_server"], ESRCH,
        "the server's process does not exist in the sandbox's PID namespace"
    );
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
        raw.engine.max_processes = 64
    })
    .await
    else {
        return;
    };
    let user = app.register().await;
    let bomb = "import os, time\ndef handler(e, c):\n    n = 0\n    while True:\n        try:\n            if os.fork() == 0:\n                time.sleep(60)\n                os._exit(0)\n            n += 1\n        except OSError:\n            return n\n";
    let id = deploy_python(
        &app,
        &user.access_token,
        "bomb",
        bomb,
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
    let Some(app) = engine_app("tmp_is_size_limited", |raw| raw.engine.tmp_size_mb = 8).await
    else {
        return;
    };
    let user = app.register().await;
    let fill = "def handler(e, c):\n    try:\n        with open('/tmp/big', 'wb') as f:\n            f.write(b'x' * (16 * 1024 * 1024))\n        return 'wrote'\n    except OSError as err:\n        return err.strerror\n";
    let id = deploy_python(&app, &user.access_token, "filler", fill, json!({})).await;
    let run = invoke(&app, &user.access_token, &id, json!({})).await;
    assert_eq!(run["output"], "No space left on device", "{run}");
}
