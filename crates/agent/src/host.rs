//! The host's side of a session with one guest agent: connect through the VM's vsock socket, wait
//! for the agent's hello, start the runtime, run invocations one at a time and collect the log
//! lines that arrive meanwhile. The agent sends an invocation's log lines before its result, so the
//! lines taken after a result belong to that invocation.

use std::path::Path;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::protocol::{self, Message, ProtocolError, StartSpec, Stream};
use crate::vsock::{self, HandshakeError};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("agent protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The connection ended: the guest (or its agent) is gone.
    #[error("the agent closed the connection")]
    Closed,
    #[error("the agent did not {what} within {waited:?}")]
    Timeout {
        what: &'static str,
        waited: Duration,
    },
    #[error("unexpected message from the agent while waiting for {expected}: {got}")]
    Unexpected { expected: &'static str, got: String },
}

/// One line the runtime wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub stream: Stream,
    pub line: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// The runtime asked for its first invocation after `init_ms` milliseconds.
    Ready {
        init_ms: u32,
    },
    InitError {
        error_type: String,
        message: String,
    },
    Exited {
        status: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvokeOutcome {
    Response(Vec<u8>),
    Error {
        error_type: String,
        message: String,
    },
    TooLarge(u64),
    /// The runtime died during the invocation.
    Exited {
        status: String,
    },
}

/// Log bytes kept between two [`AgentSession::take_logs`] calls by default: the engine's cap on an
/// execution's logs (4 MiB) plus one maximal line, so the engine still sees the overflow.
pub const DEFAULT_LOG_BUFFER_BYTES: usize = (4 << 20) + (64 << 10);

#[derive(Debug)]
pub struct AgentSession {
    writer: OwnedWriteHalf,
    incoming: mpsc::Receiver<Result<Message, ProtocolError>>,
    reader: tokio::task::JoinHandle<()>,
    logs: Vec<LogEntry>,
    /// Bytes in `logs`; past `log_cap`, further lines are counted in `dropped_lines`, not kept: a
    /// function that prints without end cannot grow the host's memory.
    log_bytes: usize,
    log_cap: usize,
    dropped_lines: u64,
    agent_version: String,
    pid1: bool,
}

impl Drop for AgentSession {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl AgentSession {
    /// Connects to the agent on `port` through `uds` (the VM's vsock socket) and waits for its hello;
    /// everything within `timeout`.
    pub async fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<Self, SessionError> {
        let started = tokio::time::Instant::now();
        let stream = vsock::connect(uds, port, timeout).await?;
        let mut session = Self::over(stream);
        let left = timeout.saturating_sub(started.elapsed());
        match session.next("say hello", left).await? {
            Message::Hello {
                agent_version,
                pid1,
            } => {
                session.agent_version = agent_version;
                session.pid1 = pid1;
                Ok(session)
            }
            other => Err(unexpected("hello", &other)),
        }
    }

    fn over(stream: UnixStream) -> Self {
        let (mut read, writer) = stream.into_split();
        let (tx, incoming) = mpsc::channel(256);
        let reader = tokio::spawn(async move {
            loop {
                let message = protocol::read_message(&mut read).await;
                let end = !matches!(message, Ok(Some(_)));
                let item = match message {
                    Ok(Some(m)) => Ok(m),
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
                if tx.send(item).await.is_err() || end {
                    break;
                }
            }
        });
        Self {
            writer,
            incoming,
            reader,
            logs: Vec::new(),
            log_bytes: 0,
            log_cap: DEFAULT_LOG_BUFFER_BYTES,
            dropped_lines: 0,
            agent_version: String::new(),
            pid1: false,
        }
    }

    pub fn agent_version(&self) -> &str {
        &self.agent_version
    }

    /// Whether the agent runs as the guest's init (false when run on a host for tests).
    pub fn agent_is_pid1(&self) -> bool {
        self.pid1
    }

    /// The next message that is not a log line (log lines are kept for [`AgentSession::take_logs`]).
    async fn next(
        &mut self,
        what: &'static str,
        timeout: Duration,
    ) -> Result<Message, SessionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = tokio::time::timeout_at(deadline, self.incoming.recv())
                .await
                .map_err(|_| SessionError::Timeout {
                    what,
                    waited: timeout,
                })?;
            match received {
                None => return Err(SessionError::Closed),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Log { stream, line })) => self.keep_log(stream, line),
                Some(Ok(message)) => return Ok(message),
            }
        }
    }

    async fn send(&mut self, message: &Message) -> Result<(), SessionError> {
        protocol::write_message(&mut self.writer, message)
            .await
            .map_err(|e| match e {
                ProtocolError::Io(_) | ProtocolError::UnexpectedEof => SessionError::Closed,
                other => other.into(),
            })
    }

    /// Starts the runtime and waits (up to `timeout`) until it is ready or has failed.
    pub async fn start(
        &mut self,
        spec: StartSpec,
        timeout: Duration,
    ) -> Result<StartOutcome, SessionError> {
        self.send(&Message::Start(spec)).await?;
        match self.next("start the runtime", timeout).await? {
            Message::Ready { init_ms } => Ok(StartOutcome::Ready { init_ms }),
            Message::InitError {
                error_type,
                message,
            } => Ok(StartOutcome::InitError {
                error_type,
                message,
            }),
            Message::Exited { status } => Ok(StartOutcome::Exited { status }),
            other => Err(unexpected("ready", &other)),
        }
    }

    /// Runs one invocation; `timeout` is the function's. On a timeout the caller discards the VM.
    pub async fn invoke(
        &mut self,
        request_id: &str,
        event: Vec<u8>,
        deadline_unix_ms: i64,
        function_arn: &str,
        timeout: Duration,
    ) -> Result<InvokeOutcome, SessionError> {
        self.send(&Message::Invoke {
            request_id: request_id.to_string(),
            deadline_unix_ms,
            function_arn: function_arn.to_string(),
            event,
        })
        .await?;
        loop {
            let message = self.next("answer the invocation", timeout).await?;
            let outcome = match message {
                Message::Response {
                    request_id: id,
                    payload,
                } if id == request_id => InvokeOutcome::Response(payload),
                Message::Error {
                    request_id: id,
                    error_type,
                    message,
                } if id == request_id => InvokeOutcome::Error {
                    error_type,
                    message,
                },
                Message::ResponseTooLarge {
                    request_id: id,
                    size,
                } if id == request_id => InvokeOutcome::TooLarge(size),
                Message::Exited { status } => InvokeOutcome::Exited { status },
                // A late `Ready` (never expected) is harmless; anything else is a protocol error.
                Message::Ready { .. } => continue,
                other => return Err(unexpected("the invocation's result", &other)),
            };
            return Ok(outcome);
        }
    }

    /// Sets how many bytes of log lines are kept between two [`Self::take_logs`] calls.
    pub fn set_log_cap(&mut self, bytes: usize) {
        self.log_cap = bytes;
    }

    fn keep_log(&mut self, stream: Stream, line: String) {
        if self.log_bytes > self.log_cap {
            self.dropped_lines += 1;
            return;
        }
        self.log_bytes += line.len();
        self.logs.push(LogEntry { stream, line });
    }

    /// The log lines received since the last call; when lines were dropped over the cap, a last
    /// line says how many.
    pub fn take_logs(&mut self) -> Vec<LogEntry> {
        let mut logs = std::mem::take(&mut self.logs);
        self.log_bytes = 0;
        let dropped = std::mem::take(&mut self.dropped_lines);
        if dropped > 0 {
            logs.push(LogEntry {
                stream: Stream::Stderr,
                line: format!(
                    "[voltrun] {dropped} log lines dropped: the function wrote faster than they could be kept"
                ),
            });
        }
        logs
    }

    /// Asks the agent to stop the runtime, and closes the connection.
    pub async fn shutdown(mut self) {
        let _ = self.send(&Message::Shutdown).await;
    }
}

fn unexpected(expected: &'static str, got: &Message) -> SessionError {
    let mut got = format!("{got:?}");
    got.truncate(200);
    SessionError::Unexpected { expected, got }
}
