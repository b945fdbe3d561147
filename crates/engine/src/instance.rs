//! One instance: one runtime process for one (function, version), isolated in a namespace sandbox
//! (served the Runtime API and read by this module) or in a microVM (through its guest agent, see
//! [`crate::microvm`]). It serves one invocation at a time and stays warm between them; a timeout, a
//! crash or an out-of-memory kill ends it.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use chrono::Utc;
use tokio::io::unix::AsyncFd;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use voltrun_domain::execution::{LogLine, LogStream};
use voltrun_runtime_api::output::{LineBudget, ReadProgress};
use voltrun_sandbox::{Sandbox, SandboxSpec, Spawner};

use crate::code_cache::CodeLease;
use crate::microvm::{GuestInstance, GuestLauncher, GuestSpec};
use crate::runtime_api::{self, InitFailure, NextInvocation, RuntimeReply, RuntimeSignal};
use crate::shares::MemoryShare;
use crate::uids::UidLease;

/// Output kept per invocation: the execution log cap, plus the line that crosses it (so storage sees
/// the overflow and flags the logs as truncated). The rest is dropped as it arrives.
const LOG_BUFFER_BYTES: usize = voltrun_domain::execution::LOG_CAP_BYTES
    + voltrun_runtime_api::output::MAX_LINE_BYTES
    + voltrun_runtime_api::output::LINE_OVERHEAD_BYTES;

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
/// Lambda's limit on initialisation.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an instance ended or an invocation did not complete normally.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The runtime reported an initialisation error (`init/error`).
    Init(InitFailure),
    /// The runtime process exited.
    Exited { status: String, out_of_memory: bool },
    /// Initialisation or the invocation ran past its deadline; the instance was killed.
    TimedOut,
    /// The sandbox could not be set up.
    Sandbox(String),
}

/// What one invocation produced.
#[derive(Debug)]
pub enum InvokeResult {
    Replied(RuntimeReply),
    Failed(Failure),
}

#[derive(Debug)]
pub struct Instance {
    pub id: String,
    /// The runtime identifier, for metrics.
    pub runtime: String,
    pub last_used: Instant,
    /// Set on a cold start, reported with the first invocation only.
    pub init_duration: Option<Duration>,
    body: Body,
    /// The instance's share of the host's memory budget, given back when it ends.
    _memory: Option<OwnedSemaphorePermit>,
    /// Its holds on the code and layers it mounts, given back when it ends (after `body`, for the
    /// same reason: the code cache may remove them once nobody holds them).
    code: Vec<CodeLease>,
    /// Its part of its user's share of the memory budget.
    share: Option<MemoryShare>,
}

/// What isolates the runtime.
#[derive(Debug)]
enum Body {
    Sandbox(SandboxedRuntime),
    Guest(GuestInstance),
}

impl Instance {
    /// Starts a namespace sandbox and waits until the runtime asks for its first invocation.
    pub async fn start(
        spawner: Arc<Spawner>,
        spec: SandboxSpec,
        runtime: String,
        memory: Option<OwnedSemaphorePermit>,
    ) -> Result<Self, (Failure, Vec<LogLine>)> {
        let started = Instant::now();
        let id = spec.name.clone();
        let body = Body::Sandbox(SandboxedRuntime::start(spawner, spec).await?);
        Ok(Self::ready(id, runtime, started, body, memory))
    }

    /// Launches a guest (a microVM) and starts the runtime in it.
    pub async fn start_guest(
        launcher: &dyn GuestLauncher,
        spec: GuestSpec,
        memory: Option<OwnedSemaphorePermit>,
    ) -> Result<Self, (Failure, Vec<LogLine>)> {
        let started = Instant::now();
        let (id, runtime) = (spec.name.clone(), spec.runtime.clone());
        let body = Body::Guest(GuestInstance::start(launcher, spec).await?);
        Ok(Self::ready(id, runtime, started, body, memory))
    }

