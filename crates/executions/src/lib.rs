//! The executions service: the one place the API goes to run a function. It owns the application
//! side of an invocation — refusing before anything is recorded when nothing can run, opening the
//! function's environment, recording the execution, running it synchronously ([`record`]) or queueing
//! it for the [`dispatcher`], retries, and keeping functions warm — while the engine only runs what it
//! is handed. It also feeds the engine code from storage ([`StoredCode`]), so the engine knows no
//! database.

mod dispatcher;
mod record;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use uuid::Uuid;
use voltrun_domain::execution::{ExecutionRecord, InvocationType};
use voltrun_domain::function::{EnvVars, FunctionRecord};
use voltrun_engine::{CodeSource, CodeSourceError, Engine, EngineError, Invocation};
use voltrun_storage::{Store, StoreError, UserQuotas};

pub use self::dispatcher::Dispatcher;
pub use self::record::SyncCompletion;

/// Opens a function's sealed environment variables (the key lives with the API and the server).
pub type EnvOpener = Arc<dyn Fn(&[u8]) -> Result<EnvVars, EnvOpenError> + Send + Sync>;

/// Why a function's environment could not be opened (a damaged value, or another key).
pub type EnvOpenError = Box<dyn std::error::Error + Send + Sync>;

/// Why an invocation was not carried out (or not recorded), each mapped to an answer by the API.
#[derive(Debug, thiserror::Error)]
pub enum ExecutionsError {
    /// The engine refused or failed to run it (recorded on the execution as a `Platform.*` error
    /// when the execution was recorded).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The database refused a read or a write (a full queue is a quota refusal).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The function's environment could not be opened.
    #[error("opening the function's environment: {0}")]
    Environment(EnvOpenError),
}

/// What an invocation came to.
#[derive(Debug)]
pub enum Invoked {
    /// Queued for the dispatcher (an asynchronous invocation).
    Queued(ExecutionRecord),
    /// Run to its end and recorded (a synchronous invocation).
    Finished(ExecutionRecord),
}

/// How the service is set up.
#[derive(Debug, Clone)]
pub struct ExecutionsConfig {
    /// This node's name, recorded on the executions it runs.
    pub node: String,
    pub quotas: UserQuotas,
    /// Asynchronous executions run at once, at most.
    pub async_parallelism: usize,
    /// The first retry's delay; each later one doubles it.
    pub retry_backoff: Duration,
}

/// See the module documentation.
pub struct Executions {
    store: Arc<dyn Store>,
    engine: Arc<dyn Engine>,
    open_env: EnvOpener,
    config: ExecutionsConfig,
    /// Wakes the dispatcher, once it runs.
    dispatcher: Option<Arc<Notify>>,
}

