//! The engine's guest instances (`isolation::guest`, what the Firecracker backend runs) driven end
//! to end with the guest agent started as a host process instead of inside a microVM:
//! Linux guests do not boot on the hosts this suite runs on (docs/firecracker.md), and everything
//! after the boot is the same — the launcher trait, the vsock handshake, the framed protocol, the
//! agent starting the engine's own bootstraps behind the Runtime API, and the engine's pools,
//! results, error types, timeouts and logs. The agent here isolates nothing: that is the VM's job.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use voltrun_agent::host::{AgentSession, StartOutcome};
use voltrun_agent::protocol::StartSpec;
use voltrun_agent::vsock::AGENT_PORT;
use voltrun_domain::execution::ExecutionStatus;
use voltrun_domain::function::{CodeKind, FunctionRecord};
use voltrun_engine::isolation::guest::{
    Guest, GuestBody, GuestError, GuestIsolation, GuestLauncher, GuestSpec, Step, TASK_ROOT,
};
use voltrun_engine::{
    CodeSource, CodeSourceError, Engine, Invocation, InvocationResult, LocalEngine,
    LocalEngineConfig,
};

/// Starts `voltrun-agent --no-init --once --unix <socket>` per guest, and maps the guest's paths
/// (`/var/task`, `/var/runtime`) to the host directories the engine keeps them in.
#[derive(Debug)]
struct HostAgents {
    /// The `voltrun-agent` binary.
    agent: PathBuf,
    sockets: PathBuf,
    bootstraps: PathBuf,
    /// Agents running now: a guest the engine ended must be gone.
    running: Arc<AtomicUsize>,
    /// Where each agent gets a cgroup v1 memory controller of the function's memory, standing in
    /// for a VM's memory size (so that the guest's OOM killer has a host equivalent); `None` where
    /// the host has no such controller or the tests are not root.
    memory_cgroups: Option<PathBuf>,
    /// Where set, stands in for the Firecracker launcher's snapshots: before a configuration's
    /// cold start boots, an agent of its own starts that configuration's runtime and is detached
    /// from, and the next cold start of the configuration reconnects to it and finds the runtime
    /// waiting, as a restored guest's host does. (A process cannot be cloned as a snapshot can, so
    /// each parked agent serves one cold start.)
    parked: Option<Parked>,
}

type Parked = Arc<std::sync::Mutex<std::collections::HashMap<String, (Box<HostAgent>, PathBuf)>>>;

#[derive(Debug)]
struct HostAgent {
    child: tokio::process::Child,
    running: Arc<AtomicUsize>,
    cgroup: Option<PathBuf>,
}

#[async_trait]
impl GuestBody for HostAgent {
    async fn stop(mut self: Box<Self>) {
        // The agent and its runtime, as a VM's end takes every process in it: the agent leads a
        // process group its runtime is born into.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        if let Some(cgroup) = &self.cgroup {
            // The runtime may take a moment to follow its killed agent out of the group.
            for _ in 0..100 {
                if std::fs::remove_dir(cgroup).is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A cgroup v1 memory directory of this process's own, for the agents' groups; `None` (with the
/// reason) where there is none to use.
fn memory_cgroup_parent(dir_name: &str) -> Result<PathBuf, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let path = own
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        })
        .ok_or("no cgroup v1 memory controller")?;
    let parent = PathBuf::from("/sys/fs/cgroup/memory")
        .join(path.trim_start_matches('/'))
        .join(dir_name);
    std::fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    Ok(parent)
}

fn confine(
    parent: &std::path::Path,
    name: &str,
    memory_mb: u32,
    pid: u32,
) -> std::io::Result<PathBuf> {
    let cgroup = parent.join(name);
    std::fs::create_dir(&cgroup)?;
    std::fs::write(
        cgroup.join("memory.limit_in_bytes"),
        (u64::from(memory_mb) << 20).to_string(),
    )?;
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())?;
    Ok(cgroup)
}

