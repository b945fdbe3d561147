//! The namespace backend: each instance is one runtime process in a bubblewrap sandbox with its
//! own namespaces, cgroups, seccomp filter and host uid, served the Lambda Runtime API on the
//! sandbox's own loopback by this process, which also reads its output into log lines. Between
//! invocations the cgroup freezer stops it, as Lambda freezes an idle sandbox.
//!
//! One file on purpose (about 500 lines): starting a sandbox, serving its Runtime API and reading its
//! output are one life cycle.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use voltrun_domain::execution::{LogLine, LogStream};
use voltrun_runtime_api::output::{LineBudget, ReadProgress};
use voltrun_sandbox::{BindMount, Limits, Sandbox, SandboxSpec, Spawner};

use super::uids::{UidLease, UidPool};
use super::{
    Failure, INIT_TIMEOUT, InstanceSpec, InvokeRequest, InvokeResult, Isolation, RunningInstance,
    StartError,
};
use crate::EngineError;
use crate::lambda_env::{self, create_shared_dir};
use crate::runtime_api::{self, NextInvocation, RuntimeSignal};

/// Output kept per invocation: the execution log cap, plus the line that crosses it (so storage sees
/// the overflow and flags the logs as truncated). The rest is dropped as it arrives.
const LOG_BUFFER_BYTES: usize = voltrun_domain::execution::LOG_CAP_BYTES
    + voltrun_runtime_api::output::MAX_LINE_BYTES
    + voltrun_runtime_api::output::LINE_OVERHEAD_BYTES;

/// Memory that gives one full CPU share, as on Lambda (1,769 MB = one vCPU).
const MB_PER_CPU_SHARE: u64 = 1769;

/// The files a sandbox sees in `/etc`: the runtime's user (uid 1000 inside every sandbox) and
/// loopback names, and nothing of the host's.
const ETC_FILES: [(&str, &str); 3] = [
    (
        "passwd",
        "root:x:0:0:root:/root:/usr/sbin/nologin\nsbx_user:x:1000:1000:function:/tmp:/usr/sbin/nologin\n",
    ),
    ("group", "root:x:0:\nsbx_user:x:1000:\n"),
    ("hosts", "127.0.0.1 localhost\n::1 localhost\n"),
];

/// Lines read from the runtime's output since the last invocation ended.
#[derive(Debug, Default)]
struct LogBuffer {
    lines: Vec<LogLine>,
    budget: LineBudget,
}

type SharedLogs = Arc<std::sync::Mutex<LogBuffer>>;

fn lock(logs: &SharedLogs) -> std::sync::MutexGuard<'_, LogBuffer> {
    // The buffer is consistent after every push, so a poisoned lock is still usable.
    logs.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts namespace sandboxes, each as a host uid of its own.
#[derive(Debug)]
pub struct NamespaceIsolation {
    spawner: Arc<Spawner>,
    uids: Arc<UidPool>,
    /// Where the bootstraps are (mounted at `/var/runtime`).
    bootstraps: PathBuf,
    /// Where the sandboxes' `/etc` files are.
    etc: PathBuf,
    detail: String,
    warnings: Vec<String>,
}

