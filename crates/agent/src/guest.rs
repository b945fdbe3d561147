//! The agent's work inside the guest: say hello on each host connection, start the runtime the host
//! asks for, serve it the Lambda Runtime API on 127.0.0.1, relay each invocation to it and its
//! result, errors and output lines back to the host.
//!
//! The runtime belongs to the agent, not to a connection: a host may detach (before a snapshot, whose
//! restore resets every vsock connection) and a later connection finds the runtime where it was,
//! initialised and waiting for its next invocation.
//!
//! The Runtime API here is the one the engine serves to the same bootstraps in the namespace backend
//! (`voltrun-runtime-api`: `invocation/next`, `…/response` with streamed responses and their error
//! trailers, `…/error`, `init/error`); it is served on the guest's own loopback because the runtime
//! cannot reach the host's.
//!
//! Ordering: an invocation's log lines are sent before its result. Before sending a result the agent
//! waits until the runtime's pipes are drained and the readers have forwarded what they read.
//!
//! One file on purpose (past 500 lines): the connection loop, the runtime it owns and the relay share
//! one piece of state, and the order of their steps is the protocol's.

use std::os::fd::AsFd;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use voltrun_runtime_api::output::{self, ReadProgress, drain};
use voltrun_runtime_api::{InitFailure, NextInvocation, RuntimeReply, RuntimeSignal};

use crate::protocol::{self, Message, ProtocolError, StartSpec, Stream, unix_now_ms};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("host connection: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the host sent {0} before starting a runtime")]
    NotStarted(&'static str),
}

/// Reads one output stream of the runtime and forwards it line by line, each stamped when read.
async fn forward_lines<R: AsyncRead + Unpin>(
    pipe: R,
    progress: Arc<ReadProgress>,
    stream: Stream,
    out: mpsc::Sender<Message>,
) {
    output::read_lines(pipe, progress, |line| {
        let out = out.clone();
        async move {
            let unix_ms = unix_now_ms();
            out.send(Message::Log {
                stream,
                unix_ms,
                line,
            })
            .await
            .is_ok()
        }
    })
    .await;
}

/// The running runtime: its process, its Runtime API and the channels into them. Outlives host
/// connections.
struct Runtime {
    child: tokio::process::Child,
    /// Listed in [`TRACKED`] while this lives.
    pid: u32,
    next: mpsc::Sender<NextInvocation>,
    signals: mpsc::Receiver<RuntimeSignal>,
    /// What the runtime has for the host, in order: log lines and results. Lines written while no
    /// host is connected wait here (and, once it is full, in the runtime's pipes).
    events: mpsc::Receiver<Message>,
    events_tx: mpsc::Sender<Message>,
    output: Arc<[Arc<ReadProgress>; 2]>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
    /// Set once the runtime has asked for its first invocation.
    init_ms: Option<u32>,
    /// The kernel's count of OOM kills when the current invocation began.
    oom_kills_before: u64,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        // From now on, init's reaper may reap it (tokio's own reaping of a killed child copes).
        tracked().retain(|&pid| pid != self.pid);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The processes the agent started and waits for itself (through tokio): init's reaper leaves them
/// alone, so that their exit status reaches their owner. Held while spawning, so that the reaper
/// never sees a new child before it is listed.
static TRACKED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn tracked() -> std::sync::MutexGuard<'static, Vec<u32>> {
    TRACKED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// As the guest's init: reaps the orphans the runtime leaves (daemons, double forks) whenever a child
/// exits, so that none stays a zombie for the life of the VM. Never touches the runtime itself.
pub async fn reap_orphans() {
    let Ok(mut exits) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
    else {
        eprintln!("voltrun-agent: cannot watch SIGCHLD; orphaned processes will not be reaped");
        return;
    };
    loop {
        // A signal may stand for several exits; a periodic pass catches any that raced with it.
        let _ = tokio::time::timeout(Duration::from_secs(1), exits.recv()).await;
        let tracked = tracked();
        for pid in voltrun_sandbox::guest::zombie_children() {
            if !tracked.contains(&pid) {
                let _ = voltrun_sandbox::guest::reap(pid);
            }
        }
    }
}

/// Starts the runtime: binds the Runtime API (port 0 picks a free one) and spawns the command with
/// exactly the given environment plus `AWS_LAMBDA_RUNTIME_API`.
async fn start_runtime(spec: StartSpec, pid1: bool) -> Result<Runtime, String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", spec.runtime_api_port))
        .await
        .map_err(|e| {
            format!(
                "binding the Runtime API on 127.0.0.1:{}: {e}",
                spec.runtime_api_port
            )
        })?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("reading the Runtime API's address: {e}"))?;
    let (next_tx, next_rx) = mpsc::channel(1);
    let (signal_tx, signals) = voltrun_runtime_api::signal_channel();
    let api = voltrun_runtime_api::router(next_rx, signal_tx);
    let mut tasks = vec![tokio::spawn(async move {
        let _ = voltrun_runtime_api::serve(listener, api).await;
    })];
    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| "the start request has an empty command".to_string())?;
    let mut command = tokio::process::Command::new(program);
    if pid1 {
        // In a guest the agent is root; the function's code is not. (On a host, for tests, the
        // runtime runs as the agent does.)
        voltrun_sandbox::guest::run_unprivileged(
            command.as_std_mut(),
            u64::from(spec.max_processes),
        );
    }
    let mut tracked = tracked();
    let mut child = command
        .args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
        .current_dir(if spec.cwd.is_empty() { "/" } else { &spec.cwd })
        // A pipe closed at once rather than /dev/null: the guest's /dev may not be mounted.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {program}: {e}"))?;
    let pid = child.id().unwrap_or(0);
    tracked.push(pid);
    drop(tracked);
    let (events_tx, events) = mpsc::channel(1024);
    let out = &events_tx;
    drop(child.stdin.take());
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let progress = |pipe: &dyn AsFd| ReadProgress::of(&pipe).map_err(|e| e.to_string());
    let output = Arc::new([progress(&stdout)?, progress(&stderr)?]);
    tasks.push(tokio::spawn(forward_lines(
        stdout,
        output[0].clone(),
        Stream::Stdout,
        out.clone(),
    )));
    tasks.push(tokio::spawn(forward_lines(
        stderr,
        output[1].clone(),
        Stream::Stderr,
        out.clone(),
    )));
    Ok(Runtime {
        child,
        pid,
        next: next_tx,
        signals,
        events,
        events_tx,
        output,
        tasks,
        started: Instant::now(),
        init_ms: None,
        oom_kills_before: oom_kills(),
    })
}

