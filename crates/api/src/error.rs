//! The API's one error type and its one mapping to HTTP. Handlers return `ApiError`; the response
//! carries the error as an extension, and the request middleware renders the JSON body (it knows the
//! request id). A 500 tells the client nothing internal; the cause is logged.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use voltrun_auth::RetryAfter;
use voltrun_domain::ValidationError;
use voltrun_storage::{Quota, QuotaExceeded, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("email or password is wrong")]
    InvalidCredentials,
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request body did not arrive within {0} s")]
    RequestTimeout(u64),
    #[error("too many uploads are in progress; retry shortly")]
    TooManyUploads,
    #[error("too many code downloads are in progress; retry shortly")]
    TooManyDownloads,
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error("too many requests; retry in {} s", .0.0)]
    RateLimited(RetryAfter),
    #[error("{0}")]
    EngineUnavailable(String),
    #[error("the server is overloaded; retry later")]
    Overloaded,
    /// The database did not answer; the cause is logged, not shown.
    #[error("the database is unavailable; retry shortly")]
    DatabaseUnavailable(String),
    #[error("too many passwords are being checked at once; retry in {} s", .0.0)]
    AuthBusy(RetryAfter),
    /// A per-user limit on what is stored (functions, code): 403, as retrying will not help.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The user's queue of asynchronous executions is full: 429, as it drains by itself.
    #[error("{0}")]
    QueueFull(String),
    /// A write failed for want of disk space; the cause is logged, the client told only that.
    #[error("the server is out of storage space; retry later")]
    StorageFull(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The `error` object of every error response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable, snake_case.
    pub code: String,
    pub message: String,
    /// The request field that failed validation, for 422s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    pub request_id: String,
}

impl ApiError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            Self::Forbidden { code, .. } => (StatusCode::FORBIDDEN, code),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::TooManyUploads => (StatusCode::SERVICE_UNAVAILABLE, "too_many_uploads"),
            Self::TooManyDownloads => (StatusCode::SERVICE_UNAVAILABLE, "too_many_downloads"),
            Self::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Self::EngineUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "engine_unavailable"),
            Self::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Self::DatabaseUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            Self::AuthBusy(_) => (StatusCode::SERVICE_UNAVAILABLE, "auth_busy"),
            Self::QuotaExceeded(_) => (StatusCode::FORBIDDEN, "quota_exceeded"),
            Self::QueueFull(_) => (StatusCode::TOO_MANY_REQUESTS, "queue_full"),
            Self::StorageFull(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_full"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Self::Conflict(format!("{what} already exists")),
            StoreError::InUse(by) => Self::Conflict(format!("it is still used by function {by}")),
            StoreError::Gone(what) => {
                Self::Conflict(format!("the {what} was deleted meanwhile; retry"))
            }
            _ if e.is_unavailable() => Self::DatabaseUnavailable(e.to_string()),
            StoreError::QuotaExceeded(q) => Self::from(q),
            StoreError::StorageFull(cause) => Self::StorageFull(cause.to_string()),
            StoreError::Corrupt(_)
            | StoreError::Database(_)
            | StoreError::Migration(_)
            | StoreError::UnsupportedUrl(_) => Self::Internal(e.to_string()),
        }
    }
}

/// The refusal, in words naming the limit, the use and the setting that raises it.
impl From<QuotaExceeded> for ApiError {
    fn from(q: QuotaExceeded) -> Self {
        let QuotaExceeded {
            quota,
            limit,
            used,
            requested,
        } = q;
        match quota {
            Quota::Functions => Self::QuotaExceeded(format!(
                "function quota exceeded: you have {used} functions and the limit is {limit} per user \
                 (QUOTA_FUNCTIONS_PER_USER); delete one first"
            )),
            Quota::CodeBytes => Self::QuotaExceeded(format!(
                "code storage quota exceeded: your functions' and layers' code takes {used} bytes, \
                 this code would add {requested}, and the limit is {limit} bytes per user \
                 (QUOTA_CODE_MB_PER_USER, each function's code and layer version counted whole)"
            )),
            Quota::LayerVersions => Self::QuotaExceeded(format!(
                "layer quota exceeded: you have {used} layer versions and the limit is {limit} \
                 per user; delete one first"
            )),
            Quota::QueuedExecutions => Self::QueueFull(format!(
                "your queue of asynchronous executions is full: {used} queued and the limit is \
                 {limit} per user (QUOTA_QUEUED_EXECUTIONS_PER_USER); retry once some have run"
            )),
        }
    }
}

/// How long a client whose queue is full is asked to wait: the dispatcher works through queues in
/// seconds, not minutes.
const QUEUE_FULL_RETRY_AFTER_S: u64 = 5;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            Self::Internal(cause) => {
                tracing::error!(error = %cause, "request failed");
                "internal server error".to_string()
            }
            Self::DatabaseUnavailable(cause) => {
                tracing::warn!(error = %cause, "the database is unavailable");
                self.to_string()
            }
            Self::StorageFull(cause) => {
                tracing::error!(error = %cause, "a write failed: storage is full");
                self.to_string()
            }
            other => other.to_string(),
        };
        let field = match &self {
            Self::Validation(v) => Some(v.field.to_string()),
            _ => None,
        };
        let mut response = status.into_response();
        if let Self::RateLimited(RetryAfter(secs)) | Self::AuthBusy(RetryAfter(secs)) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, Self::TooManyUploads | Self::TooManyDownloads) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, Self::QueueFull(_)) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(QUEUE_FULL_RETRY_AFTER_S),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(ErrorDetail {
            code: code.to_string(),
            message,
            field,
        });
        response
    }
}

/// A generic error for a response that arrived without one (the router's 404 and 405, say).
pub fn detail_for_status(status: StatusCode) -> ErrorDetail {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method_not_allowed", "method not allowed on this route")
        }
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported_media_type", "unsupported content type")
        }
        StatusCode::REQUEST_TIMEOUT => ("request_timeout", "request timed out"),
        s if s.is_server_error() => ("internal_error", "internal server error"),
        _ => ("bad_request", "bad request"),
    };
    ErrorDetail {
        code: code.into(),
        message: message.into(),
        field: None,
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
