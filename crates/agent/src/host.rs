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

#[derive(Debug)]
pub struct AgentSession {
    writer: OwnedWriteHalf,
    incoming: mpsc::Receiver<Result<Message, ProtocolError>>,
    reader: tokio::task::JoinHandle<()>,
    logs: Vec<LogEntry>,
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
                Some(Ok(Message::Log { stream, line })) => {
                    self.logs.push(LogEntry { stream, line })
                }
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

    /// The log lines received since the last call.
    pub fn take_logs(&mut self) -> Vec<LogEntry> {
        std::mem::take(&mut self.logs)
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
