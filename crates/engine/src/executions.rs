//! Running recorded executions: the bookkeeping around [`Engine::invoke`] that every caller shares
//! (marking the record running, storing logs, finishing it), and the dispatcher that works through
//! asynchronous executions queued in the database, with retries and backoff.
//!
//! The database is the queue: an asynchronous execution is a `queued` row, so nothing is lost when the
//! server stops, and a later step can put a distributed queue behind the same interface.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use voltrun_domain::execution::{
    AttemptRecord, ExecutionError, ExecutionOutcome, ExecutionRecord, ExecutionStatus,
    LOG_CAP_BYTES,
};
use voltrun_domain::function::EnvVars;
use voltrun_storage::{Store, StoreError};

use crate::{Engine, EngineError, Invocation, InvocationResult};

fn storage(e: StoreError) -> EngineError {
    match e {
        StoreError::StorageFull(cause) => EngineError::StorageFull(format!("storage: {cause}")),
        other => EngineError::Internal(format!("storage: {other}")),
    }
}

/// An outcome for a run the platform could not carry out.
fn platform_failure(error_type: &str, message: String) -> ExecutionOutcome {
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

fn engine_failure(e: &EngineError) -> ExecutionOutcome {
    let error_type = match e {
        EngineError::Unavailable(_) => "Platform.EngineUnavailable",
        EngineError::Overloaded => "Platform.Overloaded",
        EngineError::StorageFull(_) => "Platform.StorageFull",
        EngineError::Internal(_) => "Platform.Internal",
    };
    platform_failure(error_type, e.to_string())
}

async fn finish(
    store: &dyn Store,
    id: uuid::Uuid,
    outcome: &ExecutionOutcome,
) -> Result<(), EngineError> {
    store.finish_execution(id, outcome).await.map_err(storage)?;
    crate::metrics::record_execution(outcome.status);
    Ok(())
}

/// How a synchronous execution ended, as recorded.
#[derive(Debug, Clone)]
pub struct SyncCompletion {
    pub outcome: ExecutionOutcome,
    /// Whether its logs were cut at [`LOG_CAP_BYTES`].
    pub logs_truncated: bool,
}

/// Runs a synchronous execution, already recorded as running (see [`ExecutionRecord::started`]), to
/// its end, and records the outcome with its logs in one write. Platform failures are recorded on the
/// execution (as `Platform.*` errors) and returned, so the caller can answer with the matching status
/// code.
pub async fn run_sync(
    store: &dyn Store,
    engine: &dyn Engine,
    invocation: Invocation,
) -> Result<SyncCompletion, EngineError> {
    let id = invocation.execution_id;
    match engine.invoke(invocation).await {
        Ok(InvocationResult { outcome, logs }) => {
            let logs_truncated = match store
                .complete_execution(id, &outcome, &logs, LOG_CAP_BYTES)
                .await
            {
                Ok(truncated) => truncated,
                Err(e) => {
                    // The outcome and logs could not be stored (a full disk, say): record at least
                    // that the execution ended, a smaller write that may still fit, rather than
                    // leave it running until the next start's recovery.
                    let e = storage(e);
                    if let Err(also) = finish(store, id, &engine_failure(&e)).await {
                        tracing::warn!(execution_id = %id, error = %also, "could not record the execution's end either");
                    }
                    return Err(e);
                }
            };
            crate::metrics::record_execution(outcome.status);
            Ok(SyncCompletion {
                outcome,
                logs_truncated,
            })
        }
        Err(e) => {
            finish(store, id, &engine_failure(&e)).await?;
            Err(e)
        }
    }
}

/// Opens a function's sealed environment variables (the key lives with the API).
pub type EnvOpener = Arc<dyn Fn(&[u8]) -> Result<EnvVars, String> + Send + Sync>;

/// Works through queued asynchronous executions.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    engine: Arc<dyn Engine>,
    node: String,
    open_env: EnvOpener,
    wake: Arc<Notify>,
    slots: Arc<Semaphore>,
    retry_backoff: Duration,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// How often the dispatcher looks for due work when nobody wakes it (retries become due by time).
const POLL_EVERY: Duration = Duration::from_millis(250);

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        engine: Arc<dyn Engine>,
        node: String,
        open_env: EnvOpener,
        parallelism: usize,
        retry_backoff: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            engine,
            node,
            open_env,
            wake: Arc::new(Notify::new()),
            slots: Arc::new(Semaphore::new(parallelism.max(1))),
            retry_backoff,
        })
    }

    /// Wakes the dispatcher after an execution was queued.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Recovers what a crash left (see [`Store::recover_interrupted`]) and starts dispatching.
    pub async fn start(self: &Arc<Self>) -> Result<tokio::task::JoinHandle<()>, EngineError> {
        let (failed, requeued) = self
            .store
            .recover_interrupted(&self.node, voltrun_storage::now())
            .await
            .map_err(storage)?;
        if failed + requeued > 0 {
            tracing::warn!(
                failed_sync = failed,
                requeued_async = requeued,
                "recovered executions interrupted by a previous stop"
            );
        }
        let this = self.clone();
        Ok(tokio::spawn(async move { this.run().await }))
    }

    async fn run(self: Arc<Self>) {
        loop {
            let free = self.slots.available_permits();
            let claimed = if free == 0 {
                Vec::new()
            } else {
                match self
                    .store
                    .claim_async(
                        &self.node,
                        voltrun_storage::now(),
                        u32::try_from(free).unwrap_or(u32::MAX),
                    )
                    .await
                {
                    Ok(claimed) => claimed,
                    Err(e) => {
                        tracing::error!(error = %e, "claiming queued executions failed");
                        Vec::new()
                    }
                }
            };
            let idle = claimed.is_empty();
            for record in claimed {
                let Ok(permit) = self.slots.clone().acquire_owned().await else {
                    return;
                };
                let this = self.clone();
                tokio::spawn(async move {
                    let id = record.id;
                    if let Err(e) = this.process(record).await {
                        // Never leave it stranded as running: put it back in the queue for another try.
                        tracing::error!(execution_id = %id, error = %e, "asynchronous execution could not be recorded; requeueing");
                        let due = voltrun_storage::now() + chrono::Duration::seconds(1);
                        if let Err(e) = this.store.requeue_execution(id, due).await {
                            tracing::error!(execution_id = %id, error = %e, "requeueing failed; recovery at the next start will");
                        }
                    }
                    drop(permit);
                    this.wake.notify_one();
                });
            }
            if idle {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(POLL_EVERY) => {}
                }
            }
        }
    }

    async fn process(&self, record: ExecutionRecord) -> Result<(), EngineError> {
        let store = self.store.as_ref();
        let Some(function) = store
            .get_function(record.user_id, record.function_id)
            .await
            .map_err(storage)?
        else {
            let outcome = platform_failure(
                "Platform.FunctionNotFound",
                "the function was deleted before this execution ran".into(),
            );
            return finish(store, record.id, &outcome).await;
        };
        let env = match (self.open_env)(&function.env_ciphertext) {
            Ok(env) => env,
            Err(e) => {
                return finish(store, record.id, &platform_failure("Platform.Internal", e)).await;
            }
        };
        let max_retries = function.max_retries;
        let invocation = Invocation {
            execution_id: record.id,
            function,
            env,
            event: record.input.clone(),
        };
        let outcome = match self.engine.invoke(invocation).await {
            Ok(InvocationResult { outcome, logs }) => {
                store
                    .append_logs(record.id, &logs, LOG_CAP_BYTES)
                    .await
                    .map_err(storage)?;
                outcome
            }
            Err(EngineError::Overloaded) => {
                // No capacity now: back in the queue, to run when there is.
                let due = voltrun_storage::now() + chrono::Duration::seconds(1);
                return store
                    .requeue_execution(record.id, due)
                    .await
                    .map_err(storage);
            }
            Err(e) => engine_failure(&e),
        };
        let attempt = AttemptRecord {
            attempt: record.attempts,
            status: outcome.status,
            error: outcome.error.clone(),
            started_at: outcome.started_at,
            finished_at: outcome.finished_at,
            duration_ms: outcome.duration_ms,
        };
        store
            .record_attempt(record.id, &attempt)
            .await
            .map_err(storage)?;
        let retryable = matches!(
            outcome.status,
            ExecutionStatus::Failed | ExecutionStatus::TimedOut
        );
        if retryable && record.attempts <= max_retries {
            let backoff = self.retry_backoff
                * 2u32.saturating_pow(u32::try_from(record.attempts - 1).unwrap_or(0));
            let due = voltrun_storage::now()
                + chrono::Duration::from_std(backoff).unwrap_or(chrono::Duration::MAX);
            tracing::info!(execution_id = %record.id, attempt = record.attempts, "retrying asynchronous execution");
            metrics::counter!("voltrun_async_retries_total").increment(1);
            return store
                .requeue_execution(record.id, due)
                .await
                .map_err(storage);
        }
        finish(store, record.id, &outcome).await
    }
}
