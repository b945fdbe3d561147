//! Rows to records: each table's column list (as a macro, so that `concat!` builds whole statements
//! at compile time) and the mapping of its rows, for either database. A value read back outside
//! the range it was written in is [`StoreError::Corrupt`](crate::StoreError::Corrupt).

use sqlx::types::Json;
use voltrun_domain::execution::{
    AttemptRecord, ExecutionError, ExecutionRecord, ExecutionStatus, InvocationType, LogLine,
    LogStream,
};
use voltrun_domain::function::{
    CodeKind, FunctionRecord, LogFormat, LogLevel, parse_memory_mb, parse_timeout_s,
};
use voltrun_domain::layer::LayerRecord;
use voltrun_domain::user::User;

use crate::dialect::Columns;
use crate::store::corrupt;
use crate::{ApiKeyRecord, StoreResult};

macro_rules! user_cols {
    () => {
        "id, email, name, password_hash, created_at"
    };
}
macro_rules! function_cols {
    () => {
        "id, user_id, name, description, runtime, handler, code_sha256, code_size_bytes, code_kind, \
         code_filename, memory_mb, timeout_s, env_ciphertext, max_retries, max_concurrency, min_instances, version, \
         created_at, updated_at, log_format, log_level, layers"
    };
}
macro_rules! layer_cols {
    () => {
        "id, user_id, name, version, description, code_sha256, code_size_bytes, unzipped_bytes, created_at"
    };
}
macro_rules! execution_cols {
    () => {
        "id, user_id, function_id, function_version, status, invocation_type, input, output, error_type, \
         error_message, created_at, started_at, finished_at, duration_ms, init_duration_ms, memory_peak_mb, \
         cold_start, node, instance_id, logs_truncated, attempts"
    };
}
macro_rules! api_key_cols {
    () => {
        "id, user_id, name, prefix, key_hash, scopes, created_at, last_used_at"
    };
}
pub(crate) use {api_key_cols, execution_cols, function_cols, layer_cols, user_cols};

pub(crate) fn user(row: &impl Columns) -> StoreResult<User> {
    Ok(User {
        id: row.id("id")?,
        email: row.col("email")?,
        name: row.col("name")?,
        password_hash: row.col("password_hash")?,
        created_at: row.col("created_at")?,
    })
}

pub(crate) fn api_key(row: &impl Columns) -> StoreResult<ApiKeyRecord> {
    let scopes: String = row.col("scopes")?;
    Ok(ApiKeyRecord {
        id: row.id("id")?,
        user_id: row.id("user_id")?,
        name: row.col("name")?,
        prefix: row.col("prefix")?,
        key_hash: row.col("key_hash")?,
        scopes: scopes
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        created_at: row.col("created_at")?,
        last_used_at: row.col("last_used_at")?,
    })
}

pub(crate) fn function(row: &impl Columns) -> StoreResult<FunctionRecord> {
    let kind: String = row.col("code_kind")?;
    Ok(FunctionRecord {
        id: row.id("id")?,
        user_id: row.id("user_id")?,
        name: row.col("name")?,
        description: row.col("description")?,
        runtime: row.col("runtime")?,
        handler: row.col("handler")?,
        code_sha256: row.col("code_sha256")?,
        code_size_bytes: row.col("code_size_bytes")?,
        code_kind: CodeKind::parse(&kind).ok_or_else(|| corrupt("code kind", &kind))?,
        code_filename: row.col("code_filename")?,
        // Read back within the ranges they were written in, or the row is corrupt:
        // the engine relies on them (`FunctionRecord::memory_mib`, `timeout`).
        memory_mb: {
            let raw: i32 = row.col("memory_mb")?;
            parse_memory_mb(raw.into()).map_err(|_| corrupt("memory size", &raw.to_string()))?
        },
        timeout_s: {
            let raw: i32 = row.col("timeout_s")?;
            parse_timeout_s(raw.into()).map_err(|_| corrupt("timeout", &raw.to_string()))?
        },
        env_ciphertext: row.col("env_ciphertext")?,
        max_retries: row.col("max_retries")?,
        max_concurrency: row.col("max_concurrency")?,
        min_instances: row.col("min_instances")?,
        log_format: {
            let raw: String = row.col("log_format")?;
            LogFormat::parse(&raw).map_err(|_| corrupt("log format", &raw))?
        },
        log_level: {
            let raw: Option<String> = row.col("log_level")?;
            raw.map(|raw| LogLevel::parse(&raw).map_err(|_| corrupt("log level", &raw)))
                .transpose()?
        },
        layers: {
            let raw: String = row.col("layers")?;
            serde_json::from_str(&raw).map_err(|_| corrupt("layers", &raw))?
        },
        version: row.col("version")?,
        created_at: row.col("created_at")?,
        updated_at: row.col("updated_at")?,
    })
}

