//! The bodies of the function routes: what a create or an update may say (every field as the client
//! sent it, parsed by the handlers), and what a function looks like in answers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use voltrun_domain::function::{CodeKind, EnvVars, FunctionRecord, LogFormat, LogLevel};

use crate::code::CodeInput;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "hello", "runtime": "provided", "handler": "function.handler",
    "code": {"source": "#!/bin/sh\necho hello\n", "filename": "bootstrap"},
}))]
pub struct CreateFunctionRequest {
    /// Unique among your functions: lower-case letters, digits and hyphens, 1–64, starting and
    /// ending with a letter or digit.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")]
    pub name: String,
    #[schema(max_length = 256)]
    pub description: Option<String>,
    /// One of `GET /api/runtimes`.
    pub runtime: String,
    /// `module.function`, e.g. `main.handler`.
    #[schema(
        pattern = "^[A-Za-z0-9_./-]+\\.[A-Za-z_$][A-Za-z0-9_$]*$",
        max_length = 128
    )]
    pub handler: String,
    pub code: CodeInput,
    /// 128–10240 (default 128).
    #[schema(minimum = 128, maximum = 10240)]
    pub memory_mb: Option<i64>,
    /// 1–900 (default 30).
    #[schema(minimum = 1, maximum = 900)]
    pub timeout_s: Option<i64>,
    /// Encrypted at rest; keys and values together at most 4 KiB.
    pub env: Option<EnvVars>,
    /// Retries of a failed asynchronous invocation, 0–2 (default 2).
    #[schema(minimum = 0, maximum = 2)]
    pub max_retries: Option<i64>,
    /// Reserved concurrency, 1–1000; 0 or absent: the server's default.
    #[schema(minimum = 0, maximum = 1000)]
    pub max_concurrency: Option<i64>,
    /// Instances kept warm, 0–10 (default 0).
    #[schema(minimum = 0, maximum = 10)]
    pub min_instances: Option<i64>,
    /// `text` (default) or `json`: Lambda's log formats. With `json`, the built-in runtimes' loggers
    /// (Python `logging`, Node.js `console`) write one JSON object per line, and
    /// `AWS_LAMBDA_LOG_FORMAT=JSON` tells any other runtime so.
    #[schema(pattern = "^(text|json)$")]
    pub log_format: Option<String>,
    /// The lowest level the runtime's logger keeps (`AWS_LAMBDA_LOG_LEVEL`): `trace`, `debug`,
    /// `info` (the default with `json`), `warn`, `error` or `fatal`. Only with `log_format` `json`, as
    /// Lambda's application log level.
    #[schema(pattern = "^(trace|debug|info|warn|error|fatal)$")]
    pub log_level: Option<String>,
    /// Layer versions merged at `/opt`, as `name:version` (at most 5, each layer once; a later one's
    /// files win): `python/` is on Python's module path, `nodejs/node_modules` on Node.js's
    /// `NODE_PATH`, `bin/` on `PATH`, as on Lambda.
    #[schema(max_items = 5)]
    pub layers: Option<Vec<String>>,
}

/// A partial update: only the fields present change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"description": "says hello", "timeout_s": 10}))]
pub struct UpdateFunctionRequest {
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")]
    pub name: Option<String>,
    #[schema(max_length = 256)]
    pub description: Option<String>,
    pub runtime: Option<String>,
    #[schema(
        pattern = "^[A-Za-z0-9_./-]+\\.[A-Za-z_$][A-Za-z0-9_$]*$",
        max_length = 128
    )]
    pub handler: Option<String>,
    pub code: Option<CodeInput>,
    #[schema(minimum = 128, maximum = 10240)]
    pub memory_mb: Option<i64>,
    #[schema(minimum = 1, maximum = 900)]
    pub timeout_s: Option<i64>,
    pub env: Option<EnvVars>,
    #[schema(minimum = 0, maximum = 2)]
    pub max_retries: Option<i64>,
    /// 0 resets to the server's default.
    #[schema(minimum = 0, maximum = 1000)]
    pub max_concurrency: Option<i64>,
    #[schema(minimum = 0, maximum = 10)]
    pub min_instances: Option<i64>,
    /// Switching to `text` drops the log level; switching to `json` without one takes `info`.
    #[schema(pattern = "^(text|json)$")]
    pub log_format: Option<String>,
    /// Needs the function's (resulting) `log_format` to be `json`.
    #[schema(pattern = "^(trace|debug|info|warn|error|fatal)$")]
    pub log_level: Option<String>,
    /// Replaces the function's layers (`[]` removes them all).
    #[schema(max_items = 5)]
    pub layers: Option<Vec<String>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FunctionResponse {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub runtime: String,
    pub handler: String,
    pub memory_mb: i32,
    pub timeout_s: i32,
    /// Present on single-function reads; omitted from lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvVars>,
    /// Retries of a failed asynchronous invocation.
    pub max_retries: i32,
    /// Reserved concurrency; `null`: the server's default.
    pub max_concurrency: Option<i32>,
    /// Instances kept warm.
    pub min_instances: i32,
    pub log_format: LogFormat,
    /// Set exactly when `log_format` is `json`.
    pub log_level: Option<LogLevel>,
    /// The layer versions merged at `/opt`, as `name:version`, in order.
    pub layers: Vec<String>,
    /// Increments on every code or configuration change.
    pub version: i64,
    pub code_sha256: String,
    pub code_size_bytes: i64,
    pub code_kind: CodeKind,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl FunctionResponse {
    pub(super) fn new(f: FunctionRecord, env: Option<EnvVars>) -> Self {
        Self {
            id: f.id,
            name: f.name,
            description: f.description,
            runtime: f.runtime,
            handler: f.handler,
            memory_mb: f.memory_mb,
            timeout_s: f.timeout_s,
            env,
            max_retries: f.max_retries,
            max_concurrency: f.max_concurrency,
            min_instances: f.min_instances,
            log_format: f.log_format,
            log_level: f.log_level,
            layers: f.layers.iter().map(|l| l.reference()).collect(),
            version: f.version,
            code_sha256: f.code_sha256,
            code_size_bytes: f.code_size_bytes,
            code_kind: f.code_kind,
            created_at: f.created_at,
            updated_at: f.updated_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CodeResponse {
    pub kind: CodeKind,
    pub sha256: String,
    /// For `source` code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// For `source` code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// For `zip` code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zip_base64: Option<String>,
}
