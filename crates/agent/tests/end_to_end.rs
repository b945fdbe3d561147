//! The guest agent run on the host (not as PID 1: `--no-init`), behind a Unix socket that speaks
//! Firecracker's vsock handshake, driven by the host's side of the protocol ([`AgentSession`]), runs
//! real Python and Node.js functions through the engine's own bootstraps
//! (crates/engine/bootstraps) with /usr/bin/python3 and /usr/bin/node.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use voltrun_agent::host::{AgentSession, InvokeOutcome, SessionError, StartOutcome};
use voltrun_agent::protocol::{self, StartSpec, Stream};
use voltrun_agent::vsock::AGENT_PORT;

const TIMEOUT: Duration = Duration::from_secs(20);

fn bootstraps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/bootstraps")
}

struct Agent {
    child: tokio::process::Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Agent {
    /// Starts the agent binary serving one connection on a fresh socket, with `files` as the
    /// function's code directory.
    async fn start(files: &[(&str, &str)]) -> Self {
        Self::start_under(&[], files).await
    }

    /// Starts the agent as `start` does, run by `wrapper` (a command and its arguments) when given.
    async fn start_under(wrapper: &[&str], files: &[(&str, &str)]) -> Self {
        Self::spawn(wrapper, files, true)
    }

    /// Starts the agent serving one connection after another (as in a guest), until killed.
    async fn start_serving(files: &[(&str, &str)]) -> Self {
        Self::spawn(&[], files, false)
    }

    fn spawn(wrapper: &[&str], files: &[(&str, &str)], once: bool) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "va-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(dir.join("task")).unwrap();
        for (name, contents) in files {
            std::fs::write(dir.join("task").join(name), contents).unwrap();
        }
        let socket = dir.join("agent.sock");
        let agent = env!("CARGO_BIN_EXE_voltrun-agent");
        let (program, wrapped) = match wrapper.split_first() {
            Some((program, args)) => (*program, args.iter().copied().chain([agent]).collect()),
            None => (agent, Vec::new()),
        };
        let child = tokio::process::Command::new(program)
            .args(wrapped)
            .arg("--no-init")
            .args(once.then_some("--once"))
            .arg("--unix")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self { child, socket, dir }
    }

    async fn connect(&self) -> AgentSession {
        AgentSession::connect(&self.socket, AGENT_PORT, TIMEOUT)
            .await
            .unwrap()
    }

    fn spec(&self, command: Vec<String>, handler: &str) -> StartSpec {
        let task = self.dir.join("task").display().to_string();
        StartSpec {
            command,
            env: vec![
                ("_HANDLER".into(), handler.into()),
                ("LAMBDA_TASK_ROOT".into(), task.clone()),
                ("AWS_LAMBDA_FUNCTION_NAME".into(), "e2e".into()),
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("LANG".into(), "C.UTF-8".into()),
                ("HOME".into(), "/tmp".into()),
            ],
            cwd: task,
            runtime_api_port: 0,
            max_processes: 0,
        }
    }