/// How many processes the kernel's OOM killer has killed since boot (`oom_kill` in `/proc/vmstat`).
/// In a guest the function's memory is the VM's, so a runtime that dies while this grows died of it.
fn oom_kills() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|vmstat| {
            vmstat
                .lines()
                .find_map(|line| line.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The runtime process's peak resident memory since the last [`reset_memory_peak`] (`VmHWM`).
fn memory_peak_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Starts a new peak for [`memory_peak_bytes`]: `5` in `clear_refs` resets `VmHWM` to the current
/// resident size.
fn reset_memory_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// The agent's state across host connections.
pub struct Agent {
    /// Whether the agent is the guest's init (and so may set the clock and must drop privileges).
    pid1: bool,
    runtime: Option<Runtime>,
}

/// How a connection ended, for the caller's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The host asked for the runtime to stop, or it exited: nothing is left running.
    Stopped,
    /// The host detached or went away; a runtime, if one was started, is kept for the next.
    Detached,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("pid1", &self.pid1)
            .field("runtime_pid", &self.runtime.as_ref().map(|r| r.pid))
            .field("runtime_ready", &self.runtime_ready())
            .finish()
    }
}

impl Agent {
    pub fn new(pid1: bool) -> Self {
        Self {
            pid1,
            runtime: None,
        }
    }

    /// Whether a runtime is initialised and waiting for an invocation.
    pub fn runtime_ready(&self) -> bool {
        self.runtime.as_ref().is_some_and(|r| r.init_ms.is_some())
    }

