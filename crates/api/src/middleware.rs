//! The one middleware every request passes: it assigns the request id, opens the tracing span that
//! carries it, renders error bodies in the API's format, logs the request line and records metrics.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::error::{ErrorBody, ErrorDetail, detail_for_status};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A client's request id is kept when it is short, printable ASCII; anything else is replaced, so
/// it cannot inject into logs.
fn client_request_id(req: &Request) -> Option<String> {
    let value = req.headers().get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let ok = !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| value.to_string())
}

pub async fn request_context(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = client_request_id(&req).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());

    let span =
        tracing::info_span!("request", request_id = %request_id, method = %method, path = %path);
    let mut response = next.run(req).instrument(span.clone()).await;

    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        response = render_error(response, &request_id);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let latency = started.elapsed();
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            latency_ms = latency.as_secs_f64() * 1000.0,
            "request"
        );
    });
    crate::metrics::record_request(method.as_str(), &route, status.as_u16(), latency);
    response
}

/// Gives an error response the API's JSON body. Responses from handlers carry their `ErrorDetail`;
/// others (the router's 404/405, a body-limit 413) get one derived from the status.
fn render_error(response: Response, request_id: &str) -> Response {
    let (mut parts, body) = response.into_parts();
    let detail = match parts.extensions.remove::<ErrorDetail>() {
        Some(detail) => detail,
        None if is_json(&parts.headers) => return Response::from_parts(parts, body),
        None => detail_for_status(parts.status),
    };
    let body = ErrorBody {
        error: detail,
        request_id: request_id.to_string(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    let rendered = (parts.status, axum::Json(body)).into_response();
    let (rendered_parts, rendered_body) = rendered.into_parts();
    parts.headers.extend(rendered_parts.headers);
    Response::from_parts(parts, Body::new(rendered_body))
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}