impl NamespaceIsolation {
    /// Finds bubblewrap and the cgroup setup, compiles the seccomp filters and writes the files
    /// sandboxes mount from `work_dir`. Sandboxes run as host uids `uid_base .. uid_base +
    /// uid_count`, one per live instance. Fails (with why) where this host cannot run sandboxes.
    pub fn new(work_dir: &Path, uid_base: u32, uid_count: u32) -> Result<Self, EngineError> {
        let unavailable = EngineError::Unavailable;
        let is_root = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata("/proc/self").map_err(|e| unavailable(e.to_string()))?,
        ) == 0;
        if !is_root {
            return Err(unavailable(
                "the namespace sandbox needs root (to run sandboxes as unprivileged uids and set cgroup limits)".into(),
            ));
        }
        // Sandboxes mount code and runtime files from the work directory.
        create_shared_dir(work_dir).map_err(|e| unavailable(format!("work directory: {e}")))?;
        let etc = lambda_env::runtime_dir(work_dir).join("etc");
        write_etc(&etc).map_err(|e| unavailable(format!("writing the sandboxes' /etc: {e}")))?;
        let spawner = Spawner::new(work_dir).map_err(|e| unavailable(e.to_string()))?;
        let cgroups = spawner.cgroups();
        let warnings = if !cgroups.is_available() {
            vec![format!(
                "resource limits are degraded: {}; memory and process caps are per-process rlimits, CPU is not shared fairly",
                cgroups.describe()
            )]
        } else if !cgroups.can_freeze() {
            vec![format!(
                "idle instances are not frozen: {} has no freezer, so what a function leaves running keeps using CPU between invocations",
                cgroups.describe()
            )]
        } else {
            vec![]
        };
        let detail = format!("bubblewrap sandboxes; {}", cgroups.describe());
        if !cgroups.is_available() {
            tracing::warn!(detail, "sandbox limits are degraded");
        }
        Ok(Self {
            spawner: Arc::new(spawner),
            uids: UidPool::new(uid_base, uid_count),
            bootstraps: lambda_env::bootstraps_dir(work_dir),
            etc,
            detail,
            warnings,
        })
    }

    /// The sandbox an instance runs in: its code at `/var/task`, the bootstraps at `/var/runtime`,
    /// its layers at `/opt`, the runtime's own directories where the host has them, and its
    /// limits from its memory (CPU in proportion, as on Lambda).
    fn sandbox_spec(&self, spec: &InstanceSpec, host_uid: u32) -> SandboxSpec {
        let mut binds = vec![
            BindMount {
                source: spec.code_dir.clone(),
                dest: "/var/task".into(),
            },
            BindMount {
                source: self.bootstraps.clone(),
                dest: "/var/runtime".into(),
            },
        ];
        binds.extend(spec.opt_dir.clone().map(|opt| BindMount {
            source: opt,
            dest: "/opt".into(),
        }));
        for (etc, _) in ETC_FILES {
            binds.push(BindMount {
                source: self.etc.join(etc),
                dest: PathBuf::from("/etc").join(etc),
            });
        }
        binds.extend(spec.runtime.binds.iter().map(|dir| BindMount {
            source: dir.clone(),
            dest: dir.clone(),
        }));
        let memory_bytes = u64::from(spec.memory_mb) << 20;
        SandboxSpec {
            name: spec.name.clone(),
            command: spec.process.command.clone(),
            env: spec.process.env.clone(),
            binds,
            workdir: "/var/task".into(),
            tmp_size_bytes: spec.tmp_mb << 20,
            limits: Limits {
                memory_bytes,
                max_processes: spec.max_processes,
                cpu_shares: (1024 * (memory_bytes >> 20) / MB_PER_CPU_SHARE).max(2),
            },
            host_uid,
            listen_port: spec.runtime_api_port,
        }
    }
}

