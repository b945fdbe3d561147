//! The agent's work inside the guest, for one host connection: say hello, start the runtime the host
//! asks for, serve it the Lambda Runtime API on 127.0.0.1, relay each invocation to it and its
//! result, errors and output lines back to the host.
//!
//! The Runtime API here is the one the engine serves to the same bootstraps in the namespace backend
//! (`voltrun-runtime-api`: `invocation/next`, `…/response` with streamed responses and their error
//! trailers, `…/error`, `init/error`); it is served on the guest's own loopback because the runtime
//! cannot reach the host's.
//!
//! Ordering: an invocation's log lines are sent before its result. Before sending a result the agent
//! waits until the runtime's pipes are drained and the readers have forwarded what they read.

use std::os::fd::{AsRawFd, RawFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use voltrun_runtime_api::output::{self, drain};
use voltrun_runtime_api::{InitFailure, NextInvocation, RuntimeReply, RuntimeSignal};

use crate::protocol::{self, Message, ProtocolError, StartSpec, Stream};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("host connection: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the host sent {0} before starting a runtime")]
    NotStarted(&'static str),
}

/// Reads one output stream of the runtime and forwards it line by line.
async fn forward_lines<R: AsyncRead + Unpin>(pipe: R, stream: Stream, out: mpsc::Sender<Message>) {
    output::read_lines(pipe, |line| {
        let out = out.clone();
        async move { out.send(Message::Log { stream, line }).await.is_ok() }
    })
    .await;
}

/// The running runtime: its process, its Runtime API and the channels into them.
struct Runtime {
    child: tokio::process::Child,
    /// Listed in [`TRACKED`] while this lives.
    pid: u32,
    next: mpsc::Sender<NextInvocation>,
    signals: mpsc::UnboundedReceiver<RuntimeSignal>,
    output_fds: Arc<[RawFd]>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
async fn start_runtime(
    spec: StartSpec,
    out: &mpsc::Sender<Message>,
    pid1: bool,
) -> Result<Runtime, String> {
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
    let (signal_tx, signals) = mpsc::unbounded_channel();
    let api = voltrun_runtime_api::router(next_rx, signal_tx);
    let mut tasks = vec![tokio::spawn(async move {
        let _ = axum::serve(listener, api).await;
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
    drop(child.stdin.take());
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let output_fds: Arc<[RawFd]> = Arc::new([stdout.as_raw_fd(), stderr.as_raw_fd()]);
    tasks.push(tokio::spawn(forward_lines(
        stdout,
        Stream::Stdout,
        out.clone(),
    )));
    tasks.push(tokio::spawn(forward_lines(
        stderr,
        Stream::Stderr,
        out.clone(),
    )));
    Ok(Runtime {
        child,
        pid,
        next: next_tx,
        signals,
        output_fds,
        tasks,
    })
}

/// Serves one host connection until the host sends `Shutdown` or goes away. Never panics on what the
/// host sends: a malformed frame ends the connection with an error.
pub async fn serve<S>(stream: S, pid1: bool) -> Result<(), AgentError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut read, mut write) = tokio::io::split(stream);
    // One writer: log lines, results and signals leave in the order they are queued.
    let (out, mut queue) = mpsc::channel::<Message>(1024);
    let writer = tokio::spawn(async move {
        while let Some(message) = queue.recv().await {
            protocol::write_message(&mut write, &message).await?;
        }
        Ok::<(), ProtocolError>(())
    });
    let _ = out
        .send(Message::Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            pid1,
        })
        .await;
    let result = session(&mut read, &out, pid1).await;
    drop(out);
    // Let what is queued (the final `Exited`, a last result) reach the host.
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    result
}

async fn session<R: AsyncRead + Unpin>(
    read: &mut R,
    out: &mpsc::Sender<Message>,
    pid1: bool,
) -> Result<(), AgentError> {
    // Until `Start`, only `Shutdown` makes sense.
    let spec = match protocol::read_message(read).await? {
        None | Some(Message::Shutdown) => return Ok(()),
        Some(Message::Start(spec)) => spec,
        Some(Message::Invoke { .. }) => return Err(AgentError::NotStarted("an invocation")),
        Some(_) => return Err(AgentError::NotStarted("an unexpected message")),
    };
    let started = Instant::now();
    let mut runtime = match start_runtime(spec, out, pid1).await {
        Ok(runtime) => runtime,
        Err(message) => {
            let _ = out
                .send(Message::InitError {
                    error_type: "Runtime.InvalidEntrypoint".into(),
                    message,
                })
                .await;
            return Ok(());
        }
    };
    // Frames from the host, read by a task of their own so that reading is never cut mid-frame.
    let (host_tx, mut host) = mpsc::channel::<Result<Option<Message>, ProtocolError>>(16);
    let mut reads = Box::pin(async move {
        loop {
            let message = protocol::read_message(read).await;
            let end = !matches!(message, Ok(Some(_)));
            if host_tx.send(message).await.is_err() || end {
                return;
            }
        }
    });
    let mut reads_done = false;
    loop {
        tokio::select! {
            () = &mut reads, if !reads_done => reads_done = true,
            message = host.recv() => match message {
                None | Some(Ok(None) | Ok(Some(Message::Shutdown))) => return Ok(()),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Some(Message::Invoke { request_id, deadline_unix_ms, function_arn, event }))) => {
                    let (reply_tx, reply_rx) = oneshot::channel();
                    let next = NextInvocation { request_id: request_id.clone(), deadline_unix_ms, function_arn, event: event.into(), reply: reply_tx };
                    if runtime.next.send(next).await.is_err() {
                        continue;
                    }
                    let out = out.clone();
                    let fds = runtime.output_fds.clone();
                    runtime.tasks.push(tokio::spawn(async move {
                        let Ok(reply) = reply_rx.await else { return };
                        drain(&fds).await;
                        let message = match reply {
                            RuntimeReply::Response(payload) => Message::Response { request_id, payload: payload.to_vec() },
                            RuntimeReply::Error { error_type, message } => Message::Error { request_id, error_type, message },
                            RuntimeReply::ResponseTooLarge(size) => Message::ResponseTooLarge { request_id, size: size as u64 },
                        };
                        let _ = out.send(message).await;
                    }));
                }
                Some(Ok(Some(other))) => {
                    let _ = out.send(Message::Log {
                        stream: Stream::Stderr,
                        line: format!("[voltrun-agent] ignored an unexpected message: {:?}", kind_name(&other)),
                    }).await;
                }
            },
            signal = runtime.signals.recv() => match signal {
                Some(RuntimeSignal::Ready) => {
                    let init_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
                    let _ = out.send(Message::Ready { init_ms }).await;
                }
                Some(RuntimeSignal::InitError(InitFailure { error_type, message })) => {
                    drain(&runtime.output_fds).await;
                    let _ = out.send(Message::InitError { error_type, message }).await;
                }
                None => {}
            },
            status = runtime.child.wait() => {
                let status = status.map_or_else(|e| format!("unknown ({e})"), |s| s.to_string());
                // The readers see end-of-file now; give them a moment to forward the last lines.
                drain(&runtime.output_fds).await;
                for task in runtime.tasks.drain(1..) {
                    let _ = tokio::time::timeout(Duration::from_millis(200), task).await;
                }
                let _ = out.send(Message::Exited { status }).await;
                return Ok(());
            }
        }
    }
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
    }
}
