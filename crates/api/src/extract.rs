//! Extractors whose rejections speak the API's error format: JSON bodies, UUID path segments and
//! query strings.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiError;

/// `axum::Json`, with malformed JSON → 400, wrong shapes → 422, wrong content type → 415 and
/// oversized bodies → 413.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON with Content-Type: application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("request body is larger than this route accepts".into())
            } else {
                ApiError::BadRequest {
                    code: "bad_request",
                    message: "could not read the request body".into(),
                }
            }
        })?;
        serde_json::from_slice::<T>(&bytes)
            .map(Self)
            .map_err(|e| classify(&bytes, &e))
    }
}

/// serde stops at the first problem, so `[1,2` into a struct reports a type error before the missing
/// bracket. On the error path only, re-read the body as untyped JSON to tell malformed JSON (400)
/// from JSON of the wrong shape (422).
fn classify(bytes: &[u8], e: &serde_json::Error) -> ApiError {
    let syntax_ok = serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
    if e.is_data() && syntax_ok {
        ApiError::Validation(voltrun_domain::ValidationError::new("body", e.to_string()))
    } else {
        let message = match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(syntax) => syntax.to_string(),
            Ok(_) => e.to_string(),
        };
        ApiError::BadRequest {
            code: "malformed_json",
            message: format!("request body is not valid JSON: {message}"),
        }
    }
}

/// A UUID path segment. A segment that is not a UUID names nothing, so it is a 404.
#[derive(Debug, Clone, Copy)]
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::NotFound("resource"))?;
        Uuid::parse_str(&raw)
            .map(Self)
            .map_err(|_| ApiError::NotFound("resource"))
    }
}

/// `axum::extract::Query`, with bad parameters → 422.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::Validation(voltrun_domain::ValidationError::new("query", e.body_text()))
            })
    }
}