    /// Waits for the agent to exit; returns its stderr.
    async fn finish(mut self) -> String {
        let status = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .expect("the agent did not exit after its connection ended")
            .unwrap();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = pipe.read_to_string(&mut stderr).await;
        }
        assert!(status.success(), "agent exited with {status}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn python() -> Vec<String> {
    vec![
        "/usr/bin/python3".into(),
        bootstraps().join("bootstrap.py").display().to_string(),
    ]
}

fn node() -> Vec<String> {
    vec![
        "/usr/bin/node".into(),
        bootstraps().join("bootstrap.js").display().to_string(),
    ]
}

fn deadline() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(now.as_millis()).unwrap() + 30_000
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

const PY_HANDLER: &str = r#"
import sys
print("python starting")

def handler(event, context):
    print("hello", event["name"])
    print("to stderr", file=sys.stderr)
    return {"greeting": "hi " + event["name"], "request": context.aws_request_id}

def fail(event, context):
    raise ValueError("bad input: " + str(event.get("n")))
"#;

#[tokio::test]
async fn python_functions_run_end_to_end() {
    let agent = Agent::start(&[("app.py", PY_HANDLER)]).await;
    let mut session = agent.connect().await;
    assert!(!session.agent_is_pid1());
    assert_eq!(session.agent_version(), env!("CARGO_PKG_VERSION"));

    let started = session
        .start(agent.spec(python(), "app.handler"), TIMEOUT)
        .await
        .unwrap();
    assert!(matches!(started, StartOutcome::Ready { .. }), "{started:?}");
    let init_logs = session.take_logs();
    assert!(
        init_logs.iter().any(|l| l.line == "python starting"),
        "{init_logs:?}"
    );

    for (i, name) in ["ada", "grace"].into_iter().enumerate() {
        let request_id = format!("req-{i}");
        let event = serde_json::to_vec(&serde_json::json!({ "name": name })).unwrap();
        let outcome = session
            .invoke(
                &request_id,
                event,
                deadline(),
                "arn:voltrun:function:e2e:1",
                TIMEOUT,
            )
            .await
            .unwrap();
        let InvokeOutcome::Response(payload) = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(
            json(&payload),
            serde_json::json!({ "greeting": format!("hi {name}"), "request": request_id })
        );
        // The invocation's lines arrived before its result.
        let logs = session.take_logs();
        let lines: Vec<(Stream, &str)> = logs.iter().map(|l| (l.stream, l.line.as_str())).collect();
        assert!(
            lines.contains(&(Stream::Stdout, &format!("hello {name}"))),
            "{lines:?}"
        );
        assert!(lines.contains(&(Stream::Stderr, "to stderr")), "{lines:?}");
    }

    session.shutdown().await;
    agent.finish().await;
}

/// Every line the initialisation wrote is the start's, none the first invocation's: the agent
/// sends `Ready` only once its readers have forwarded what the runtime wrote before asking for work.
#[tokio::test]
async fn every_init_line_arrives_before_ready() {
    const LINES: usize = 3000;
    let source = format!(
        "import sys\nfor i in range({LINES}):\n    print('init', i)\n    print('err', i, file=sys.stderr)\n\ndef handler(event, context):\n    return 1\n"
    );
    let agent = Agent::start(&[("app.py", &source)]).await;
    let mut session = agent.connect().await;
    let started = session
        .start(agent.spec(python(), "app.handler"), TIMEOUT)
        .await
        .unwrap();
    assert!(matches!(started, StartOutcome::Ready { .. }), "{started:?}");
    let init_logs = session.take_logs();
    let count = |stream: Stream, prefix: &str| {
        init_logs
            .iter()
            .filter(|l| l.stream == stream && l.line.starts_with(prefix))
            .count()
    };
    assert_eq!(count(Stream::Stdout, "init "), LINES);
    assert_eq!(count(Stream::Stderr, "err "), LINES);

    let outcome = session
        .invoke("r1", b"{}".to_vec(), deadline(), "arn", TIMEOUT)
        .await
        .unwrap();
    assert_eq!(outcome, InvokeOutcome::Response(b"1".to_vec()));
    let logs = session.take_logs();
    assert!(
        logs.iter()
            .all(|l| !l.line.starts_with("init ") && !l.line.starts_with("err ")),
        "{} init lines landed on the invocation",
        logs.len()
    );
    session.shutdown().await;
    agent.finish().await;
}

#[tokio::test]
async fn python_errors_and_init_errors_come_back_typed() {
    let agent = Agent::start(&[("app.py", PY_HANDLER)]).await;
    let mut session = agent.connect().await;
    session
        .start(agent.spec(python(), "app.fail"), TIMEOUT)
        .await
        .unwrap();

    let outcome = session
        .invoke("r1", br#"{"n": 7}"#.to_vec(), deadline(), "arn", TIMEOUT)
        .await
        .unwrap();

    assert_eq!(
        outcome,
        InvokeOutcome::Error {
            error_type: "ValueError".into(),
            message: "bad input: 7".into()
        }
    );
    let logs = session.take_logs();
    assert!(
        logs.iter().any(|l| l.line.contains("Traceback")),
        "{logs:?}"
    );
    session.shutdown().await;
    agent.finish().await;

    // A handler that does not exist: the runtime reports an init error and exits.
    let agent = Agent::start(&[("app.py", PY_HANDLER)]).await;
    let mut session = agent.connect().await;
    let started = session
        .start(agent.spec(python(), "app.missing"), TIMEOUT)
        .await
        .unwrap();
    let StartOutcome::InitError {
        error_type,
        message,
    } = started
    else {
        panic!("{started:?}");
    };
    assert_eq!(error_type, "Runtime.HandlerNotFound");
    assert!(message.contains("missing"), "{message}");
    drop(session);
    agent.finish().await;
}

const NODE_HANDLER: &str = r#"
console.log('node starting');
exports.handler = async (event, context) => {
  console.log('hello', event.name);
  console.error('to stderr');
  return { greeting: `hi ${event.name}`, request: context.awsRequestId, node: process.version };
};
exports.fail = async () => { throw new TypeError('nope'); };
"#;

#[tokio::test]
async fn node_functions_run_end_to_end() {
    let agent = Agent::start(&[("index.js", NODE_HANDLER)]).await;
    let mut session = agent.connect().await;
    let started = session
        .start(agent.spec(node(), "index.handler"), TIMEOUT)
        .await
        .unwrap();
    assert!(matches!(started, StartOutcome::Ready { .. }), "{started:?}");

    let outcome = session
        .invoke(
            "n1",
            br#"{"name":"linus"}"#.to_vec(),
            deadline(),
            "arn",
            TIMEOUT,
        )
        .await
        .unwrap();

    let InvokeOutcome::Response(payload) = outcome else {
        panic!("{outcome:?}");
    };
    let body = json(&payload);
    assert_eq!(body["greeting"], "hi linus");
    assert_eq!(body["request"], "n1");
    assert!(body["node"].as_str().unwrap().starts_with('v'));
    let logs = session.take_logs();
    // Lambda's console: a line on stdout per call, `<time>\t<request id>\t<LEVEL>\t<message>`.
    let logged = |level: &str, message: &str| {
        logs.iter().any(|l| {
            l.stream == Stream::Stdout && l.line.ends_with(&format!("\tn1\t{level}\t{message}"))
        })
    };
    assert!(logged("INFO", "hello linus"), "{logs:?}");
    assert!(logged("ERROR", "to stderr"), "{logs:?}");
    session.shutdown().await;
    agent.finish().await;
}

#[tokio::test]
async fn node_errors_come_back_typed() {
    let agent = Agent::start(&[("index.js", NODE_HANDLER)]).await;
    let mut session = agent.connect().await;
    session
        .start(agent.spec(node(), "index.fail"), TIMEOUT)
        .await
        .unwrap();

    let outcome = session
        .invoke("n2", b"{}".to_vec(), deadline(), "arn", TIMEOUT)
        .await
        .unwrap();

    assert_eq!(
        outcome,
        InvokeOutcome::Error {
            error_type: "TypeError".into(),
            message: "nope".into()
        }
    );
    session.shutdown().await;
    agent.finish().await;
}

#[tokio::test]
async fn a_runtime_that_dies_mid_invocation_is_reported() {
    let code =
        "import os\ndef handler(event, context):\n    print('going down')\n    os._exit(3)\n";
    let agent = Agent::start(&[("app.py", code)]).await;
    let mut session = agent.connect().await;
    session
        .start(agent.spec(python(), "app.handler"), TIMEOUT)
        .await
        .unwrap();

    let outcome = session
        .invoke("d1", b"{}".to_vec(), deadline(), "arn", TIMEOUT)
        .await
        .unwrap();

    assert_eq!(
        outcome,
        InvokeOutcome::Exited {
            status: "exit status: 3".into(),
            out_of_memory: false,
        }
    );
    assert!(session.take_logs().iter().any(|l| l.line == "going down"));
    drop(session);
    agent.finish().await;
}

#[tokio::test]
async fn a_host_that_disappears_stops_the_runtime_without_a_panic() {
    let code = "import os\ndef handler(event, context):\n    return os.getpid()\n";
    let agent = Agent::start(&[("app.py", code)]).await;
    let mut session = agent.connect().await;
    session
        .start(agent.spec(python(), "app.handler"), TIMEOUT)
        .await
        .unwrap();
    let InvokeOutcome::Response(pid) = session
        .invoke("p1", b"{}".to_vec(), deadline(), "arn", TIMEOUT)
        .await
        .unwrap()
    else {
        panic!("no pid");
    };
    let runtime_pid: u32 = String::from_utf8(pid).unwrap().parse().unwrap();

    drop(session);
    agent.finish().await;

    for _ in 0..100 {
        if !Path::new(&format!("/proc/{runtime_pid}")).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the runtime {runtime_pid} outlived the agent");
}

#[tokio::test]
async fn malformed_and_oversized_frames_end_the_connection_not_the_agent() {
    use tokio::io::AsyncWriteExt;
    for garbage in [
        // An oversized length.
        vec![0xff, 0xff, 0xff, 0xff, 1, 2],
        // A frame of an unknown kind.
        vec![0, 0, 0, 2, protocol::VERSION, 99],
        // A future protocol version.
        vec![0, 0, 0, 2, 200, 2],
    ] {
        let agent = Agent::start(&[]).await;
        let stream = voltrun_agent::vsock::connect(&agent.socket, AGENT_PORT, TIMEOUT)
            .await
            .unwrap();
        let (mut read, mut write) = stream.into_split();
        let hello = protocol::read_message(&mut read).await.unwrap();
        assert!(matches!(hello, Some(protocol::Message::Hello { .. })));

        write.write_all(&garbage).await.unwrap();

        // The agent closes the connection (the stream ends) and exits normally after it.
        let end = tokio::time::timeout(TIMEOUT, protocol::read_message(&mut read))
            .await
            .unwrap();
        assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
        let stderr = agent.finish().await;
        assert!(
            stderr.contains("voltrun-agent: host connection"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn the_handshake_refuses_another_port() {
    let agent = Agent::start(&[]).await;
    let error = AgentSession::connect(&agent.socket, 1234, Duration::from_secs(2))
        .await
        .unwrap_err();
    // The agent drops the connection, as Firecracker does for a port nobody listens on.
    assert!(matches!(error, SessionError::Handshake(_)), "{error}");
    let _ = writeln!(std::io::stderr(), "refused as expected: {error}");
}

/// Whether this process is root (the PID-namespace test needs it).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

/// Zombies on this host whose parent runs `voltrun-agent`.
fn zombies_of_agents() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        if fields.next() != Some("Z") {
            continue;
        }
        let Some(parent) = fields.next() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{parent}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("voltrun-agent") {
            found.push(head.to_string());
        }
    }
    found
}

const ORPHANS: &str = r#"
import os, subprocess

def limits(event, context):
    started, refused = [], 0
    for _ in range(100):
        try:
            started.append(subprocess.Popen(["/bin/sleep", "5"]))
        except OSError:
            refused += 1
    for p in started:
        p.kill()
        p.wait()
    return {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
            "started": len(started), "refused": refused}

def handler(event, context):
    # The subshell exits at once; its `sleep` is orphaned and inherited by init (the agent here),
    # then exits and waits to be reaped.
    subprocess.run(["/bin/sh", "-c", "(sleep 0.2 &); exit 0"], check=True)
    return {"ok": True}
"#;

/// The agent as PID 1 of a new PID namespace, as in a guest (without the guest's mounts:
/// `--no-init`), serving [`ORPHANS`]; `None`, after saying why, where that needs root it lacks.
async fn agent_as_pid_1(test: &str) -> Option<Agent> {
    if !is_root() {
        voltrun_test_support::skip(test, "a PID namespace of its own needs root");
        return None;
    }
    Some(
        Agent::start_under(
            &["unshare", "--pid", "--fork", "--mount-proc"],
            &[("app.py", ORPHANS)],
        )
        .await,
    )
}

#[tokio::test]
async fn as_pid_1_the_agent_reaps_the_orphans_the_runtime_leaves() {
    let Some(agent) =
        agent_as_pid_1("as_pid_1_the_agent_reaps_the_orphans_the_runtime_leaves").await
    else {
        return;
    };
    let mut session = agent.connect().await;
    assert!(session.agent_is_pid1(), "the agent did not run as PID 1");
    session
        .start(agent.spec(python(), "app.handler"), TIMEOUT)
        .await
        .unwrap();
    for i in 0..3 {
        let outcome = session
            .invoke(&format!("r{i}"), b"{}".to_vec(), deadline(), "arn", TIMEOUT)
            .await
            .unwrap();
        assert!(matches!(outcome, InvokeOutcome::Response(_)), "{outcome:?}");
    }
    // Each orphan exits after 0.2 s; the reaper acts on SIGCHLD (and every second regardless).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let give_up = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let zombies = zombies_of_agents();
        if zombies.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "zombies left under the agent: {zombies:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The runtime itself was not reaped behind tokio's back: it still answers.
    let outcome = session
        .invoke("last", b"{}".to_vec(), deadline(), "arn", TIMEOUT)
        .await
        .unwrap();
    assert!(matches!(outcome, InvokeOutcome::Response(_)), "{outcome:?}");
    session.shutdown().await;
}

#[tokio::test]
async fn as_pid_1_the_agent_runs_the_runtime_unprivileged_within_its_process_limit() {
    let Some(agent) =
        agent_as_pid_1("as_pid_1_the_agent_runs_the_runtime_unprivileged_within_its_process_limit")
            .await
    else {
        return;
    };
    let mut session = agent.connect().await;
    let mut spec = agent.spec(python(), "app.limits");
    spec.max_processes = 24;
    let started = session.start(spec, TIMEOUT).await.unwrap();
    assert!(matches!(started, StartOutcome::Ready { .. }), "{started:?}");
    let outcome = session
        .invoke("r", b"{}".to_vec(), deadline(), "arn", TIMEOUT)
        .await
        .unwrap();
    let InvokeOutcome::Response(payload) = outcome else {
        panic!("{outcome:?} {:?}", session.take_logs());
    };
    let report = json(&payload);
    assert_eq!(report["uid"], 1000, "{report}");
    assert_eq!(report["gid"], 1000, "{report}");
    assert_eq!(report["groups"], serde_json::json!([]), "{report}");
    // The runtime (with its threads) counts too: fewer than 24 sleeps started, the rest refused.
    let started = report["started"].as_u64().unwrap();
    assert!(started < 24, "{report}");
    assert_eq!(
        started + report["refused"].as_u64().unwrap(),
        100,
        "{report}"
    );
    session.shutdown().await;
}

const STATEFUL: &str = r#"
import os, time
LOADED_AT = time.time()
print("initialising once")

def handler(event, context):
    print("invoked with", event["n"])
    return {"pid": os.getpid(), "loaded_at": LOADED_AT}
"#;

#[tokio::test]
async fn a_detached_runtime_is_resumed_by_the_next_connection_without_a_new_init() {
    // What a snapshot restore looks like to the agent: the host detaches (vsock connections do not
    // survive a snapshot), and a new connection finds the initialised runtime waiting.
    let agent = Agent::start_serving(&[("app.py", STATEFUL)]).await;
    let mut session = agent.connect().await;
    assert!(!session.runtime_ready());
    let StartOutcome::Ready { init_ms } = session
        .start(agent.spec(python(), "app.handler"), TIMEOUT)
        .await
        .unwrap()
    else {
        panic!("the runtime did not start");
    };
    let InvokeOutcome::Response(before) = session
        .invoke("s1", br#"{"n": 1}"#.to_vec(), deadline(), "arn", TIMEOUT)
        .await
        .unwrap()
    else {
        panic!("no response");
    };
    let before = json(&before);
    session.detach(TIMEOUT).await.unwrap();

    let mut session = agent.connect().await;
    assert!(session.runtime_ready(), "the runtime was not kept");
    // Resume answers with the original initialisation time: no new init happened.
    assert_eq!(
        session.resume(TIMEOUT).await.unwrap(),
        StartOutcome::Ready { init_ms }
    );
    let InvokeOutcome::Response(after) = session
        .invoke("s2", br#"{"n": 2}"#.to_vec(), deadline(), "arn", TIMEOUT)
        .await
        .unwrap()
    else {
        panic!("no response after the resume");
    };
    let after = json(&after);
    assert_eq!(after["pid"], before["pid"]);
    assert_eq!(after["loaded_at"], before["loaded_at"]);
    let logs: Vec<String> = session.take_logs().into_iter().map(|l| l.line).collect();
    assert!(logs.contains(&"invoked with 2".to_string()), "{logs:?}");
    assert!(!logs.iter().any(|l| l == "initialising once"), "{logs:?}");

    // Shutdown, unlike a detach, ends the runtime: the next connection finds none.
    session.shutdown().await;
    let runtime_pid = before["pid"].as_u64().unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{runtime_pid}")).exists() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the runtime outlived a shutdown");
    let mut session = agent.connect().await;
    assert!(!session.runtime_ready());
    // Resuming what is not there ends the connection, not the agent.
    assert!(session.resume(Duration::from_secs(5)).await.is_err());
    let session = agent.connect().await;
    assert!(!session.runtime_ready());
}

const HUNGRY: &str = r#"
def handler(event, context):
    block = b"x" * (event["mb"] << 20)
    return len(block)
"#;

#[tokio::test]
async fn each_result_carries_the_runtimes_memory_peak_during_that_invocation() {
    let agent = Agent::start(&[("app.py", HUNGRY)]).await;
    let mut session = agent.connect().await;
    session
        .start(agent.spec(python(), "app.handler"), TIMEOUT)
        .await
        .unwrap();
    let mut peaks = Vec::new();
    for (id, mb) in [("m1", 80), ("m2", 0)] {
        let event = format!(r#"{{"mb": {mb}}}"#).into_bytes();
        let outcome = session
            .invoke(id, event, deadline(), "arn", TIMEOUT)
            .await
            .unwrap();
        assert!(matches!(outcome, InvokeOutcome::Response(_)), "{outcome:?}");
        peaks.push(session.memory_peak_bytes().unwrap() >> 20);
    }
    // The 80 MiB block shows in the first peak; the second starts afresh (the block is freed).
    assert!(peaks[0] >= 80, "{peaks:?}");
    assert!(
        peaks[1] < 60,
        "the peak was not reset between invocations: {peaks:?}"
    );
    drop(session);
    agent.finish().await;
}