impl HostAgents {
    /// Brings up an agent for `spec`: a parked one of its configuration, or a new process.
    async fn launch_agent(&self, spec: &GuestSpec) -> Result<Guest, String> {
        if let Some(parked) = &self.parked {
            // The configuration, without the instance's own name.
            let mut start = self.start_spec(spec);
            start.env.retain(|(k, _)| k != "AWS_LAMBDA_LOG_STREAM_NAME");
            let key = format!("{start:?}");
            let waiting = parked.lock().unwrap().remove(&key);
            if let Some((body, socket)) = waiting {
                return connect(&socket, body).await;
            }
            self.park(spec, key).await?;
        }
        let (body, socket) = self.spawn_agent(&spec.name, spec.memory_mb, true)?;
        connect(&socket, body).await
    }

    /// Starts `voltrun-agent --no-init [--once] --unix <socket>`, in a memory cgroup of the
    /// function's size where there is one.
    fn spawn_agent(
        &self,
        name: &str,
        memory_mb: u32,
        once: bool,
    ) -> Result<(Box<HostAgent>, PathBuf), String> {
        let socket = self.sockets.join(format!("{name}.sock"));
        let child = tokio::process::Command::new(&self.agent)
            .arg("--no-init")
            .args(once.then_some("--once"))
            .arg("--unix")
            .arg(&socket)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| e.to_string())?;
        self.running.fetch_add(1, Ordering::SeqCst);
        // The runtime starts after the hello, so it is born inside the agent's group.
        let cgroup = match (&self.memory_cgroups, child.id()) {
            (Some(parent), Some(pid)) => {
                Some(confine(parent, name, memory_mb, pid).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        let body = Box::new(HostAgent {
            child,
            running: self.running.clone(),
            cgroup,
        });
        Ok((body, socket))
    }

    /// Starts `spec`'s runtime in an agent of its own and detaches from it, for the next cold start
    /// of the configuration `key` (what a snapshot's template VM does).
    async fn park(&self, spec: &GuestSpec, key: String) -> Result<(), String> {
        let Some(parked) = &self.parked else {
            return Ok(());
        };
        let (body, socket) =
            self.spawn_agent(&format!("{}-parked", spec.name), spec.memory_mb, false)?;
        let mut session =
            match AgentSession::connect(&socket, AGENT_PORT, Duration::from_secs(10)).await {
                Ok(session) => session,
                Err(e) => {
                    body.stop().await;
                    return Err(e.to_string());
                }
            };
        let started = session
            .start(self.start_spec(spec), Duration::from_secs(10))
            .await;
        if !matches!(started, Ok(StartOutcome::Ready { .. })) {
            body.stop().await;
            return Ok(());
        }
        session
            .detach(Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        parked.lock().unwrap().insert(key, (body, socket));
        Ok(())
    }
}

async fn connect(socket: &std::path::Path, body: Box<HostAgent>) -> Result<Guest, String> {
    match AgentSession::connect(socket, AGENT_PORT, Duration::from_secs(10)).await {
        Ok(session) => Ok(Guest { session, body }),
        Err(e) => {
            body.stop().await;
            Err(e.to_string())
        }
    }
}

#[async_trait]
impl GuestLauncher for HostAgents {
    fn describe(&self) -> String {
        "the guest agent as a host process (test)".into()
    }

    fn runtimes(&self) -> Vec<String> {
        voltrun_engine::detect_runtimes()
            .into_iter()
            .map(|r| r.id)
            .collect()
    }

    async fn launch(&self, spec: &GuestSpec) -> Result<Guest, GuestError> {
        self.launch_agent(spec)
            .await
            .map_err(|e| GuestError::at(Step::Spawn, e))
    }

    fn start_spec(&self, spec: &GuestSpec) -> StartSpec {
        let code = spec.code_dir.display().to_string();
        let bootstraps = self.bootstraps.display().to_string();
        let host = |value: &str| {
            value
                .replace(TASK_ROOT, &code)
                .replace("/var/runtime", &bootstraps)
        };
        StartSpec {
            command: spec.command.iter().map(|c| host(c)).collect(),
            env: spec.env.iter().map(|(k, v)| (k.clone(), host(v))).collect(),
            cwd: code,
            // Many agents share the host's loopback: each takes a free port.
            runtime_api_port: 0,
            max_processes: spec.max_processes,
        }
    }
}

/// The functions' code, as storage would hand it to the engine.
#[derive(Debug, Default)]
struct Code(std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>);

#[async_trait]
impl CodeSource for Code {
    async fn code(&self, sha256: &str) -> Result<Option<Vec<u8>>, CodeSourceError> {
        Ok(self.0.lock().unwrap().get(sha256).cloned())
    }

    async fn referenced(&self, sha256: &str) -> Result<bool, CodeSourceError> {
        Ok(self.0.lock().unwrap().contains_key(sha256))
    }
}

struct Setup {
    engine: Arc<LocalEngine>,
    code: Arc<Code>,
    user: Uuid,
    running: Arc<AtomicUsize>,
    dir: PathBuf,
    /// Why agents run without a memory limit here, if they do.
    unconfined: Option<String>,
    memory_cgroups: Option<PathBuf>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(parent) = &self.memory_cgroups {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// The agent binary `cargo test --workspace` builds (it is another package's, so this test finds it
/// beside its own executable's directory); `None`, with why, where it is not built.
fn agent_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .ok_or("the test executable has no profile directory")?;
    let agent = profile_dir.join("voltrun-agent");
    if agent.is_file() {
        Ok(agent)
    } else {
        Err(format!(
            "the guest agent is not built at {} (cargo build -p voltrun-agent, or run the whole \
             workspace's tests)",
            agent.display()
        ))
    }
}

async fn setup(test: &str) -> Option<Setup> {
    setup_with(test, None).await
}

async fn setup_with(test: &str, parked: Option<Parked>) -> Option<Setup> {
    let agent = match agent_binary() {
        Ok(agent) => agent,
        Err(why) => {
            voltrun_test_support::skip(test, &why);
            return None;
        }
    };
    let dir =
        std::env::temp_dir().join(format!("vg-{}", &Uuid::new_v4().simple().to_string()[..12]));
    std::fs::create_dir_all(dir.join("sockets")).unwrap();
    let code = Arc::new(Code::default());
    let work_dir = dir.join("engine");
    let running = Arc::new(AtomicUsize::new(0));
    let cgroup_name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let (memory_cgroups, unconfined) = match memory_cgroup_parent(&cgroup_name) {
        Ok(parent) => (Some(parent), None),
        Err(why) => (None, Some(why)),
    };
    let launcher = HostAgents {
        agent,
        sockets: dir.join("sockets"),
        bootstraps: work_dir.join("runtime").join("bootstraps"),
        running: running.clone(),
        memory_cgroups: memory_cgroups.clone(),
        parked,
    };
    let config = LocalEngineConfig {
        work_dir,
        keep_alive: Duration::from_secs(600),
        max_concurrency_per_function: 4,
        memory_budget_mb: 4096,
        user_memory_mb: 4096,
        queue_timeout: Duration::from_secs(10),
        uid_base: 200_000,
        tmp_size_mb: 64,
        max_processes: 64,
        node: "test".into(),
        selection: None,
        code_gc_after: None,
    };
    let engine = LocalEngine::new(
        config,
        code.clone(),
        voltrun_engine::detect_runtimes(),
        Arc::new(GuestIsolation::new(Arc::new(launcher))),
    )
    .unwrap();
    Some(Setup {
        engine,
        code,
        user: Uuid::now_v7(),
        running,
        dir,
        unconfined,
        memory_cgroups,
    })
}

impl Setup {
    fn runtime(&self, family: &str) -> String {
        self.engine
            .runtimes()
            .iter()
            .find(|r| r.id.starts_with(family))
            .unwrap_or_else(|| panic!("no {family} runtime on this host"))
            .id
            .clone()
    }

    async fn deploy(
        &self,
        runtime: &str,
        file: &str,
        source: &str,
        handler: &str,
        timeout_s: i32,
    ) -> FunctionRecord {
        let now = voltrun_domain::now();
        let function = FunctionRecord {
            id: Uuid::now_v7(),
            user_id: self.user,
            name: format!("f-{}", &Uuid::new_v4().simple().to_string()[..8]),
            description: String::new(),
            runtime: runtime.into(),
            handler: handler.into(),
            code_sha256: hex::encode(Sha256::digest(source.as_bytes())),
            code_size_bytes: source.len() as i64,
            code_kind: CodeKind::Source,
            code_filename: Some(file.into()),
            memory_mb: 128,
            timeout_s,
            env_ciphertext: vec![],
            max_retries: 0,
            max_concurrency: None,
            min_instances: 0,
            log_format: Default::default(),
            log_level: None,
            layers: Vec::new(),
            version: 1,
            created_at: now,
            updated_at: now,
        };
        self.code
            .0
            .lock()
            .unwrap()
            .insert(function.code_sha256.clone(), source.as_bytes().to_vec());
        function
    }

    async fn invoke(
        &self,
        function: &FunctionRecord,
        event: serde_json::Value,
    ) -> InvocationResult {
        self.engine
            .invoke(Invocation {
                execution_id: Uuid::now_v7(),
                function: function.clone(),
                env: Default::default(),
                event,
            })
            .await
            .unwrap()
    }
}

fn lines(result: &InvocationResult) -> Vec<String> {
    result.logs.iter().map(|l| l.line.clone()).collect()
}

const PYTHON: &str = r#"
import os, sys, time
print("module loaded")

def handler(event, context):
    print("hello", event["name"], "from", context.function_name)
    print("to stderr", file=sys.stderr)
    return {"greeting": "hi " + event["name"], "request": context.aws_request_id,
            "task_root": os.environ["LAMBDA_TASK_ROOT"] == os.getcwd()}

def fail(event, context):
    raise ValueError("bad input")

def slow(event, context):
    print("going to sleep")
    time.sleep(30)

def crash(event, context):
    os._exit(3)
"#;

#[tokio::test]
async fn python_through_guest_instances_warm_reuse_errors_timeouts_and_crashes() {
    let Some(setup) =
        setup("python_through_guest_instances_warm_reuse_errors_timeouts_and_crashes").await
    else {
        return;
    };
    let runtime = setup.runtime("python");
    let ok = setup
        .deploy(&runtime, "app.py", PYTHON, "app.handler", 30)
        .await;

    let first = setup.invoke(&ok, serde_json::json!({"name": "ada"})).await;
    let outcome = &first.outcome;
    assert_eq!(
        outcome.status,
        ExecutionStatus::Succeeded,
        "{:?} {:?}",
        outcome.error,
        lines(&first)
    );
    let output = outcome.output.as_ref().unwrap();
    assert_eq!(output["greeting"], "hi ada");
    assert_eq!(output["task_root"], true);
    assert!(outcome.cold_start && outcome.init_duration_ms.is_some());
    let log = lines(&first);
    assert!(log[0].starts_with("START RequestId: "), "{log:?}");
    for expected in ["module loaded", "to stderr", "END RequestId: "] {
        assert!(
            log.iter().any(|l| l.starts_with(expected)),
            "no {expected:?} in {log:?}"
        );
    }
    assert!(
        log.iter().any(|l| l.starts_with("hello ada from f-")),
        "{log:?}"
    );
    let report = log.last().unwrap();
    assert!(
        report.starts_with("REPORT RequestId: ") && report.contains("Init Duration"),
        "{report}"
    );

    let second = setup.invoke(&ok, serde_json::json!({"name": "bob"})).await;
    assert_eq!(second.outcome.status, ExecutionStatus::Succeeded);
    assert!(!second.outcome.cold_start, "the warm guest was not reused");
    assert_eq!(second.outcome.instance_id, outcome.instance_id);
    assert!(
        !lines(&second).iter().any(|l| l == "module loaded"),
        "the module loaded again"
    );
    assert_eq!(setup.running.load(Ordering::SeqCst), 1);

    let fail = setup
        .deploy(&runtime, "app.py", PYTHON, "app.fail", 30)
        .await;
    let failed = setup.invoke(&fail, serde_json::json!({})).await;
    assert_eq!(failed.outcome.status, ExecutionStatus::Failed);
    let error = failed.outcome.error.as_ref().unwrap();
    assert_eq!(error.error_type, "Runtime.Unhandled");
    assert!(
        error.message.contains("ValueError: bad input"),
        "{}",
        error.message
    );
    assert!(
        lines(&failed).iter().any(|l| l.contains("Traceback")),
        "{:?}",
        lines(&failed)
    );

    let missing = setup
        .deploy(&runtime, "app.py", PYTHON, "app.nothing", 30)
        .await;
    let not_found = setup.invoke(&missing, serde_json::json!({})).await;
    assert_eq!(
        not_found.outcome.error.as_ref().unwrap().error_type,
        "Runtime.HandlerNotFound"
    );

    // The timeout ends the whole guest; the next invocation starts a new one.
    let slow = setup
        .deploy(&runtime, "app.py", PYTHON, "app.slow", 1)
        .await;
    let started = std::time::Instant::now();
    let timed_out = setup.invoke(&slow, serde_json::json!({})).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(timed_out.outcome.status, ExecutionStatus::TimedOut);
    assert_eq!(
        timed_out.outcome.error.as_ref().unwrap().error_type,
        "Sandbox.Timedout"
    );
    assert!(
        lines(&timed_out).iter().any(|l| l == "going to sleep"),
        "{:?}",
        lines(&timed_out)
    );
    let again = setup.invoke(&slow, serde_json::json!({})).await;
    assert!(again.outcome.cold_start);

    let crash = setup
        .deploy(&runtime, "app.py", PYTHON, "app.crash", 30)
        .await;
    let crashed = setup.invoke(&crash, serde_json::json!({})).await;
    assert_eq!(
        crashed.outcome.error.as_ref().unwrap().error_type,
        "Runtime.ExitError"
    );

    // Ended guests are gone: the warm ones left are `ok`, `fail` and `missing`'s (a handler that is
    // not found fails its invocations, not its instance).
    setup.engine.shutdown().await;
    assert_eq!(
        setup.running.load(Ordering::SeqCst),
        0,
        "guests outlived the engine"
    );
}

#[tokio::test]
async fn node_and_provided_through_guest_instances() {
    let Some(setup) = setup("node_and_provided_through_guest_instances").await else {
        return;
    };
    let node = setup.runtime("nodejs");
    let js = "exports.handler = async (event, context) => { console.log('node says', event.n); return { doubled: event.n * 2, fn: context.functionName }; };";
    let function = setup
        .deploy(&node, "index.js", js, "index.handler", 30)
        .await;
    let result = setup.invoke(&function, serde_json::json!({"n": 21})).await;
    assert_eq!(
        result.outcome.status,
        ExecutionStatus::Succeeded,
        "{:?} {:?}",
        result.outcome.error,
        lines(&result)
    );
    assert_eq!(result.outcome.output.as_ref().unwrap()["doubled"], 42);
    assert!(
        lines(&result).iter().any(|l| l.ends_with("node says 21")),
        "{:?}",
        lines(&result)
    );

    // A shell bootstrap speaking the Runtime API with curl-less bash: /dev/tcp.
    let bootstrap = r#"#!/bin/bash
set -eu
exec 3<>/dev/tcp/${AWS_LAMBDA_RUNTIME_API%:*}/${AWS_LAMBDA_RUNTIME_API#*:}
while true; do
  printf 'GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n' >&3
  id=""; length=0
  while IFS= read -r line <&3; do
    line=${line%$'\r'}
    [ -z "$line" ] && break
    case "${line,,}" in
      lambda-runtime-aws-request-id:*) id=${line#*: } ;;
      content-length:*) length=${line#*: } ;;
    esac
  done
  body=$(head -c "$length" <&3)
  echo "provided got $body"
  reply="{\"echo\":$body}"
  printf 'POST /2018-06-01/runtime/invocation/%s/response HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s' "$id" "${#reply}" "$reply" >&3
  while IFS= read -r line <&3; do line=${line%$'\r'}; [ -z "$line" ] && break; done
done
"#;
    let provided = setup
        .deploy("provided", "bootstrap", bootstrap, "unused", 30)
        .await;
    let echoed = setup.invoke(&provided, serde_json::json!({"k": 1})).await;
    assert_eq!(
        echoed.outcome.status,
        ExecutionStatus::Succeeded,
        "{:?} {:?}",
        echoed.outcome.error,
        lines(&echoed)
    );
    assert_eq!(echoed.outcome.output.as_ref().unwrap()["echo"]["k"], 1);
    assert!(
        lines(&echoed)
            .iter()
            .any(|l| l == r#"provided got {"k":1}"#),
        "{:?}",
        lines(&echoed)
    );
    setup.engine.shutdown().await;
    assert_eq!(setup.running.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_flood_of_output_is_capped_on_the_host_and_the_result_still_arrives() {
    let Some(setup) =
        setup("a_flood_of_output_is_capped_on_the_host_and_the_result_still_arrives").await
    else {
        return;
    };
    let runtime = setup.runtime("python");
    let source = "import sys\n\ndef handler(event, context):\n    line = 'x' * 99\n    for _ in range(200_000):\n        print(line)\n    sys.stdout.write('y' * 300_000 + '\\n')\n    return {'done': True}\n";
    let flood = setup
        .deploy(&runtime, "app.py", source, "app.handler", 60)
        .await;
    let result = setup.invoke(&flood, serde_json::json!({})).await;
    assert_eq!(
        result.outcome.status,
        ExecutionStatus::Succeeded,
        "{:?}",
        result.outcome.error
    );
    assert_eq!(result.outcome.output.as_ref().unwrap()["done"], true);
    // Each line counts its text and the per-line overhead, as the engine's cap does.
    let bytes: usize = result
        .logs
        .iter()
        .map(|l| l.line.len() + voltrun_runtime_api::output::LINE_OVERHEAD_BYTES)
        .sum();
    // 20 MB written; the host kept the engine's cap plus a line, then counted what it dropped.
    assert!(
        bytes < (4 << 20) + (128 << 10),
        "{bytes} bytes of logs kept"
    );
    assert!(bytes > 4 << 20, "{bytes} bytes of logs kept");
    assert!(
        result
            .logs
            .iter()
            .any(|l| l.line.contains("log lines dropped")),
        "no notice of the dropped lines"
    );
    assert!(
        result.logs.iter().all(|l| l.line.len() <= 64 << 10),
        "a line over 64 KiB was kept"
    );
    // The next invocation on the same guest starts with a clean slate.
    let again = setup.invoke(&flood, serde_json::json!({})).await;
    assert!(!again.outcome.cold_start);
    setup.engine.shutdown().await;
}

const MEASURED: &str = r#"
import time
print("before the block")

def handler(event, context):
    block = b"x" * (event["mb"] << 20)
    time.sleep(0.3)
    print("after the block")
    return len(block)
"#;

#[tokio::test]
async fn memory_peaks_out_of_memory_deaths_and_log_times_come_from_the_guest() {
    let Some(setup) =
        setup("memory_peaks_out_of_memory_deaths_and_log_times_come_from_the_guest").await
    else {
        return;
    };
    let runtime = setup.runtime("python");
    let function = setup
        .deploy(&runtime, "app.py", MEASURED, "app.handler", 30)
        .await;

    let started = chrono::Utc::now();
    let fed = setup.invoke(&function, serde_json::json!({"mb": 40})).await;
    assert_eq!(
        fed.outcome.status,
        ExecutionStatus::Succeeded,
        "{:?}",
        fed.outcome.error
    );
    let peak = fed
        .outcome
        .memory_peak_mb
        .expect("no memory peak for a guest instance");
    assert!((40..128).contains(&peak), "peak {peak} MB");
    // Each line carries the time the agent read it: the block's line came 0.3 s after the first.
    let stamp = |text: &str| {
        fed.logs
            .iter()
            .find(|l| l.line == text)
            .unwrap_or_else(|| panic!("no {text:?} in {:?}", lines(&fed)))
            .timestamp
    };
    let (before, after) = (stamp("before the block"), stamp("after the block"));
    assert!(
        before >= started - chrono::Duration::seconds(1),
        "{before} vs {started}"
    );
    assert!(
        after - before >= chrono::Duration::milliseconds(250),
        "{before} then {after}"
    );

    let Some(_) = &setup.memory_cgroups else {
        voltrun_test_support::skip(
            "memory_peaks_out_of_memory_deaths_and_log_times_come_from_the_guest (its out-of-memory \
             half)",
            &format!(
                "no memory cgroup for the stand-in guests: {}",
                setup.unconfined.as_deref().unwrap_or("")
            ),
        );
        return;
    };
    // 300 MiB in a 128 MB guest: its OOM killer ends the runtime, and the error says so.
    let starved = setup
        .invoke(&function, serde_json::json!({"mb": 300}))
        .await;
    assert_eq!(starved.outcome.status, ExecutionStatus::Failed);
    let error = starved.outcome.error.as_ref().unwrap();
    assert_eq!(error.error_type, "Runtime.OutOfMemory", "{}", error.message);
    // The guest is gone; the next invocation starts a new one that works.
    let again = setup.invoke(&function, serde_json::json!({"mb": 1})).await;
    assert_eq!(again.outcome.status, ExecutionStatus::Succeeded);
    assert!(again.outcome.cold_start);
    setup.engine.shutdown().await;
}

const RESUMABLE: &str = r#"
import os, time
print("module loaded")

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"pid": os.getpid()}
"#;

#[tokio::test]
async fn a_cold_start_that_finds_a_runtime_waiting_resumes_it_and_reports_a_restore() {
    let parked: Parked = Arc::default();
    let Some(setup) = setup_with(
        "a_cold_start_that_finds_a_runtime_waiting_resumes_it_and_reports_a_restore",
        Some(parked.clone()),
    )
    .await
    else {
        return;
    };
    let runtime = setup.runtime("python");
    let function = setup
        .deploy(&runtime, "app.py", RESUMABLE, "app.handler", 30)
        .await;

    // The first cold start boots (and, beside it, a runtime of this configuration is parked).
    let first = setup.invoke(&function, serde_json::json!({})).await;
    assert_eq!(
        first.outcome.status,
        ExecutionStatus::Succeeded,
        "{:?}",
        first.outcome.error
    );
    let log = lines(&first);
    assert!(log.iter().any(|l| l == "module loaded"), "{log:?}");
    assert!(log.last().unwrap().contains("\tInit Duration: "), "{log:?}");
    assert_eq!(parked.lock().unwrap().len(), 1);

    // Two at once: one takes the warm instance, the other is a cold start that finds the parked
    // runtime initialised and resumes it instead of starting one.
    let (a, b) = tokio::join!(
        setup.invoke(&function, serde_json::json!({"sleep": 0.5})),
        setup.invoke(&function, serde_json::json!({"sleep": 0.5})),
    );
    let second = if a.outcome.cold_start { &a } else { &b };
    assert!(second.outcome.cold_start, "no second instance");
    assert_eq!(
        second.outcome.status,
        ExecutionStatus::Succeeded,
        "{:?}",
        second.outcome.error
    );
    assert!(second.outcome.init_duration_ms.is_some());
    let log = lines(second);
    assert!(
        !log.iter().any(|l| l == "module loaded"),
        "initialised again: {log:?}"
    );
    let report = log.last().unwrap();
    assert!(
        report.contains("\tRestore Duration: ") && !report.contains("Init Duration"),
        "{report}"
    );
    assert!(
        parked.lock().unwrap().is_empty(),
        "the parked runtime was not used"
    );
    setup.engine.shutdown().await;
    assert_eq!(
        setup.running.load(Ordering::SeqCst),
        0,
        "guests outlived the engine"
    );
}
