//! The server's response shapes, as this client reads them. Kept here rather than shared with the
//! server crate: the client depends on the public REST API only, and reads leniently (unknown fields
//! are ignored, missing optional ones default) so that newer servers keep working.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// One page of a list: `{"data": [...], "next_cursor": ...}`.
#[derive(Debug, Deserialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub id: String,
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /api/auth/login` and `/api/auth/refresh`.
#[derive(Deserialize)]
pub struct AuthResponse {
    pub user: User,
    pub access_token: String,
    pub refresh_token: String,
}

impl std::fmt::Debug for AuthResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthResponse")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Function {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub runtime: String,
    pub handler: String,
    pub memory_mb: i64,
    pub timeout_s: i64,
    /// Absent from servers that predate the setting.
    #[serde(default)]
    pub max_retries: Option<i64>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    pub version: i64,
    #[serde(default)]
    pub code_sha256: String,
    #[serde(default)]
    pub code_size_bytes: i64,
    #[serde(default)]
    pub code_kind: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
}

/// An execution's status. `Other` keeps the client working when a server adds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    #[serde(other)]
    Other,
}

impl ExecutionStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExecutionError {
    #[serde(rename = "type")]
    pub error_type: String,
    pub message: String,
}

/// `GET /api/executions/{id}` and a synchronous `POST /api/functions/{id}/execute`.
#[derive(Debug, Clone, Deserialize)]
pub struct Execution {
    pub id: String,
    pub function_id: String,
    #[serde(default)]
    pub function_version: i64,
    pub status: ExecutionStatus,
    /// The status as the server spelled it (for display, also when it is one this client lacks).
    #[serde(skip)]
    pub status_text: String,
    #[serde(default)]
    pub invocation_type: String,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<ExecutionError>,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<i64>,
    #[serde(default)]
    pub init_duration_ms: Option<i64>,
    #[serde(default)]
    pub memory_peak_mb: Option<i64>,
    #[serde(default)]
    pub cold_start: Option<bool>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub logs_truncated: bool,
}

impl Execution {
    /// Reads an execution from JSON, keeping the status text as sent.
    pub fn from_value(value: &Value) -> Result<Self, serde_json::Error> {
        let mut execution: Self = serde_json::from_value(value.clone())?;
        execution.status_text = value["status"].as_str().unwrap_or("unknown").to_string();
        Ok(execution)
    }
}

/// An asynchronous invocation's answer (202).
#[derive(Debug, Clone, Deserialize)]
pub struct Queued {
    pub execution_id: String,
    #[serde(default)]
    pub status: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub last_used_at: Option<String>,
}

/// `POST /api/keys`: the key's record and the whole key, shown once.
#[derive(Deserialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: ApiKey,
    pub key: String,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Whether `text` is a UUID (an id) rather than a name.
pub fn is_id(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn executions_read_the_servers_shape_and_unknown_statuses() {
        let value = json!({
            "id": "0190", "function_id": "0191", "function_version": 2, "status": "paused",
            "invocation_type": "sync", "input": {}, "output": null, "error": null,
            "created_at": "2025-01-01T00:00:00Z", "started_at": null, "finished_at": null,
            "duration_ms": null, "init_duration_ms": null, "memory_peak_mb": null,
            "cold_start": null, "node": null, "instance_id": null, "logs_truncated": false,
            "something_new": 1
        });
        let e = Execution::from_value(&value).unwrap();
        assert_eq!(e.status, ExecutionStatus::Other);
        assert_eq!(e.status_text, "paused");
        assert!(e.status.is_terminal());
        let done =
            Execution::from_value(&json!({"id": "a", "function_id": "b", "status": "timed_out"}))
                .unwrap();
        assert_eq!(done.status, ExecutionStatus::TimedOut);
    }
}