pub(crate) fn layer(row: &impl Columns) -> StoreResult<LayerRecord> {
    Ok(LayerRecord {
        id: row.id("id")?,
        user_id: row.id("user_id")?,
        name: row.col("name")?,
        version: row.col("version")?,
        description: row.col("description")?,
        code_sha256: row.col("code_sha256")?,
        code_size_bytes: row.col("code_size_bytes")?,
        unzipped_bytes: row.col("unzipped_bytes")?,
        created_at: row.col("created_at")?,
    })
}

pub(crate) fn execution(row: &impl Columns) -> StoreResult<ExecutionRecord> {
    let status: String = row.col("status")?;
    let invocation: String = row.col("invocation_type")?;
    let error_type: Option<String> = row.col("error_type")?;
    let error_message: Option<String> = row.col("error_message")?;
    let input: Json<serde_json::Value> = row.col("input")?;
    let output: Option<Json<serde_json::Value>> = row.col("output")?;
    Ok(ExecutionRecord {
        id: row.id("id")?,
        user_id: row.id("user_id")?,
        function_id: row.id("function_id")?,
        function_version: row.col("function_version")?,
        status: ExecutionStatus::parse(&status)
            .ok_or_else(|| corrupt("execution status", &status))?,
        invocation_type: InvocationType::parse(&invocation)
            .ok_or_else(|| corrupt("invocation type", &invocation))?,
        input: input.0,
        output: output.map(|j| j.0),
        error: error_type.map(|error_type| ExecutionError {
            error_type,
            message: error_message.unwrap_or_default(),
        }),
        created_at: row.col("created_at")?,
        started_at: row.col("started_at")?,
        finished_at: row.col("finished_at")?,
        duration_ms: row.col("duration_ms")?,
        init_duration_ms: row.col("init_duration_ms")?,
        memory_peak_mb: row.col("memory_peak_mb")?,
        cold_start: row.col("cold_start")?,
        node: row.col("node")?,
        instance_id: row.col("instance_id")?,
        logs_truncated: row.col("logs_truncated")?,
        attempts: row.col("attempts")?,
    })
}

/// A row of `execution_attempts` (all columns but `execution_id`).
pub(crate) fn attempt(row: &impl Columns) -> StoreResult<AttemptRecord> {
    let status: String = row.col("status")?;
    let error_type: Option<String> = row.col("error_type")?;
    let message: Option<String> = row.col("error_message")?;
    Ok(AttemptRecord {
        attempt: row.col("attempt")?,
        status: ExecutionStatus::parse(&status)
            .ok_or_else(|| corrupt("attempt status", &status))?,
        error: error_type.map(|error_type| ExecutionError {
            error_type,
            message: message.unwrap_or_default(),
        }),
        started_at: row.col("started_at")?,
        finished_at: row.col("finished_at")?,
        duration_ms: row.col("duration_ms")?,
    })
}

/// A row of `execution_logs` (`ts, stream, line`).
pub(crate) fn log_line(row: &impl Columns) -> StoreResult<LogLine> {
    let stream: String = row.col("stream")?;
    Ok(LogLine {
        timestamp: row.col("ts")?,
        stream: LogStream::parse(&stream).ok_or_else(|| corrupt("log stream", &stream))?,
        line: row.col("line")?,
    })
}