fn write_etc(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    create_shared_dir(dir)?;
    for (name, contents) in ETC_FILES {
        let path = dir.join(name);
        std::fs::write(&path, contents)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

#[async_trait]
impl Isolation for NamespaceIsolation {
    fn backend(&self) -> &'static str {
        "namespace"
    }

    fn describe(&self) -> String {
        self.detail.clone()
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Box<dyn RunningInstance>, StartError> {
        let uid = self
            .uids
            .lease()
            .ok_or(StartError::Exhausted("sandbox uid"))?;
        let sandbox = self.sandbox_spec(spec, uid.uid());
        let mut runtime = SandboxedRuntime::start(self.spawner.clone(), sandbox).await?;
        runtime.uid = Some(uid);
        Ok(Box::new(runtime))
    }
}

/// A runtime process in a namespace sandbox, with the Runtime API served on the sandbox's loopback.
#[derive(Debug)]
struct SandboxedRuntime {
    sandbox: Option<Sandbox>,
    next: mpsc::Sender<NextInvocation>,
    signals: mpsc::Receiver<RuntimeSignal>,
    logs: SharedLogs,
    exit: AsyncFd<OwnedFd>,
    output: [Arc<ReadProgress>; 2],
    tasks: Vec<tokio::task::JoinHandle<()>>,
    healthy: bool,
    /// Whether its processes are stopped by the cgroup freezer (between invocations).
    frozen: bool,
    /// The host uid the sandbox runs as: given back only once the sandbox is dead, so no other
    /// instance gets it while any process of this one lives.
    uid: Option<UidLease>,
}

/// Reads one output stream into log lines, keeping at most [`LOG_BUFFER_BYTES`] between two
/// invocations' ends and counting what it drops past that.
async fn read_lines(
    pipe: tokio::net::unix::pipe::Receiver,
    progress: Arc<ReadProgress>,
    stream: LogStream,
    out: SharedLogs,
) {
    voltrun_runtime_api::output::read_lines(pipe, progress, |line| {
        let mut buffer = lock(&out);
        if buffer.budget.admit(&line, LOG_BUFFER_BYTES) {
            buffer.lines.push(LogLine {
                timestamp: Utc::now(),
                stream,
                line,
            });
        }
        std::future::ready(true)
    })
    .await;
}

fn to_pipe(fd: impl Into<OwnedFd>) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::Receiver::from_owned_fd(fd.into())
}

impl SandboxedRuntime {
    /// Starts a sandbox and waits until the runtime asks for its first invocation.
    async fn start(spawner: Arc<Spawner>, spec: SandboxSpec) -> Result<Self, StartError> {
        let set_up =
            |e: &dyn std::fmt::Display| StartError::failed(Failure::Sandbox(e.to_string()));
        let sandbox = tokio::task::spawn_blocking(move || spawner.spawn(spec))
            .await
            .map_err(|e| set_up(&e))?
            .map_err(|e| set_up(&e))?;
        let mut instance = Self::wire(sandbox).map_err(|e| set_up(&e))?;
        let failure = tokio::select! {
            signal = instance.signals.recv() => match signal {
                Some(RuntimeSignal::Ready) => {
                    instance.freeze_while_idle();
                    return Ok(instance);
                }
                Some(RuntimeSignal::InitError(failure)) => Failure::Init(failure),
                None => Failure::Sandbox("runtime API stopped".into()),
            },
            () = wait_readable(&instance.exit) => instance.exit_failure(),
            () = tokio::time::sleep(INIT_TIMEOUT) => Failure::TimedOut,
        };
        let logs = instance.finish_logs().await;
        instance.stop().await;
        Err(StartError::Failed { failure, logs })
    }

    fn wire(mut sandbox: Sandbox) -> std::io::Result<Self> {
        let listener = sandbox
            .listener
            .take()
            .ok_or_else(|| std::io::Error::other("sandbox without listener"))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (next_tx, next_rx) = mpsc::channel(1);
        let (signal_tx, signal_rx) = runtime_api::signal_channel();
        let api = runtime_api::router(next_rx, signal_tx);
        let mut tasks = vec![tokio::spawn(async move {
            let _ = runtime_api::serve(listener, api).await;
        })];
        let logs = SharedLogs::default();
        let stdout = sandbox
            .child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let stderr = sandbox
            .child
            .stderr
            .take()
            .ok_or_else(|| std::io::Error::other("no stderr"))?;
        let output = [ReadProgress::of(&stdout)?, ReadProgress::of(&stderr)?];
        for (pipe, progress, stream) in [
            (to_pipe(stdout)?, &output[0], LogStream::Stdout),
            (to_pipe(stderr)?, &output[1], LogStream::Stderr),
        ] {
            let reader = read_lines(pipe, progress.clone(), stream, logs.clone());
            tasks.push(tokio::spawn(reader));
        }
        // The pidfd is an OwnedFd moved into the AsyncFd, which owns and closes it: the I/O-safety
        // concern behind the deprecation (registering a descriptor someone else may close) is absent.
        #[allow(deprecated)]
        let exit = AsyncFd::new(sandbox.exit_fd()?)?;
        Ok(Self {
            sandbox: Some(sandbox),
            next: next_tx,
            signals: signal_rx,
            logs,
            exit,
            output,
            tasks,
            healthy: true,
            frozen: false,
            uid: None,
        })
    }

    /// Stops every process of the instance until its next invocation, as Lambda freezes an idle
    /// sandbox: a thread or process the function left running gets no CPU while nobody invokes it.
    /// Where the host has no freezer they keep running (the sandbox reports itself degraded).
    fn freeze_while_idle(&mut self) {
        let Some(sandbox) = &self.sandbox else { return };
        match sandbox.freeze() {
            Ok(frozen) => self.frozen = frozen,
            Err(e) => tracing::warn!(error = %e, "could not freeze an idle instance"),
        }
    }

    fn exit_failure(&mut self) -> Failure {
        self.healthy = false;
        let out_of_memory = self.sandbox.as_ref().is_some_and(|s| s.oom_kills() > 0);
        let status = self
            .sandbox
            .as_mut()
            .and_then(Sandbox::try_exit_status)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown status".into());
        Failure::Exited {
            status,
            out_of_memory,
        }
    }

    async fn run(&mut self, request: InvokeRequest) -> InvokeResult {
        let timeout = request.timeout;
        if let Some(sandbox) = &self.sandbox {
            if self.frozen {
                if let Err(e) = sandbox.thaw() {
                    self.healthy = false;
                    return InvokeResult::Failed(Failure::Sandbox(format!(
                        "could not thaw the instance: {e}"
                    )));
                }
                self.frozen = false;
            }
            sandbox.reset_memory_peak();
        }
        let oom_before = self.sandbox.as_ref().map(Sandbox::oom_kills).unwrap_or(0);
        let (reply_tx, reply_rx) = oneshot::channel();
        let request = NextInvocation {
            request_id: request.request_id,
            event: request.event,
            deadline_unix_ms: request.deadline_unix_ms,
            function_arn: request.function_arn,
            reply: reply_tx,
        };
        if self.next.send(request).await.is_err() {
            self.healthy = false;
            return InvokeResult::Failed(Failure::Sandbox("runtime API is gone".into()));
        }
        let result = tokio::select! {
            reply = reply_rx => match reply {
                Ok(reply) => InvokeResult::Replied(reply),
                Err(_) => InvokeResult::Failed(Failure::Sandbox("runtime API dropped the invocation".into())),
            },
            () = wait_readable(&self.exit) => {
                let mut failure = self.exit_failure();
                if let Failure::Exited { out_of_memory, .. } = &mut failure {
                    *out_of_memory |= self.sandbox.as_ref().is_some_and(|s| s.oom_kills() > oom_before);
                }
                InvokeResult::Failed(failure)
            }
            () = tokio::time::sleep(timeout) => {
                self.healthy = false;
                self.kill().await;
                InvokeResult::Failed(Failure::TimedOut)
            }
        };
        if self.healthy {
            self.freeze_while_idle();
        }
        result
    }

    /// The log lines written since the last call. Waits (briefly) for output the runtime wrote before
    /// it answered but the readers have not consumed yet, so lines land on the right invocation.
    async fn finish_logs(&mut self) -> Vec<LogLine> {
        voltrun_runtime_api::output::drain(&self.output).await;
        let LogBuffer {
            mut lines,
            mut budget,
        } = std::mem::take(&mut *lock(&self.logs));
        let dropped = budget.reset();
        if dropped > 0 {
            lines.push(LogLine {
                timestamp: Utc::now(),
                stream: LogStream::Stderr,
                line: voltrun_runtime_api::output::dropped_lines_note(dropped),
            });
        }
        lines
    }

    async fn kill(&mut self) {
        let (sandbox, uid) = (self.sandbox.take(), self.uid.take());
        let _ = tokio::task::spawn_blocking(move || kill_then_release(sandbox, uid)).await;
    }

    /// Kills its processes, removes its cgroup, stops its tasks.
    async fn stop(mut self) {
        self.kill().await;
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

#[async_trait]
impl RunningInstance for SandboxedRuntime {
    async fn invoke(&mut self, request: InvokeRequest) -> InvokeResult {
        self.run(request).await
    }

    async fn logs(&mut self) -> Vec<LogLine> {
        self.finish_logs().await
    }

    /// The cgroup's peak since the invocation began.
    fn memory_peak_mb(&self) -> Option<i64> {
        self.sandbox
            .as_ref()
            .and_then(Sandbox::memory_peak_bytes)
            .map(|b| i64::try_from(b >> 20).unwrap_or(i64::MAX))
    }

    fn healthy(&self) -> bool {
        self.healthy
    }

    async fn stop(self: Box<Self>) {
        SandboxedRuntime::stop(*self).await;
    }
}

/// Kills a sandbox (blocking: it waits for the process and removes the cgroup), then gives back its
/// uid.
fn kill_then_release(sandbox: Option<Sandbox>, uid: Option<UidLease>) {
    if let Some(mut sandbox) = sandbox {
        sandbox.kill();
    }
    drop(uid);
}

impl Drop for SandboxedRuntime {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // An instance dropped rather than stopped (a task cancelled, a panic): the kill still runs
        // off the async worker threads where there is a runtime to take it.
        let (sandbox, uid) = (self.sandbox.take(), self.uid.take());
        if sandbox.is_none() && uid.is_none() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || kill_then_release(sandbox, uid));
            }
            Err(_) => kill_then_release(sandbox, uid),
        }
    }
}

async fn wait_readable(fd: &AsyncFd<OwnedFd>) {
    loop {
        match fd.readable().await {
            Ok(_guard) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn live_buffers_and_storage_count_a_line_alike() {
        assert_eq!(
            voltrun_runtime_api::output::LINE_OVERHEAD_BYTES,
            voltrun_domain::execution::LOG_LINE_OVERHEAD_BYTES
        );
    }
}
