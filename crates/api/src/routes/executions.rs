//! `/api/functions/{id}/execute` and `/api/executions`: invoking functions through the engine and
//! reading back execution records and their logs.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use voltrun_domain::ValidationError;
use voltrun_domain::execution::{
    AttemptRecord, ExecutionError, ExecutionRecord, ExecutionStatus, InvocationType, LogLine,
};
use voltrun_engine::EngineError;
use voltrun_executions::{ExecutionsError, Invoked};
use voltrun_storage::ExecutionFilter;

use super::functions::owned_function;
use crate::caller::ExecuteAccess;
use crate::error::{ApiError, ApiResult};
use crate::error_docs::{
    InvokeUnavailable, NotFound, Overloaded, RequestTimeout, Unauthenticated, Unavailable,
    ValidationFailed,
};
use crate::extract::{ApiQuery, IdPath};
use crate::pagination::{PageParams, Paginated};
use crate::{ASYNC_EVENT_LIMIT, SharedState};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecuteParams {
    /// Run asynchronously: answer 202 at once (same as `X-Invocation-Type: async`).
    #[serde(rename = "async")]
    pub run_async: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExecutionResponse {
    /// UUIDv7: sorts by creation time.
    pub id: Uuid,
    pub function_id: Uuid,
    pub function_version: i64,
    pub status: ExecutionStatus,
    pub invocation_type: InvocationType,
    /// The event, any JSON value.
    pub input: serde_json::Value,
    /// What the function returned, any JSON value; `null` until it succeeds.
    pub output: Option<serde_json::Value>,
    pub error: Option<ExecutionError>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub init_duration_ms: Option<i64>,
    pub memory_peak_mb: Option<i64>,
    pub cold_start: Option<bool>,
    /// The node that ran it.
    pub node: Option<String>,
    /// The instance (sandbox) that ran it.
    pub instance_id: Option<String>,
    pub logs_truncated: bool,
    /// Attempts started (asynchronous executions retry failures up to the function's `max_retries`).
    pub attempts: i32,
    /// Each finished attempt of an asynchronous execution; on single-execution reads only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_history: Option<Vec<AttemptRecord>>,
}

impl From<ExecutionRecord> for ExecutionResponse {
    fn from(e: ExecutionRecord) -> Self {
        Self::new(e, None)
    }
}

impl ExecutionResponse {
    fn new(e: ExecutionRecord, attempt_history: Option<Vec<AttemptRecord>>) -> Self {
        Self {
            id: e.id,
            function_id: e.function_id,
            function_version: e.function_version,
            status: e.status,
            invocation_type: e.invocation_type,
            input: e.input,
            output: e.output,
            error: e.error,
            created_at: e.created_at,
            started_at: e.started_at,
            finished_at: e.finished_at,
            duration_ms: e.duration_ms,
            init_duration_ms: e.init_duration_ms,
            memory_peak_mb: e.memory_peak_mb,
            cold_start: e.cold_start,
            node: e.node,
            instance_id: e.instance_id,
            logs_truncated: e.logs_truncated,
            attempts: e.attempts,
            attempt_history,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueuedResponse {
    pub execution_id: Uuid,
    pub status: ExecutionStatus,
}

fn is_async(params: &ExecuteParams, headers: &HeaderMap) -> bool {
    params.run_async.unwrap_or(false)
        || headers
            .get("x-invocation-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("async") || v.eq_ignore_ascii_case("event"))
}

fn parse_event(headers: &HeaderMap, body: &[u8]) -> ApiResult<serde_json::Value> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let json = ct.to_str().is_ok_and(|v| v.starts_with("application/json"));
        if !json {
            return Err(ApiError::UnsupportedMediaType(
                "send the event as JSON with Content-Type: application/json".into(),
            ));
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        // No payload: the event is an empty object, as with Lambda.
        return Ok(serde_json::Value::Object(serde_json::Map::new()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
        code: "malformed_json",
        message: format!("the event is not valid JSON: {e}"),
    })
}

/// Invoke a function with a JSON event. Synchronous by default: answers with the finished execution
/// (a function error is still a 200 whose status is `failed`). Asynchronous with `?async=true` or
/// `X-Invocation-Type: async`: answers 202 with the queued execution's id.
#[utoipa::path(post, path = "/api/functions/{id}/execute", tag = "executions",
    params(("id" = Uuid, Path), ExecuteParams),
    request_body(content = Option<serde_json::Value>, description = "Any JSON event; none is `{}`"),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = ExecutionResponse), (status = 202, body = QueuedResponse),
        (status = 400, description = "The event is not valid JSON (`malformed_json`), or could not be read (`bad_request`)", body = crate::ErrorBody),
        (status = 401, response = Unauthenticated), (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 413, description = "The event is over 6 MiB, or over 1 MiB for an asynchronous invocation (`payload_too_large`)", body = crate::ErrorBody),
        (status = 415, description = "The event is sent with a content type other than `application/json` (`unsupported_media_type`)", body = crate::ErrorBody),
        (status = 422, response = ValidationFailed), (status = 429, response = Overloaded),
        (status = 503, response = InvokeUnavailable)))]
pub async fn execute(
    State(state): State<SharedState>,
    ExecuteAccess(user_id): ExecuteAccess,
    IdPath(id): IdPath,
    ApiQuery(params): ApiQuery<ExecuteParams>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let invocation_type = if is_async(&params, &headers) {
        InvocationType::Async
    } else {
        InvocationType::Sync
    };
    if invocation_type == InvocationType::Async && body.len() > ASYNC_EVENT_LIMIT {
        return Err(ApiError::PayloadTooLarge(format!(
            "asynchronous events are limited to {} KiB",
            ASYNC_EVENT_LIMIT >> 10
        )));
    }
    let event = parse_event(&headers, &body)?;
    let function = owned_function(&state, user_id, id).await?;
    let invoked = state
        .executions
        .invoke(user_id, function, event, invocation_type)
        .await
        .map_err(invoke_error)?;
    match invoked {
        Invoked::Queued(record) => {
            let queued = QueuedResponse {
                execution_id: record.id,
                status: ExecutionStatus::Queued,
            };
            Ok((StatusCode::ACCEPTED, Json(queued)).into_response())
        }
        // The answer is the record as just stored, built in memory rather than read back; a
        // synchronous execution has no attempt history (only the dispatcher's retries add one).
        Invoked::Finished(record) => {
            Ok(Json(ExecutionResponse::new(record, Some(Vec::new()))).into_response())
        }
    }
}

/// Why an invocation was refused, as the API answers it: the one mapping of the service's errors.
fn invoke_error(e: ExecutionsError) -> ApiError {
    match e {
        ExecutionsError::Engine(e) => match e {
            EngineError::Unavailable(reason) => ApiError::EngineUnavailable(reason),
            EngineError::Overloaded => ApiError::Overloaded,
            // The function's configuration asks for what this server never grants: a 422 on the
            // setting, not a 500.
            EngineError::MemoryTooLarge(why) => {
                ApiError::Validation(ValidationError::new("memory_mb", why))
            }
            EngineError::StorageFull(cause) => ApiError::StorageFull(cause),
            EngineError::Internal(cause) => ApiError::internal(cause),
        },
        ExecutionsError::Store(e) => e.into(),
        ExecutionsError::Environment(e) => ApiError::internal(e),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecutionListParams {
    /// Only executions of this function.
    #[param(value_type = Option<Uuid>)]
    pub function_id: Option<String>,
    /// Only executions in this status.
    #[param(value_type = Option<ExecutionStatus>)]
    pub status: Option<String>,
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^([A-Za-z0-9_-]{21}[AQgw])?$")]
    pub cursor: Option<String>,
}

/// List your executions (newest first).
#[utoipa::path(get, path = "/api/executions", tag = "executions", params(ExecutionListParams),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = Paginated<ExecutionResponse>), (status = 401, response = Unauthenticated),
        (status = 422, response = ValidationFailed), (status = 503, response = Unavailable)))]
