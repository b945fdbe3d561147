//! The host's side of a session with one guest agent: connect through the VM's vsock socket, wait
//! for the agent's hello, start the runtime (or resume the one a guest restored from a snapshot
//! already has), run invocations one at a time and collect the log lines that arrive meanwhile. The
//! agent sends an invocation's log lines before its result, so the
//! lines taken after a result belong to that invocation.

use std::path::Path;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;
use voltrun_runtime_api::output::LineBudget;

use crate::protocol::{self, Message, ProtocolError, StartSpec, Stream, unix_now_ms};
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
    /// When the agent read it, in milliseconds since the Unix epoch.
    pub unix_ms: i64,
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
        out_of_memory: bool,
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
    /// The runtime died during the invocation (`out_of_memory`: the guest's OOM killer ran).
    Exited {
        status: String,
        out_of_memory: bool,
    },
}

/// Log bytes kept between two [`AgentSession::take_logs`] calls by default (each line counting
/// `LINE_OVERHEAD_BYTES` too): the engine's cap on an execution's logs (4 MiB) plus one maximal line,
/// so the engine still sees the overflow.
pub const DEFAULT_LOG_BUFFER_BYTES: usize = (4 << 20)
    + voltrun_runtime_api::output::MAX_LINE_BYTES
    + voltrun_runtime_api::output::LINE_OVERHEAD_BYTES;