    /// Serves one host connection until the host sends `Shutdown` or `Detach`, or goes away. Never
    /// panics on what the host sends: a malformed frame ends the connection with an error (and keeps
    /// the runtime, as a lost connection does).
    pub async fn serve<S>(&mut self, stream: S) -> Result<Ended, AgentError>
    where
        S: AsyncRead + AsyncWrite + Send,
    {
        let (mut read, mut write) = tokio::io::split(stream);
        protocol::write_message(
            &mut write,
            &Message::Hello {
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                pid1: self.pid1,
                runtime_ready: self.runtime_ready(),
            },
        )
        .await?;
        // Frames from the host, read by a future of their own polled beside the session, so that a
        // frame is never cut off mid-read when the session waits on something else.
        let (host_tx, mut host) = mpsc::channel::<Result<Option<Message>, ProtocolError>>(16);
        let reads = async move {
            loop {
                let message = protocol::read_message(&mut read).await;
                let end = !matches!(message, Ok(Some(_)));
                if host_tx.send(message).await.is_err() || end {
                    return;
                }
            }
        };
        let session = self.session(&mut host, &mut write);
        tokio::pin!(reads, session);
        let mut reads_done = false;
        loop {
            tokio::select! {
                () = &mut reads, if !reads_done => reads_done = true,
                ended = &mut session => return ended,
            }
        }
    }

    async fn session<W: AsyncWrite + Unpin>(
        &mut self,
        host: &mut mpsc::Receiver<Result<Option<Message>, ProtocolError>>,
        write: &mut W,
    ) -> Result<Ended, AgentError> {
        // The host's clock may come first; then what to do with the runtime.
        let first = loop {
            let message = match host.recv().await {
                None | Some(Ok(None)) => return Ok(Ended::Detached),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Some(message))) => message,
            };
            let Message::Clock { unix_ms } = message else {
                break message;
            };
            if self.pid1
                && let Err(e) = voltrun_sandbox::guest::set_realtime_clock(unix_ms)
            {
                eprintln!("voltrun-agent: setting the clock: {e}");
            }
        };
        match first {
            Message::Shutdown => {
                self.runtime = None;
                return Ok(Ended::Stopped);
            }
            Message::Detach => return Ok(Ended::Detached),
            Message::Start(spec) => {
                // A runtime from an earlier connection that never became ready is replaced.
                self.runtime = None;
                match start_runtime(spec, self.pid1).await {
                    Ok(runtime) => self.runtime = Some(runtime),
                    Err(message) => {
                        let failure = Message::InitError {
                            error_type: "Runtime.InvalidEntrypoint".into(),
                            message,
                        };
                        protocol::write_message(write, &failure).await?;
                        return Ok(Ended::Stopped);
                    }
                }
            }
            Message::Resume { unix_ms } => {
                let Some(init_ms) = self.runtime.as_ref().and_then(|r| r.init_ms) else {
                    return Err(AgentError::NotStarted("resume"));
                };
                if self.pid1
                    && let Err(e) = voltrun_sandbox::guest::set_realtime_clock(unix_ms)
                {
                    eprintln!("voltrun-agent: setting the clock after a resume: {e}");
                }
                protocol::write_message(write, &Message::Ready { init_ms }).await?;
            }
            Message::Invoke { .. } => return Err(AgentError::NotStarted("an invocation")),
            _ => return Err(AgentError::NotStarted("an unexpected message")),
        }
        let Some(runtime) = self.runtime.as_mut() else {
            return Ok(Ended::Stopped);
        };
        let ended = relay(runtime, self.pid1, host, write).await;
        if matches!(ended, Ok(Ended::Stopped)) {
            self.runtime = None;
        }
        ended
    }
}

