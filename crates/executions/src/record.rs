//! Recording what the engine did: a synchronous execution's outcome and logs in one write (kept
//! trying in the background while the database is away, so the execution still ends terminal), and
//! the outcome recorded for a run the platform could not carry out.

use std::sync::Arc;
use std::time::Duration;

use voltrun_domain::execution::{ExecutionError, ExecutionOutcome, ExecutionStatus, LOG_CAP_BYTES};
use voltrun_engine::{Engine, EngineError, Invocation, InvocationResult};
use voltrun_storage::{Store, StoreError};

use crate::ExecutionsError;

/// The longest wait between two tries to store a record the database refused.
pub(crate) const MAX_SETTLE_BACKOFF: Duration = Duration::from_secs(10);

/// An outcome for a run the platform could not carry out.
pub(crate) fn platform_failure(error_type: &str, message: String) -> ExecutionOutcome {
    let now = voltrun_storage::now();
    ExecutionOutcome {
        status: ExecutionStatus::Failed,
        output: None,
        error: Some(ExecutionError {
            error_type: error_type.into(),
            message,
        }),
        started_at: now,
        finished_at: now,
        duration_ms: 0,
        init_duration_ms: None,
        memory_peak_mb: None,
        cold_start: false,
        node: String::new(),
        instance_id: String::new(),
    }
}

/// The outcome recorded when the engine refused or failed to run an execution.
pub(crate) fn engine_failure(e: &EngineError) -> ExecutionOutcome {
    let error_type = match e {
        EngineError::Unavailable(_) => "Platform.EngineUnavailable",
        EngineError::Overloaded => "Platform.Overloaded",
        EngineError::MemoryTooLarge(_) => "Platform.MemoryTooLarge",
        EngineError::StorageFull(_) => "Platform.StorageFull",
        EngineError::Internal(_) => "Platform.Internal",
    };
    platform_failure(error_type, e.to_string())
}

/// The outcome recorded when the database refused an execution's outcome and logs.
fn store_failure(e: &StoreError) -> ExecutionOutcome {
    let error_type = match e {
        StoreError::StorageFull(_) => "Platform.StorageFull",
        _ => "Platform.Internal",
    };
    platform_failure(error_type, format!("storing the outcome: {e}"))
}

/// Counts a finished execution by its status.
pub(crate) fn record_execution(status: ExecutionStatus) {
    metrics::counter!("voltrun_executions_total", "status" => status.as_str()).increment(1);
}

async fn finish(
    store: &dyn Store,
    id: uuid::Uuid,
    outcome: &ExecutionOutcome,
) -> Result<(), StoreError> {
    store.finish_execution(id, outcome).await?;
    record_execution(outcome.status);
    Ok(())
}

/// How a synchronous execution ended, as recorded.
#[derive(Debug, Clone)]
pub struct SyncCompletion {
    pub outcome: ExecutionOutcome,
    /// Whether its logs were cut at [`LOG_CAP_BYTES`].
    pub logs_truncated: bool,
}

/// Runs a synchronous execution, already recorded as running, to its end, and records the outcome
/// with its logs in one write. Platform failures are recorded on the execution (as `Platform.*`
/// errors) and returned, so the caller can answer with the matching status code. When the database
/// refuses the record, it is retried in the background until stored (so the execution still ends
/// terminal once the database is back) and the database's error is returned.
pub(crate) async fn run_sync(
    store: &Arc<dyn Store>,
    engine: &dyn Engine,
    invocation: Invocation,
) -> Result<SyncCompletion, ExecutionsError> {
    let id = invocation.execution_id;
    match engine.invoke(invocation).await {
        Ok(InvocationResult { outcome, logs }) => {
            match store
                .complete_execution(id, &outcome, &logs, LOG_CAP_BYTES)
                .await
            {
                Ok(logs_truncated) => {
                    record_execution(outcome.status);
                    Ok(SyncCompletion {
                        outcome,
                        logs_truncated,
                    })
                }
                Err(e) => {
                    let store = store.clone();
                    if matches!(e, StoreError::StorageFull(_)) {
                        // The outcome and logs do not fit (a full disk): record at least that the
                        // execution ended, a smaller write that may still fit, and keep trying that.
                        let ended = store_failure(&e);
                        if finish(store.as_ref(), id, &ended).await.is_err() {
                            store_in_background(id, move || {
                                let (store, ended) = (store.clone(), ended.clone());
                                async move { store.finish_execution(id, &ended).await }
                            });
                        }
                    } else {
                        // The database is away: store the whole record once it answers.
                        store_in_background(id, move || {
                            let (store, outcome, logs) =
                                (store.clone(), outcome.clone(), logs.clone());
                            async move {
                                store
                                    .complete_execution(id, &outcome, &logs, LOG_CAP_BYTES)
                                    .await
                                    .map(drop)
                            }
                        });
                    }
                    Err(e.into())
                }
            }
        }
        Err(e) => {
            let outcome = engine_failure(&e);
            if let Err(stored) = finish(store.as_ref(), id, &outcome).await {
                let store = store.clone();
                store_in_background(id, move || {
                    let (store, outcome) = (store.clone(), outcome.clone());
                    async move { store.finish_execution(id, &outcome).await }
                });
                return Err(stored.into());
            }
            Err(e.into())
        }
    }
}

/// Retries `write` with backoff (up to [`MAX_SETTLE_BACKOFF`]) until the database takes it.
fn store_in_background<F, Fut>(id: uuid::Uuid, write: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), StoreError>> + Send,
{
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        loop {
            tokio::time::sleep(backoff).await;
            match write().await {
                Ok(()) => {
                    tracing::info!(execution_id = %id, "stored an execution's record once the database answered");
                    return;
                }
                Err(e) => {
                    tracing::warn!(execution_id = %id, error = %e, "storing an execution's record failed; retrying");
                    backoff = (backoff * 2).min(MAX_SETTLE_BACKOFF);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_platform_refusal_has_its_platform_error_type() {
        let recorded = |e: EngineError| {
            let outcome = engine_failure(&e);
            assert_eq!(outcome.status, ExecutionStatus::Failed);
            outcome.error.map(|e| e.error_type)
        };
        assert_eq!(
            recorded(EngineError::Overloaded).as_deref(),
            Some("Platform.Overloaded")
        );
        assert_eq!(
            recorded(EngineError::Unavailable("no sandbox".into())).as_deref(),
            Some("Platform.EngineUnavailable")
        );
        assert_eq!(
            recorded(EngineError::MemoryTooLarge("4096 MB".into())).as_deref(),
            Some("Platform.MemoryTooLarge")
        );
        assert_eq!(
            recorded(EngineError::StorageFull("code".into())).as_deref(),
            Some("Platform.StorageFull")
        );
        assert_eq!(
            recorded(EngineError::Internal("bug".into())).as_deref(),
            Some("Platform.Internal")
        );
    }
}
