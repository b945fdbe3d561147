//! Prometheus metrics. One recorder per process (the `metrics` facade is global); every router in the
//! process reports into it, and `GET /metrics` renders it.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use voltrun_domain::execution::ExecutionStatus;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Seconds; dense below 10 ms, where API reads live.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub fn init() {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
            .ok()?
            .build_recorder();
        let handle = recorder.handle();
        // Fails only when another recorder is installed already (an embedding program's); then we
        // render what we can and say so at /metrics.
        metrics::set_global_recorder(recorder).ok()?;
        for status in ExecutionStatus::ALL {
            metrics::counter!("voltrun_executions_total", "status" => status.as_str()).absolute(0);
        }
        Some(handle)
    });
}

pub fn render(pool_size: u32, pool_idle: u32) -> Option<String> {
    metrics::gauge!("voltrun_db_pool_connections").set(f64::from(pool_size));
    metrics::gauge!("voltrun_db_pool_idle_connections").set(f64::from(pool_idle));
    HANDLE.get()?.as_ref().map(PrometheusHandle::render)
}

/// Appends how many keys each brute-force limiter tracks. These belong to one server's state, not to
/// the process, so they are written here rather than kept in the process-wide recorder, where
/// servers sharing a process (the tests) would overwrite each other's value.
pub fn render_limiters(text: &mut String, limiters: &[(&str, &voltrun_auth::RateLimiter)]) {
    use std::fmt::Write as _;
    let _ = writeln!(
        text,
        "# HELP voltrun_auth_limiter_keys Keys (addresses, accounts) a brute-force limiter tracks.\n\
         # TYPE voltrun_auth_limiter_keys gauge"
    );
    for (name, limiter) in limiters {
        let _ = writeln!(
            text,
            "voltrun_auth_limiter_keys{{limiter=\"{name}\"}} {}",
            limiter.tracked_keys()
        );
    }
}

pub fn record_request(method: &str, route: &str, status: u16, latency: Duration) {
    let labels = [
        ("method", method.to_string()),
        ("route", route.to_string()),
        ("status", status.to_string()),
    ];
    metrics::counter!("voltrun_http_requests_total", &labels).increment(1);
    metrics::histogram!("voltrun_http_request_duration_seconds", &labels)
        .record(latency.as_secs_f64());
}
