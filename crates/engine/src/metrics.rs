//! Engine metrics: cold starts, init and invocation durations by runtime.

use std::time::Duration;

use voltrun_domain::execution::ExecutionStatus;

pub fn record(
    runtime: &str,
    cold: bool,
    init: Option<Duration>,
    duration: Duration,
    status: ExecutionStatus,
) {
    let runtime = runtime.to_string();
    if cold {
        metrics::counter!("voltrun_cold_starts_total", "runtime" => runtime.clone()).increment(1);
    }
    if let Some(init) = init {
        metrics::histogram!("voltrun_init_duration_seconds", "runtime" => runtime.clone())
            .record(init.as_secs_f64());
    }
    metrics::histogram!("voltrun_invocation_duration_seconds", "runtime" => runtime, "status" => status.as_str())
        .record(duration.as_secs_f64());
}

/// Instances by state, labelled by runtime: `idle` (warm, waiting) and `busy` (running an invocation).
pub fn instance_state(runtime: &str, state: &'static str, delta: f64) {
    metrics::gauge!("voltrun_instances", "runtime" => runtime.to_string(), "state" => state)
        .increment(delta);
}

/// A microVM cold start that tried a snapshot: `restored`, or `failed` (it booted instead).
pub fn snapshot_restore(outcome: &'static str) {
    metrics::counter!("voltrun_vm_snapshot_restores_total", "outcome" => outcome).increment(1);
}

/// A template VM's attempt at a snapshot of an initialised guest: `made` or `failed`.
pub fn snapshot_made(outcome: &'static str) {
    metrics::counter!("voltrun_vm_snapshots_total", "outcome" => outcome).increment(1);
}
