//! The scheduler's view of one instance: what a backend started, plus what the scheduler lent it
//! (its memory, its user's share, its holds on code and layers), given back when it ends.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use chrono::Utc;
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;
use voltrun_domain::execution::LogLine;

use super::outcome::Init;
use super::pool::Pooled;
use super::shares::MemoryShare;
use crate::code_cache::CodeLease;
use crate::isolation::{InvokeRequest, InvokeResult, RunningInstance};

#[derive(Debug)]
pub(crate) struct Instance {
    pub id: String,
    /// The runtime identifier, for metrics.
    pub runtime: String,
    pub last_used: Instant,
    /// Set on a cold start, reported with the first invocation only.
    pub init: Option<Init>,
    running: Box<dyn RunningInstance>,
    /// What the scheduler lent it; dropped after `running` has stopped (the code cache may remove
    /// code nobody holds, so the instance must be gone first).
    held: Held,
}

/// What an instance holds of the scheduler's.
#[derive(Debug)]
pub(crate) struct Held {
    /// Its part of the host's memory budget.
    pub _memory: OwnedSemaphorePermit,
    /// Its part of its user's share of the budget.
    pub share: MemoryShare,
    /// Its holds on the code and layers it mounts.
    pub _code: Vec<CodeLease>,
}

impl Instance {
    /// A started instance, `started` being when its cold start began.
    pub fn new(
        id: String,
        runtime: String,
        running: Box<dyn RunningInstance>,
        held: Held,
        started: Instant,
    ) -> Self {
        Self {
            id,
            runtime,
            last_used: Instant::now(),
            init: Some(Init {
                duration: started.elapsed(),
                restored: running.restored(),
            }),
            running,
            held,
        }
    }

    /// Runs one invocation; a timeout or a failure ends the instance before this returns.
    pub async fn invoke(
        &mut self,
        request_id: String,
        event: Bytes,
        timeout: Duration,
        function_arn: String,
    ) -> InvokeResult {
        let deadline =
            Utc::now() + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
        let result = self
            .running
            .invoke(InvokeRequest {
                request_id,
                event,
                deadline_unix_ms: deadline.timestamp_millis(),
                timeout,
                function_arn,
            })
            .await;
        self.last_used = Instant::now();
        result
    }

    pub async fn logs(&mut self) -> Vec<LogLine> {
        self.running.logs().await
    }

    pub fn memory_peak_mb(&self) -> Option<i64> {
        self.running.memory_peak_mb()
    }

    pub fn is_healthy(&self) -> bool {
        self.running.healthy()
    }

    /// Stops it, then gives back what it held.
    pub async fn stop(self) {
        self.running.stop().await;
        drop(self.held);
    }
}

impl Pooled for Instance {
    fn last_used(&self) -> Instant {
        self.last_used
    }

    fn user(&self) -> Uuid {
        self.held.share.user()
    }

    fn runtime(&self) -> &str {
        &self.runtime
    }
}