pub async fn list(
    State(state): State<SharedState>,
    ExecuteAccess(user_id): ExecuteAccess,
    ApiQuery(params): ApiQuery<ExecutionListParams>,
) -> ApiResult<Json<Paginated<ExecutionResponse>>> {
    let function_id = params
        .function_id
        .as_deref()
        .map(|raw| {
            Uuid::parse_str(raw).map_err(|_| ValidationError::new("function_id", "is not a UUID"))
        })
        .transpose()?;
    let status = params
        .status
        .as_deref()
        .map(|raw| {
            ExecutionStatus::parse(raw).ok_or_else(|| {
                let all: Vec<&str> = ExecutionStatus::ALL.iter().map(|s| s.as_str()).collect();
                ValidationError::new("status", format!("must be one of {}", all.join(", ")))
            })
        })
        .transpose()?;
    let (page, limit) = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .to_page()?;
    let rows = state
        .store
        .list_executions(
            user_id,
            &ExecutionFilter {
                function_id,
                status,
            },
            page,
        )
        .await?;
    Ok(Json(Paginated::from_rows(
        rows,
        limit,
        |e| e.id,
        ExecutionResponse::from,
    )))
}

/// Get one execution.
#[utoipa::path(get, path = "/api/executions/{id}", tag = "executions", params(("id" = Uuid, Path)),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = ExecutionResponse), (status = 401, response = Unauthenticated),
        (status = 404, response = NotFound), (status = 503, response = Unavailable)))]