impl std::fmt::Debug for Executions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executions")
            .field("engine", &self.engine)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Executions {
    pub fn new(
        store: Arc<dyn Store>,
        engine: Arc<dyn Engine>,
        open_env: EnvOpener,
        config: ExecutionsConfig,
    ) -> Self {
        Self {
            store,
            engine,
            open_env,
            config,
            dispatcher: None,
        }
    }

    /// Recovers what a previous stop interrupted (running synchronous executions fail as
    /// `Platform.NodeLost`, running asynchronous ones go back to the queue), starts the dispatcher,
    /// and starts the instances functions keep warm. Without an engine that runs anything, nothing
    /// is dispatched: queued executions wait for a server that can run them.
    pub async fn start(&mut self) -> Result<(), ExecutionsError> {
        if !self.engine.status().ready {
            return Ok(());
        }
        let dispatcher = Dispatcher::new(
            self.store.clone(),
            self.engine.clone(),
            self.config.node.clone(),
            self.open_env.clone(),
            self.config.async_parallelism,
            self.config.retry_backoff,
        );
        dispatcher.start().await?;
        self.dispatcher = Some(dispatcher.waker());
        self.keep_all_warm();
        Ok(())
    }

    /// The engine, for what it reports (`/health`, the runtimes it offers).
    pub fn engine(&self) -> &dyn Engine {
        self.engine.as_ref()
    }

    /// Invokes `function` (the caller's, already checked) with `event`: refuses before recording
    /// anything when nothing can run here; otherwise records the execution and queues it or runs
    /// it to its end.
    pub async fn invoke(
        &self,
        user_id: Uuid,
        function: FunctionRecord,
        event: serde_json::Value,
        invocation_type: InvocationType,
    ) -> Result<Invoked, ExecutionsError> {
        let status = self.engine.status();
        if !status.ready {
            // Refused before recording anything: there is no execution to show for it.
            return Err(EngineError::Unavailable(format!(
                "functions cannot run on this server: {}",
                status.detail
            ))
            .into());
        }
        let env =
            (self.open_env)(&function.env_ciphertext).map_err(ExecutionsError::Environment)?;
        let record = ExecutionRecord::new_queued(
            user_id,
            function.id,
            function.version,
            invocation_type,
            event,
            voltrun_storage::now(),
        );
        match invocation_type {
            InvocationType::Async => {
                // The queued row is the queue entry: the dispatcher picks it up (also after a
                // restart). A full queue (the user's quota) refuses it, and nothing is queued.
                self.store
                    .enqueue_execution(&record, &self.config.quotas)
                    .await?;
                if let Some(wake) = &self.dispatcher {
                    wake.notify_one();
                }
                Ok(Invoked::Queued(record))
            }
            InvocationType::Sync => {
                // Recorded running from the start: one write before the run, one (outcome and
                // logs) after.
                let record = record.started(voltrun_storage::now(), &self.config.node);
                self.store.insert_execution(&record).await?;
                let invocation = Invocation {
                    execution_id: record.id,
                    function,
                    env,
                    event: record.input.clone(),
                };
                // Its own task: a caller that goes away (a client that disconnects drops the
                // request's future) does not cut the run short; it still ends and is recorded.
                let (store, engine) = (self.store.clone(), self.engine.clone());
                let done = tokio::spawn(async move {
                    record::run_sync(&store, engine.as_ref(), invocation).await
                })
                .await
                .map_err(|e| EngineError::Internal(format!("the run's task: {e}")))??;
                Ok(Invoked::Finished(
                    record.finished(done.outcome, done.logs_truncated),
                ))
            }
        }
    }

    /// Keeps `function`'s `min_instances` warm at its current version, started in the background
    /// (a deploy answers without waiting). Called with 0 too: that releases the floor an earlier
    /// version or setting held.
    pub fn keep_warm(&self, function: &FunctionRecord, env: &EnvVars) {
        if !self.engine.status().ready {
            return;
        }
        let (engine, function, env) = (self.engine.clone(), function.clone(), env.clone());
        tokio::spawn(async move { prewarm(engine.as_ref(), function, Ok(env)).await });
    }

    /// Forgets a deleted function: its warm floor goes, and its idle instances stop (in the
    /// background).
    pub fn release(&self, function_id: Uuid) {
        let engine = self.engine.clone();
        tokio::spawn(async move { engine.release(function_id).await });
    }

    /// Starts the instances every function keeps warm (at start-up), without delaying it.
    fn keep_all_warm(&self) {
        let (store, engine, open_env) = (
            self.store.clone(),
            self.engine.clone(),
            self.open_env.clone(),
        );
        tokio::spawn(async move {
            let functions = match store.functions_to_keep_warm().await {
                Ok(functions) => functions,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list functions to keep warm");
                    return;
                }
            };
            for function in functions {
                let env = open_env(&function.env_ciphertext);
                prewarm(engine.as_ref(), function, env).await;
            }
        });
    }
}

/// Starts `function`'s floor of warm instances with its opened environment, saying why when it
/// cannot (pre-warming runs in the background: nobody waits for its answer).
async fn prewarm(
    engine: &dyn Engine,
    function: FunctionRecord,
    env: Result<EnvVars, EnvOpenError>,
) {
    let id = function.id;
    let started = match env {
        Ok(env) => engine
            .prewarm(function, env)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("opening the function's environment: {e}")),
    };
    if let Err(e) = started {
        tracing::warn!(function_id = %id, error = e, "pre-warming instances failed");
    }
}

/// The engine's code, read from the platform's storage.
#[derive(Debug)]
pub struct StoredCode(pub Arc<dyn Store>);

#[async_trait]
impl CodeSource for StoredCode {
    async fn code(&self, sha256: &str) -> Result<Option<Vec<u8>>, CodeSourceError> {
        self.0.get_code(sha256).await.map_err(code_source_error)
    }

    async fn referenced(&self, sha256: &str) -> Result<bool, CodeSourceError> {
        self.0
            .code_referenced(sha256)
            .await
            .map_err(code_source_error)
    }
}

fn code_source_error(e: StoreError) -> CodeSourceError {
    match e {
        StoreError::StorageFull(cause) => CodeSourceError::StorageFull(cause.to_string()),
        other => CodeSourceError::Failed(other.to_string()),
    }
}
