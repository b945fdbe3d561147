//! Executions: one invocation of one function version, from `queued` to a terminal status.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl ExecutionStatus {
    pub const ALL: [Self; 6] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvocationType {
    Sync,
    Async,
}

impl InvocationType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Async => "async",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sync" => Some(Self::Sync),
            "async" => Some(Self::Async),
            _ => None,
        }
    }
}

/// Why an execution failed: a Lambda-style error type (`Runtime.Unhandled`, `Sandbox.Timedout`,
/// `Platform.NodeLost`, …) and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecutionError {
    #[serde(rename = "type")]
    pub error_type: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct ExecutionRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub function_id: Uuid,
    pub function_version: i64,
    pub status: ExecutionStatus,
    pub invocation_type: InvocationType,
    pub input: serde_json::Value,
    pub output: Option<serde_json::Value>,
    pub error: Option<ExecutionError>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub init_duration_ms: Option<i64>,
    pub memory_peak_mb: Option<i64>,
    pub cold_start: Option<bool>,
    pub node: Option<String>,
    pub instance_id: Option<String>,
    pub logs_truncated: bool,
    /// Attempts started so far (asynchronous invocations may retry).
    pub attempts: i32,
}

impl ExecutionRecord {
    /// A new execution of `function_id` at `function_version`, waiting to run.
    pub fn new_queued(
        user_id: Uuid,
        function_id: Uuid,
        function_version: i64,
        invocation_type: InvocationType,
        input: serde_json::Value,
        created_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            user_id,
            function_id,
            function_version,
            status: ExecutionStatus::Queued,
            invocation_type,
            input,
            output: None,
            error: None,
            created_at,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            init_duration_ms: None,
            memory_peak_mb: None,
            cold_start: None,
            node: None,
            instance_id: None,
            logs_truncated: false,
            attempts: 0,
        }
    }

    /// This execution, started now on `node`: what a synchronous invocation records before it runs.
    pub fn started(mut self, started_at: DateTime<Utc>, node: &str) -> Self {
        self.status = ExecutionStatus::Running;
        self.started_at = Some(started_at);
        self.node = Some(node.to_string());
        self.attempts += 1;
        self
    }

    /// The record as storing `outcome` (and logs, truncated or not) leaves it.
    pub fn finished(self, outcome: ExecutionOutcome, logs_truncated: bool) -> Self {
        Self {
            status: outcome.status,
            output: outcome.output,
            error: outcome.error,
            started_at: Some(outcome.started_at),
            finished_at: Some(outcome.finished_at),
            duration_ms: Some(outcome.duration_ms),
            init_duration_ms: outcome.init_duration_ms,
            memory_peak_mb: outcome.memory_peak_mb,
            cold_start: Some(outcome.cold_start),
            node: Some(outcome.node),
            instance_id: Some(outcome.instance_id),
            logs_truncated,
            ..self
        }
    }
}

/// One finished attempt of an asynchronous execution that was retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    pub attempt: i32,
    pub status: ExecutionStatus,
    pub error: Option<ExecutionError>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: i64,
}

/// What the engine reports when an execution ends.
#[derive(Debug, Clone)]
pub struct ExecutionOutcome {
    pub status: ExecutionStatus,
    pub output: Option<serde_json::Value>,
    pub error: Option<ExecutionError>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub init_duration_ms: Option<i64>,
    pub memory_peak_mb: Option<i64>,
    pub cold_start: bool,
    pub node: String,
    pub instance_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stdout" => Some(Self::Stdout),
            "stderr" => Some(Self::Stderr),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    pub timestamp: DateTime<Utc>,
    pub stream: LogStream,
    pub line: String,
}

/// The per-execution log cap, 4 MiB, then `truncated`: each line counts its text plus
/// [`LOG_LINE_OVERHEAD_BYTES`], which also caps the line count (131,072 empty lines).
pub const LOG_CAP_BYTES: usize = 4 * 1024 * 1024;

/// What a stored line costs beyond its text (a row's timestamp, stream and header), so that empty
/// lines are not free. Equal to `voltrun_runtime_api::output::LINE_OVERHEAD_BYTES` (the engine's tests
/// check), which the live buffers count with.
pub const LOG_LINE_OVERHEAD_BYTES: usize = 32;

/// What `line` costs against [`LOG_CAP_BYTES`].
pub fn log_line_cost(line: &str) -> usize {
    line.len() + LOG_LINE_OVERHEAD_BYTES
}
