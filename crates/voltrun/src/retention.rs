//! Execution retention: a background task the server starts that deletes executions finished more
//! than `EXECUTION_RETENTION_DAYS` ago, with their logs and attempts, in bounded steps with a pause
//! between them, so a large backlog never becomes one long transaction nor holds SQLite's single
//! writer for long. Queued and running executions are never touched (see
//! [`Executions::prune_executions`](voltrun_storage::Executions::prune_executions)).

use std::sync::Arc;
use std::time::Duration;

use voltrun_storage::{Pruned, Store, StoreResult};

use crate::config::RetentionSettings;

/// Rows one statement deletes at most.
const BATCH: u32 = 1000;
/// The pause between statements: other writers take their turns in it.
const PAUSE: Duration = Duration::from_millis(50);

/// Deletes everything that finished more than `keep_days` days ago, step by step; returns the
/// totals.
pub async fn prune(store: &dyn Store, keep_days: u32) -> StoreResult<Pruned> {
    // Fixed for the whole run, so the set being pruned does not move under it.
    let before = voltrun_storage::now() - chrono::Duration::days(i64::from(keep_days));
    let mut total = Pruned::default();
    loop {
        let step = store.prune_executions(before, BATCH).await?;
        if step == Pruned::default() {
            return Ok(total);
        }
        total.log_lines += step.log_lines;
        total.executions += step.executions;
        tokio::time::sleep(PAUSE).await;
    }
}

/// Starts pruning every `settings.interval` (the first run at once); `None` when executions are
/// kept forever. Abort the handle to stop it.
pub fn start(
    store: Arc<dyn Store>,
    settings: RetentionSettings,
) -> Option<tokio::task::JoinHandle<()>> {
    let keep_days = settings.keep_days?;
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match prune(store.as_ref(), keep_days).await {
                Ok(Pruned {
                    log_lines: 0,
                    executions: 0,
                }) => {}
                Ok(pruned) => tracing::info!(
                    executions = pruned.executions,
                    log_lines = pruned.log_lines,
                    keep_days,
                    "pruned executions past their retention"
                ),
                // Tried again at the next tick; what was deleted so far stays deleted.
                Err(e) => tracing::warn!(error = %e, "pruning old executions failed"),
            }
        }
    }))
}