#[derive(Debug)]
pub struct AgentSession {
    writer: OwnedWriteHalf,
    incoming: mpsc::Receiver<Result<Message, ProtocolError>>,
    reader: tokio::task::JoinHandle<()>,
    logs: Vec<LogEntry>,
    /// What `logs` holds; past `log_cap` (or the line cap), further lines are counted as dropped,
    /// not kept: a function that prints without end cannot grow the host's memory.
    log_budget: LineBudget,
    log_cap: usize,
    agent_version: String,
    pid1: bool,
    runtime_ready: bool,
    /// The runtime's peak resident memory during the last invocation, as the agent reported it.
    memory_peak_bytes: Option<u64>,
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
        Self::connect_paced(uds, port, timeout, vsock::RETRY_PAUSE).await
    }

    /// [`Self::connect`], pausing `pause` between handshake attempts ([`vsock::connect_paced`]).
    pub async fn connect_paced(
        uds: &Path,
        port: u32,
        timeout: Duration,
        pause: Duration,
    ) -> Result<Self, SessionError> {
        let started = tokio::time::Instant::now();
        let stream = vsock::connect_paced(uds, port, timeout, pause).await?;
        let mut session = Self::over(stream);
        let left = timeout.saturating_sub(started.elapsed());
        match session.next("say hello", left).await? {
            Message::Hello {
                agent_version,
                pid1,
                runtime_ready,
            } => {
                session.agent_version = agent_version;
                session.pid1 = pid1;
                session.runtime_ready = runtime_ready;
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
            log_budget: LineBudget::default(),
            log_cap: DEFAULT_LOG_BUFFER_BYTES,
            agent_version: String::new(),
            pid1: false,
            runtime_ready: false,
            memory_peak_bytes: None,
        }
    }

    pub fn agent_version(&self) -> &str {
        &self.agent_version
    }

    /// Whether the agent runs as the guest's init (false when run on a host for tests).
    pub fn agent_is_pid1(&self) -> bool {
        self.pid1
    }

    /// Whether the agent's hello said a runtime is already initialised and waiting (a guest restored
    /// from a snapshot): then [`Self::resume`] replaces [`Self::start`].
    pub fn runtime_ready(&self) -> bool {
        self.runtime_ready
    }

    /// The runtime's peak resident memory during the last invocation that returned a result.
    pub fn memory_peak_bytes(&self) -> Option<u64> {
        self.memory_peak_bytes
    }

    /// The next message that is not a log line (log lines are kept for [`AgentSession::take_logs`]).
    async fn next(
        &mut self,
        what: &'static str,
        timeout: Duration,
    ) -> Result<Message, SessionError> {
        self.next_by(what, tokio::time::Instant::now() + timeout, timeout)
            .await
    }

    /// [`Self::next`] until `deadline`; `waited` is what a timeout reports.
    async fn next_by(
        &mut self,
        what: &'static str,
        deadline: tokio::time::Instant,
        waited: Duration,
    ) -> Result<Message, SessionError> {
        let timeout = waited;
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
                Some(Ok(Message::Log {
                    stream,
                    unix_ms,
                    line,
                })) => self.keep_log(LogEntry {
                    stream,
                    unix_ms,
                    line,
                }),
                Some(Ok(Message::Usage { memory_peak_bytes })) => {
                    self.memory_peak_bytes = Some(memory_peak_bytes);
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
        self.send(&Message::Clock {
            unix_ms: unix_now_ms(),
        })
        .await?;
        self.send(&Message::Start(spec)).await?;
        self.ready("start the runtime", timeout).await
    }

    /// Carries on with the runtime the agent already has (see [`Self::runtime_ready`]), setting the
    /// guest's clock to the host's; waits (up to `timeout`) for the agent's `Ready`.
    pub async fn resume(&mut self, timeout: Duration) -> Result<StartOutcome, SessionError> {
        self.send(&Message::Resume {
            unix_ms: unix_now_ms(),
        })
        .await?;
        self.ready("resume the runtime", timeout).await
    }

    /// Leaves the runtime running in the guest and closes the connection once the agent has let it
    /// go (within `timeout`): before a snapshot, whose restore would reset the connection anyway.
    pub async fn detach(mut self, timeout: Duration) -> Result<(), SessionError> {
        self.send(&Message::Detach).await?;
        match self.next("let the connection go", timeout).await {
            Err(SessionError::Closed) => Ok(()),
            Err(e) => Err(e),
            Ok(other) => Err(unexpected("the connection to close", &other)),
        }
    }

    async fn ready(
        &mut self,
        what: &'static str,
        timeout: Duration,
    ) -> Result<StartOutcome, SessionError> {
        match self.next(what, timeout).await? {
            Message::Ready { init_ms } => Ok(StartOutcome::Ready { init_ms }),
            Message::InitError {
                error_type,
                message,
            } => Ok(StartOutcome::InitError {
                error_type,
                message,
            }),
            Message::Exited {
                status,
                out_of_memory,
            } => Ok(StartOutcome::Exited {
                status,
                out_of_memory,
            }),
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
        // One deadline for the whole invocation: a guest that stops reading cannot hold the send,
        // nor one that keeps sending `Ready` the wait for the result.
        let deadline = tokio::time::Instant::now() + timeout;
        let invoke = Message::Invoke {
            request_id: request_id.to_string(),
            deadline_unix_ms,
            function_arn: function_arn.to_string(),
            event,
        };
        // The guest's clock first: an emulated guest's drifts between invocations (by a third of a
        // second over a few seconds under load, measured), and its log lines carry it.
        let clock = Message::Clock {
            unix_ms: unix_now_ms(),
        };
        let sent = async {
            self.send(&clock).await?;
            self.send(&invoke).await
        };
        tokio::time::timeout_at(deadline, sent)
            .await
            .map_err(|_| SessionError::Timeout {
                what: "take the invocation",
                waited: timeout,
            })??;
        loop {
            let message = self
                .next_by("answer the invocation", deadline, timeout)
                .await?;
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
                Message::Exited {
                    status,
                    out_of_memory,
                } => InvokeOutcome::Exited {
                    status,
                    out_of_memory,
                },
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

    fn keep_log(&mut self, entry: LogEntry) {
        if self.log_budget.admit(&entry.line, self.log_cap) {
            self.logs.push(entry);
        }
    }

    /// The log lines received since the last call; when lines were dropped over the cap, a last
    /// line says how many.
    pub fn take_logs(&mut self) -> Vec<LogEntry> {
        let mut logs = std::mem::take(&mut self.logs);
        let dropped = self.log_budget.reset();
        if dropped > 0 {
            logs.push(LogEntry {
                stream: Stream::Stderr,
                unix_ms: unix_now_ms(),
                line: voltrun_runtime_api::output::dropped_lines_note(dropped),
            });
        }
        logs
    }

    /// Asks the agent to stop the runtime, and closes the connection; gives up after a second (a
    /// guest that does not read is ended by its VM's end anyway).
    pub async fn shutdown(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.send(&Message::Shutdown)).await;
    }
}

fn unexpected(expected: &'static str, got: &Message) -> SessionError {
    // The agent's text: cut on a character boundary, never inside one.
    let got: String = format!("{got:?}").chars().take(200).collect();
    SessionError::Unexpected { expected, got }
}
