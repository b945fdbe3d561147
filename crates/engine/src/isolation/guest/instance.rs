//! One guest serving one runtime: the engine's view of a guest instance, which talks to the guest's
//! agent over its session. A reply leaves the guest warm; every failure ends the whole guest.

use async_trait::async_trait;
use axum::body::Bytes;
use chrono::Utc;
use voltrun_agent::host::{InvokeOutcome, SessionError, StartOutcome};
use voltrun_agent::protocol::Stream;
use voltrun_domain::execution::{LogLine, LogStream};

use super::{Guest, GuestLauncher, GuestSpec};
use crate::isolation::{Failure, InvokeRequest, InvokeResult, RunningInstance, StartError};
use crate::runtime_api::{InitFailure, RuntimeReply};

/// One guest serving one runtime: the engine's view of a microVM instance.
#[derive(Debug)]
pub struct GuestInstance {
    /// `None` once the guest has ended (a timeout, a crash, a lost connection): the instance is
    /// then no longer healthy.
    guest: Option<Guest>,
    /// Lines taken from a guest that was stopped before the engine collected them.
    orphaned_logs: Vec<LogLine>,
    /// The guest was restored from a snapshot with its runtime initialised.
    restored: bool,
}

impl GuestInstance {
    /// Launches a guest and starts the runtime in it; ready when the runtime asks for its first
    /// invocation. On failure, returns what the runtime wrote meanwhile.
    pub async fn start(launcher: &dyn GuestLauncher, spec: GuestSpec) -> Result<Self, StartError> {
        let mut guest = launcher
            .launch(&spec)
            .await
            .map_err(|e| StartError::failed(Failure::Sandbox(e.to_string())))?;
        // A guest restored from a snapshot has its runtime initialised and waiting.
        let restored = guest.session.runtime_ready();
        let init_timeout = launcher.init_timeout();
        let outcome = if restored {
            guest.session.resume(init_timeout).await
        } else {
            guest
                .session
                .start(launcher.start_spec(&spec), init_timeout)
                .await
        };
        let failure = match outcome {
            Ok(StartOutcome::Ready { .. }) => {
                return Ok(Self {
                    guest: Some(guest),
                    orphaned_logs: Vec::new(),
                    restored,
                });
            }
            Ok(StartOutcome::InitError {
                error_type,
                message,
            }) => Failure::Init(InitFailure {
                error_type,
                message,
            }),
            Ok(StartOutcome::Exited {
                status,
                out_of_memory,
            }) => Failure::Exited {
                status,
                out_of_memory,
            },
            Err(SessionError::Timeout { .. }) => Failure::TimedOut,
            Err(e) => Failure::Sandbox(e.to_string()),
        };
        let logs = log_lines(guest.session.take_logs());
        guest.body.stop().await;
        Err(StartError::Failed { failure, logs })
    }

    /// Runs one invocation. A timeout or a broken connection ends the guest before this returns.
    async fn run(&mut self, request: InvokeRequest) -> InvokeResult {
        let Some(guest) = self.guest.as_mut() else {
            return InvokeResult::Failed(Failure::Sandbox("the microVM is gone".into()));
        };
        let outcome = guest
            .session
            .invoke(
                &request.request_id,
                request.event.to_vec(),
                request.deadline_unix_ms,
                &request.function_arn,
                request.timeout,
            )
            .await;
        // Replies leave the guest warm; every failure ends it.
        let failure = match outcome {
            Ok(InvokeOutcome::Response(payload)) => {
                return InvokeResult::Replied(RuntimeReply::Response(Bytes::from(payload)));
            }
            Ok(InvokeOutcome::Error {
                error_type,
                message,
            }) => {
                return InvokeResult::Replied(RuntimeReply::Error {
                    error_type,
                    message,
                });
            }
            Ok(InvokeOutcome::TooLarge(size)) => {
                return InvokeResult::Replied(RuntimeReply::ResponseTooLarge(
                    usize::try_from(size).unwrap_or(usize::MAX),
                ));
            }
            Ok(InvokeOutcome::Exited {
                status,
                out_of_memory,
            }) => Failure::Exited {
                status,
                out_of_memory,
            },
            Err(SessionError::Timeout { .. }) => Failure::TimedOut,
            Err(e) => Failure::Sandbox(format!("the microVM's agent: {e}")),
        };
        // The whole guest goes, with every process in it, before the caller hears of it.
        self.stop_guest().await;
        InvokeResult::Failed(failure)
    }

    /// The lines the runtime wrote since the last call. The agent sends an invocation's lines
    /// before its result, so they are all here once the result is.
    fn finish_logs(&mut self) -> Vec<LogLine> {
        let mut lines = std::mem::take(&mut self.orphaned_logs);
        if let Some(guest) = self.guest.as_mut() {
            lines.extend(log_lines(guest.session.take_logs()));
        }
        lines
    }

    async fn stop_guest(&mut self) {
        if let Some(mut guest) = self.guest.take() {
            self.orphaned_logs
                .extend(log_lines(guest.session.take_logs()));
            guest.session.shutdown().await;
            guest.body.stop().await;
        }
    }
}

#[async_trait]
impl RunningInstance for GuestInstance {
    async fn invoke(&mut self, request: InvokeRequest) -> InvokeResult {
        self.run(request).await
    }

    async fn logs(&mut self) -> Vec<LogLine> {
        self.finish_logs()
    }

    /// The runtime's peak resident memory during the last invocation, as the guest's agent saw it.
    fn memory_peak_mb(&self) -> Option<i64> {
        let bytes = self.guest.as_ref()?.session.memory_peak_bytes()?;
        Some(i64::try_from(bytes >> 20).unwrap_or(i64::MAX))
    }

    fn healthy(&self) -> bool {
        self.guest.is_some()
    }

    fn restored(&self) -> bool {
        self.restored
    }

    async fn stop(mut self: Box<Self>) {
        self.stop_guest().await;
    }
}

fn log_lines(entries: Vec<voltrun_agent::host::LogEntry>) -> Vec<LogLine> {
    entries
        .into_iter()
        .map(|entry| LogLine {
            // The guest's clock, set from the host's at boot and at every resume.
            timestamp: chrono::DateTime::from_timestamp_millis(entry.unix_ms)
                .unwrap_or_else(Utc::now),
            stream: match entry.stream {
                Stream::Stdout => LogStream::Stdout,
                Stream::Stderr => LogStream::Stderr,
            },
            line: entry.line,
        })
        .collect()
}
