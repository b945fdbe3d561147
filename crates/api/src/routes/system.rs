//! Operational routes: health, metrics, runtimes, the OpenAPI document and its docs page.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
use voltrun_engine::RuntimeInfo;

use crate::SharedState;
use crate::caller::Operator;
use crate::error::ApiError;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DatabaseHealth {
    /// `ok` or `unreachable`.
    pub status: &'static str,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Operator view only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EngineHealth {
    /// The isolation backend: `namespace`, `firecracker` or `none`.
    pub backend: String,
    /// Whether invocations can run now.
    pub ready: bool,
    /// What runs functions, or why nothing can. Operator view only: it names host paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Ways the isolation is weaker than it should be on this host. Operator view only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

/// Anyone may ask whether the service is up and which backends it runs; the rest (version, uptime,
/// the engine's detail and warnings, which name paths on the host and its weaknesses) is the
/// operator view, for a request with the metrics token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthResponse {
    /// `ok`, `degraded` (the engine cannot run functions, or runs them with weakened isolation; the
    /// operator view says why) or `unavailable` (no database).
    pub status: &'static str,
    pub database: DatabaseHealth,
    pub engine: EngineHealth,
    /// Operator view only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'static str>,
    /// Operator view only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<u64>,
}

const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Service health: 503 when the database cannot be reached. With `Authorization: Bearer
/// <METRICS_TOKEN>`, also the version, uptime, database latency and the engine's detail and warnings.
#[utoipa::path(get, path = "/health", tag = "system", security((), ("metrics_token" = [])),
    responses((status = 200, description = "The service is up (`ok`, or `degraded`)", body = HealthResponse),
        (status = 503, description = "The database cannot be reached (`unavailable`)", body = HealthResponse),
        (status = 401, description = "A token other than the metrics token, or a malformed Authorization header (`unauthorized`)", body = crate::ErrorBody)))]
pub async fn health(
    State(state): State<SharedState>,
    operator: Operator,
) -> (StatusCode, Json<HealthResponse>) {
    let started = Instant::now();
    let db_ok = matches!(
        tokio::time::timeout(DB_CHECK_TIMEOUT, state.store.ping()).await,
        Ok(Ok(()))
    );
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let engine = state.executions.engine().status();
    let (code, status) = match (db_ok, engine.ready) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (true, false) => (StatusCode::OK, "degraded"),
        (true, true) if !engine.warnings.is_empty() => (StatusCode::OK, "degraded"),
        (true, true) => (StatusCode::OK, "ok"),
    };
    let detailed = operator == Operator::Proven;
    let body = HealthResponse {
        status,
        database: DatabaseHealth {
            status: if db_ok { "ok" } else { "unreachable" },
            backend: state.store.backend(),
            latency_ms: detailed.then_some(latency_ms),
        },
        engine: EngineHealth {
            backend: engine.backend,
            ready: engine.ready,
            detail: detailed.then_some(engine.detail),
            warnings: detailed.then_some(engine.warnings),
        },
        version: detailed.then_some(env!("CARGO_PKG_VERSION")),
        uptime_s: detailed.then(|| state.started.elapsed().as_secs()),
    };
    (code, Json(body))
}

/// Prometheus metrics in the text exposition format. When the server has a `METRICS_TOKEN`, only
/// with `Authorization: Bearer <METRICS_TOKEN>`.
#[utoipa::path(get, path = "/metrics", tag = "system", security(("metrics_token" = [])),
    responses((status = 200, content_type = "text/plain", body = String),
        (status = 401, description = "The server has a metrics token, and the request did not present it (`unauthorized`)", body = crate::ErrorBody)))]
pub async fn metrics(State(state): State<SharedState>, operator: Operator) -> Response {
    if operator == Operator::Anonymous {
        return ApiError::Unauthorized(
            "metrics need Authorization: Bearer <the server's METRICS_TOKEN>".into(),
        )
        .into_response();
    }
    let stats = state.store.pool_stats();
    if let Ok(depth) = state.store.queued_executions().await {
        metrics::gauge!("voltrun_execution_queue_depth").set(depth as f64);
    }
    match crate::metrics::render(stats.size, stats.idle) {
        Some(mut text) => {
            crate::metrics::render_limiters(
                &mut text,
                &[
                    ("address", &state.address_limiter),
                    ("login_failures", &state.login_failures),
                ],
            );
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
        }
        None => ApiError::internal("another metrics recorder is installed in this process")
            .into_response(),
    }
}

/// The runtimes this server can run.
#[utoipa::path(get, path = "/api/runtimes", tag = "system", responses((status = 200, body = Vec<RuntimeInfo>)))]
pub async fn runtimes(State(state): State<SharedState>) -> Json<Vec<RuntimeInfo>> {
    Json(state.executions.engine().runtimes().to_vec())
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "system", responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::openapi_json().to_string(),
    )
        .into_response()
}

/// Interactive API documentation (Swagger UI, loaded by the browser from a CDN).
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