    fn ready(
        id: String,
        runtime: String,
        started: Instant,
        body: Body,
        memory: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            id,
            runtime,
            last_used: Instant::now(),
            init_duration: Some(started.elapsed()),
            body,
            _memory: memory,
            code: Vec::new(),
            share: None,
        }
    }

    /// Keeps `leases` on the instance's code and layers for as long as the instance lives.
    pub fn holding_code(mut self, leases: impl IntoIterator<Item = Option<CodeLease>>) -> Self {
        self.code.extend(leases.into_iter().flatten());
        self
    }

    /// Keeps `share` of its user's memory for as long as the instance lives.
    pub fn holding_share(mut self, share: MemoryShare) -> Self {
        self.share = Some(share);
        self
    }

    /// The user whose function this instance runs, where it holds a share.
    pub fn user(&self) -> Option<uuid::Uuid> {
        self.share.as_ref().map(MemoryShare::user)
    }

    /// Keeps `lease` for as long as the instance lives.
    pub fn holding_uid(mut self, lease: UidLease) -> Self {
        if let Body::Sandbox(sandboxed) = &mut self.body {
            sandboxed.uid = Some(lease);
        }
        self
    }

    pub fn is_healthy(&self) -> bool {
        match &self.body {
            Body::Sandbox(s) => s.is_healthy(),
            Body::Guest(g) => g.is_healthy(),
        }
    }

    /// Whether the instance was restored from a snapshot of an initialised guest.
    pub fn restored(&self) -> bool {
        matches!(&self.body, Body::Guest(g) if g.restored())
    }

    /// The most memory the instance used since its last invocation began: a sandbox's cgroup peak,
    /// or the peak resident size of a microVM's runtime process as its agent measured it.
    pub fn memory_peak_mb(&self) -> Option<i64> {
        match &self.body {
            Body::Sandbox(s) => s.memory_peak_mb(),
            Body::Guest(g) => g.memory_peak_mb(),
        }
    }

    /// Runs one invocation. On a timeout the instance is killed (the whole process tree, or the
    /// whole VM) before this returns.
    pub async fn invoke(
        &mut self,
        request_id: &str,
        event: Bytes,
        timeout: Duration,
        function_arn: String,
    ) -> InvokeResult {
        let deadline =
            Utc::now() + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
        let deadline_unix_ms = deadline.timestamp_millis();
        let result = match &mut self.body {
            Body::Sandbox(s) => {
                s.invoke(request_id, event, deadline_unix_ms, timeout, function_arn)
                    .await
            }
            Body::Guest(g) => {
                g.invoke(request_id, event, deadline_unix_ms, timeout, &function_arn)
                    .await
            }
        };
        self.last_used = Instant::now();
        result
    }

    /// The log lines written since the last call.
    pub async fn finish_logs(&mut self) -> Vec<LogLine> {
        match &mut self.body {
            Body::Sandbox(s) => s.finish_logs().await,
            Body::Guest(g) => g.finish_logs(),
        }
    }

    /// Stops the instance: every process of it, its cgroup or its VM.
    pub async fn stop(self) {
        match self.body {
            Body::Sandbox(s) => s.stop().await,
            Body::Guest(g) => g.stop().await,
        }
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
    async fn start(
        spawner: Arc<Spawner>,
        spec: SandboxSpec,
    ) -> Result<Self, (Failure, Vec<LogLine>)> {
        let sandbox = tokio::task::spawn_blocking(move || spawner.spawn(spec))
            .await
            .map_err(|e| (Failure::Sandbox(e.to_string()), vec![]))?
            .map_err(|e| (Failure::Sandbox(e.to_string()), vec![]))?;
        let mut instance =
            Self::wire(sandbox).map_err(|e| (Failure::Sandbox(e.to_string()), vec![]))?;
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
        Err((failure, logs))
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

    fn is_healthy(&self) -> bool {
        self.healthy
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

    fn memory_peak_mb(&self) -> Option<i64> {
        self.sandbox
            .as_ref()
            .and_then(Sandbox::memory_peak_bytes)
            .map(|b| i64::try_from(b >> 20).unwrap_or(i64::MAX))
    }

    async fn invoke(
        &mut self,
        request_id: &str,
        event: Bytes,
        deadline_unix_ms: i64,
        timeout: Duration,
        function_arn: String,
    ) -> InvokeResult {
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
            request_id: request_id.to_string(),
            event,
            deadline_unix_ms,
            function_arn,
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