/// Carries invocations to a started runtime and what it produces back, until the connection ends
/// or the runtime does.
async fn relay<W: AsyncWrite + Unpin>(
    runtime: &mut Runtime,
    pid1: bool,
    host: &mut mpsc::Receiver<Result<Option<Message>, ProtocolError>>,
    write: &mut W,
) -> Result<Ended, AgentError> {
    loop {
        tokio::select! {
            message = host.recv() => match message {
                None | Some(Ok(None) | Ok(Some(Message::Detach))) => return Ok(Ended::Detached),
                Some(Ok(Some(Message::Shutdown))) => return Ok(Ended::Stopped),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Some(Message::Invoke { request_id, deadline_unix_ms, function_arn, event }))) => {
                    invoke(runtime, request_id, deadline_unix_ms, function_arn, event).await;
                }
                Some(Ok(Some(Message::Clock { unix_ms }))) => {
                    // A host may set a warm guest's clock again; nothing to tell the tenant.
                    if pid1 && let Err(e) = voltrun_sandbox::guest::set_realtime_clock(unix_ms)
                    {
                        eprintln!("voltrun-agent: setting the clock: {e}");
                    }
                }
                Some(Ok(Some(other))) => {
                    let note = Message::Log {
                        stream: Stream::Stderr,
                        unix_ms: unix_now_ms(),
                        line: format!("[voltrun-agent] ignored an unexpected message: {}", kind_name(&other)),
                    };
                    protocol::write_message(write, &note).await?;
                }
            },
            Some(event) = runtime.events.recv() => protocol::write_message(write, &event).await?,
            signal = runtime.signals.recv() => match signal {
                Some(RuntimeSignal::Ready) => {
                    let init_ms = u32::try_from(runtime.started.elapsed().as_millis()).unwrap_or(u32::MAX);
                    runtime.init_ms = Some(init_ms);
                    // The initialisation's lines belong before `Ready`: the host files what comes
                    // after it under the first invocation.
                    drain(&*runtime.output).await;
                    forward_pending(runtime, write).await?;
                    protocol::write_message(write, &Message::Ready { init_ms }).await?;
                }
                Some(RuntimeSignal::InitError(InitFailure { error_type, message })) => {
                    drain(&*runtime.output).await;
                    forward_pending(runtime, write).await?;
                    protocol::write_message(write, &Message::InitError { error_type, message }).await?;
                }
                None => {}
            },
            status = runtime.child.wait() => {
                let status = status.map_or_else(|e| format!("unknown ({e})"), |s| s.to_string());
                let out_of_memory = oom_kills() > runtime.oom_kills_before;
                // The readers see end-of-file now; give them a moment to forward the last lines.
                drain(&*runtime.output).await;
                for task in runtime.tasks.drain(1..) {
                    let _ = tokio::time::timeout(Duration::from_millis(200), task).await;
                }
                forward_pending(runtime, write).await?;
                protocol::write_message(write, &Message::Exited { status, out_of_memory }).await?;
                return Ok(Ended::Stopped);
            }
        }
    }
}

/// Hands one invocation to the runtime; its result follows, after its log lines, through the
/// runtime's events.
async fn invoke(
    runtime: &mut Runtime,
    request_id: String,
    deadline_unix_ms: i64,
    function_arn: String,
    event: Vec<u8>,
) {
    runtime.oom_kills_before = oom_kills();
    reset_memory_peak(runtime.pid);
    let (reply_tx, reply_rx) = oneshot::channel();
    let next = NextInvocation {
        request_id: request_id.clone(),
        deadline_unix_ms,
        function_arn,
        event: event.into(),
        reply: reply_tx,
    };
    if runtime.next.send(next).await.is_err() {
        return;
    }
    let out = runtime.events_tx.clone();
    let output = runtime.output.clone();
    let pid = runtime.pid;
    runtime.tasks.push(tokio::spawn(async move {
        let Ok(reply) = reply_rx.await else { return };
        drain(&*output).await;
        let message = match reply {
            RuntimeReply::Response(payload) => Message::Response {
                request_id,
                payload: payload.to_vec(),
            },
            RuntimeReply::Error {
                error_type,
                message,
            } => Message::Error {
                request_id,
                error_type,
                message,
            },
            RuntimeReply::ResponseTooLarge(size) => Message::ResponseTooLarge {
                request_id,
                size: size as u64,
            },
        };
        let usage = Message::Usage {
            memory_peak_bytes: memory_peak_bytes(pid),
        };
        if out.send(usage).await.is_ok() {
            let _ = out.send(message).await;
        }
    }));
}

/// Writes the runtime's queued events (its last lines) to the host.
async fn forward_pending<W: AsyncWrite + Unpin>(
    runtime: &mut Runtime,
    write: &mut W,
) -> Result<(), AgentError> {
    while let Ok(event) = runtime.events.try_recv() {
        protocol::write_message(write, &event).await?;
    }
    Ok(())
}

fn kind_name(message: &Message) -> &'static str {
    match message {
        Message::Hello { .. } => "hello",
        Message::Start(_) => "start",
        Message::Ready { .. } => "ready",
        Message::InitError { .. } => "init error",
        Message::Invoke { .. } => "invoke",
        Message::Response { .. } => "response",
        Message::Error { .. } => "error",
        Message::ResponseTooLarge { .. } => "response too large",
        Message::Log { .. } => "log",
        Message::Exited { .. } => "exited",
        Message::Shutdown => "shutdown",
        Message::Detach => "detach",
        Message::Resume { .. } => "resume",
        Message::Usage { .. } => "usage",
        Message::Clock { .. } => "clock",
    }
}
