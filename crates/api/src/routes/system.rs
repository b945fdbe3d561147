//! Operational routes: health, metrics, runtimes, the OpenAPI document and its docs page.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
use voltrun_engine::{EngineStatus, RuntimeInfo};

use crate::SharedState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DatabaseHealth {
    /// `ok` or `unreachable`.
    pub status: &'static str,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    pub latency_ms: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthResponse {
    /// `ok`, `degraded` (the engine cannot run functions, or runs them with weakened isolation; see
    /// `engine.warnings`) or `unavailable` (no database).
    pub status: &'static str,
    pub version: &'static str,
    pub uptime_s: u64,
    pub database: DatabaseHealth,
    pub engine: EngineStatus,
}

const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Service health. 503 when the database cannot be reached.
#[utoipa::path(get, path = "/health", tag = "system",
    responses((status = 200, body = HealthResponse), (status = 503, body = HealthResponse)))]
pub async fn health(State(state): State<SharedState>) -> (StatusCode, Json<HealthResponse>) {
    let started = Instant::now();
    let db_ok = matches!(
        tokio::time::timeout(DB_CHECK_TIMEOUT, state.store.ping()).await,
        Ok(Ok(()))
    );
    let database = DatabaseHealth {
        status: if db_ok { "ok" } else { "unreachable" },
        backend: state.store.backend(),
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
    };
    let engine = state.engine.status();
    let (code, status) = match (db_ok, engine.ready) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (true, false) => (StatusCode::OK, "degraded"),
        (true, true) if !engine.warnings.is_empty() => (StatusCode::OK, "degraded"),
        (true, true) => (StatusCode::OK, "ok"),
    };
    let body = HealthResponse {
        status,
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: state.started.elapsed().as_secs(),
        database,
        engine,
    };
    (code, Json(body))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<SharedState>) -> Response {
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
        None => crate::ApiError::internal("another metrics recorder is installed in this process")
            .into_response(),
    }
}

/// The runtimes this server can run.
#[utoipa::path(get, path = "/api/runtimes", tag = "system", responses((status = 200, body = Vec<RuntimeInfo>)))]
pub async fn runtimes(State(state): State<SharedState>) -> Json<Vec<RuntimeInfo>> {
    Json(state.engine.runtimes().to_vec())
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