pub async fn get(
    State(state): State<SharedState>,
    ExecuteAccess(user_id): ExecuteAccess,
    IdPath(id): IdPath,
) -> ApiResult<Json<ExecutionResponse>> {
    let e = state
        .store
        .get_execution(user_id, id)
        .await?
        .ok_or(ApiError::NotFound("execution"))?;
    let attempts = state.store.execution_attempts(id).await?;
    Ok(Json(ExecutionResponse::new(e, Some(attempts))))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsParams {
    /// `json` (default) or `text`.
    #[param(pattern = "^(json|text)$")]
    pub format: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogsResponse {
    pub execution_id: Uuid,
    pub lines: Vec<LogLine>,
    /// True when the execution wrote more than the 4 MiB kept.
    pub truncated: bool,
}

/// Get an execution's logs: its stdout and stderr lines with timestamps.
#[utoipa::path(get, path = "/api/executions/{id}/logs", tag = "executions", params(("id" = Uuid, Path), LogsParams),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, description = "The lines as JSON, or with `format=text` as text",
            content((LogsResponse = "application/json"), (String = "text/plain"))),
        (status = 401, response = Unauthenticated), (status = 404, response = NotFound),
        (status = 422, response = ValidationFailed), (status = 503, response = Unavailable)))]
pub async fn logs(
    State(state): State<SharedState>,
    ExecuteAccess(user_id): ExecuteAccess,
    IdPath(id): IdPath,
    ApiQuery(params): ApiQuery<LogsParams>,
) -> ApiResult<Response> {
    let text = match params.format.as_deref() {
        None | Some("json") => false,
        Some("text") => true,
        Some(_) => return Err(ValidationError::new("format", "must be json or text").into()),
    };
    let (lines, truncated) = state
        .store
        .execution_logs(user_id, id)
        .await?
        .ok_or(ApiError::NotFound("execution"))?;
    if text {
        let mut out = String::new();
        for l in &lines {
            out.push_str(&format!(
                "{} {} {}\n",
                l.timestamp
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                l.stream.as_str(),
                l.line
            ));
        }
        if truncated {
            out.push_str("[logs truncated]\n");
        }
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], out).into_response());
    }
    Ok(Json(LogsResponse {
        execution_id: id,
        lines,
        truncated,
    })
    .into_response())
}
