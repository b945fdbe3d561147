//! The dispatcher: works through asynchronous executions queued in the database, with retries and
//! backoff. The database is the queue: an asynchronous execution is a `queued` row, so nothing is
//! lost when the server stops. What it stores is decided first and written after
//! ([`Settlement`]), so a database outage meanwhile loses nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use voltrun_domain::execution::{
    AttemptRecord, ExecutionOutcome, ExecutionRecord, ExecutionStatus, LOG_CAP_BYTES,
};
use voltrun_engine::{Engine, EngineError, Invocation, InvocationResult};
use voltrun_storage::{Store, StoreError};

use crate::EnvOpener;
use crate::record::{MAX_SETTLE_BACKOFF, engine_failure, platform_failure, record_execution};

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
    pub async fn start(self: &Arc<Self>) -> Result<tokio::task::JoinHandle<()>, StoreError> {
        let (failed, requeued) = self
            .store
            .recover_interrupted(&self.node, voltrun_storage::now())
            .await?;
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
                    let settlement = this.process(record).await;
                    this.settle(id, settlement).await;
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

    /// Runs a claimed execution and decides what to store; nothing is written here, so a database
    /// outage meanwhile loses nothing (see [`Self::settle`]).
    async fn process(&self, record: ExecutionRecord) -> Settlement {
        let retry_soon = || voltrun_storage::now() + chrono::Duration::seconds(1);
        let function = match self
            .store
            .get_function(record.user_id, record.function_id)
            .await
        {
            Ok(Some(function)) => function,
            Ok(None) => {
                let outcome = platform_failure(
                    "Platform.FunctionNotFound",
                    "the function was deleted before this execution ran".into(),
                );
                return Settlement::finished(outcome);
            }
            // The database is away: it never ran; back in the queue once the database is.
            Err(e) => {
                tracing::warn!(execution_id = %record.id, error = %e, "reading the function failed");
                return Settlement::Release { due: retry_soon() };
            }
        };
        let env = match (self.open_env)(&function.env_ciphertext) {
            Ok(env) => env,
            Err(e) => {
                return Settlement::finished(platform_failure(
                    "Platform.Internal",
                    format!("opening the function's environment: {e}"),
                ));
            }
        };
        let max_retries = function.max_retries;
        let invocation = Invocation {
            execution_id: record.id,
            function,
            env,
            event: record.input.clone(),
        };
        let (outcome, logs) = match self.engine.invoke(invocation).await {
            Ok(InvocationResult { outcome, logs }) => (outcome, logs),
            // No capacity now: back in the queue, to run when there is. It never ran, so the
            // attempt its claim counted is taken back.
            Err(EngineError::Overloaded) => return Settlement::Release { due: retry_soon() },
            Err(e) => (engine_failure(&e), Vec::new()),
        };
        let attempt = AttemptRecord {
            attempt: record.attempts,
            status: outcome.status,
            error: outcome.error.clone(),
            started_at: outcome.started_at,
            finished_at: outcome.finished_at,
            duration_ms: outcome.duration_ms,
        };
        let retryable = matches!(
            outcome.status,
            ExecutionStatus::Failed | ExecutionStatus::TimedOut
        );
        let then = if retryable && record.attempts <= max_retries {
            let backoff = self.retry_backoff
                * 2u32.saturating_pow(u32::try_from(record.attempts - 1).unwrap_or(0));
            tracing::info!(execution_id = %record.id, attempt = record.attempts, "retrying asynchronous execution");
            metrics::counter!("voltrun_async_retries_total").increment(1);
            Then::Retry {
                due: voltrun_storage::now()
                    + chrono::Duration::from_std(backoff).unwrap_or(chrono::Duration::MAX),
            }
        } else {
            Then::Finish(Box::new(outcome))
        };
        Settlement::Ran {
            logs: Some(logs),
            attempt: Some(attempt),
            then,
        }
    }

    /// Stores a settlement, retrying (with backoff up to [`MAX_SETTLE_BACKOFF`]) while the database
    /// refuses: once it is back, the execution ends terminal or is queued again, without a restart.
    /// Steps that succeeded are not repeated (logs are appended once).
    async fn settle(&self, id: uuid::Uuid, mut settlement: Settlement) {
        let store = self.store.as_ref();
        let mut backoff = Duration::from_millis(250);
        loop {
            match settlement.store_step(store, id).await {
                Ok(true) => return,
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(execution_id = %id, error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "recording an asynchronous execution failed; retrying until the database answers");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_SETTLE_BACKOFF);
                }
            }
        }
    }
}

/// What a dispatched execution leaves to store.
#[derive(Debug)]
enum Settlement {
    /// It never ran: back in the queue, its claim's attempt taken back.
    Release { due: chrono::DateTime<chrono::Utc> },
    /// It ran (or cannot run): its logs and attempt (each `None` once stored), then what follows.
    Ran {
        logs: Option<Vec<voltrun_domain::execution::LogLine>>,
        attempt: Option<AttemptRecord>,
        then: Then,
    },
}

#[derive(Debug)]
enum Then {
    Retry { due: chrono::DateTime<chrono::Utc> },
    Finish(Box<ExecutionOutcome>),
}

impl Settlement {
    fn finished(outcome: ExecutionOutcome) -> Self {
        Self::Ran {
            logs: None,
            attempt: None,
            then: Then::Finish(Box::new(outcome)),
        }
    }

    /// Stores the next step; `Ok(true)` once the last is stored.
    async fn store_step(&mut self, store: &dyn Store, id: uuid::Uuid) -> Result<bool, StoreError> {
        match self {
            Self::Release { due } => store.release_claim(id, *due).await.map(|()| true),
            Self::Ran {
                logs,
                attempt,
                then,
            } => {
                if let Some(lines) = logs {
                    store.append_logs(id, lines, LOG_CAP_BYTES).await?;
                    *logs = None;
                    return Ok(false);
                }
                if let Some(record) = attempt {
                    store.record_attempt(id, record).await?;
                    *attempt = None;
                    return Ok(false);
                }
                match then {
                    Then::Retry { due } => store.requeue_execution(id, *due).await?,
                    Then::Finish(outcome) => {
                        store.finish_execution(id, outcome).await?;
                        record_execution(outcome.status);
                    }
                }
                Ok(true)
            }
        }
    }
}
