//! The scheduler: runs invocations on this host in instances an [`Isolation`] backend starts,
//! reusing warm ones. It knows no backend: it hands one an [`InstanceSpec`] and gets back a
//! [`RunningInstance`](crate::isolation::RunningInstance).
//!
//! Instances are pooled per (function, version) ([`pool`]). An invocation takes an idle instance or
//! starts one (a cold start). Each function may run at most `max_concurrency_per_function`
//! invocations at once, all instances together stay within a host memory budget, and one user's
//! within their share of it ([`shares`]; [`admission`] checks all three); over any of these, an
//! invocation waits up to `queue_timeout`, then fails as overloaded (429 for synchronous calls).
//! Idle instances stop after `keep_alive`; a new version drains the old version's idle instances.
//! How an invocation ended becomes its record in [`outcome`]; [`warm`] keeps `min_instances`
//! floors; what the runtime sees of Lambda is [`crate::lambda_env`].

mod admission;
mod instance;
mod outcome;
mod pool;
mod shares;
mod warm;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Bytes;
use chrono::Utc;
use tokio::sync::{Mutex, Semaphore};
use uuid::Uuid;
use voltrun_domain::function::{EnvVars, FunctionRecord};

use self::instance::{Held, Instance};
use self::outcome::{Ended, Ran};
use self::pool::Pool;
use self::shares::UserShares;
use crate::code_cache::{CodeCache, CodeSource};
use crate::isolation::{
    Capacity, Failure, InstanceSpec, InvokeResult, Isolation, Reservation, StartError,
};
use crate::lambda_env::{self, RUNTIME_API_PORT};
use crate::{Engine, EngineError, EngineStatus, Invocation, InvocationResult, RuntimeInfo};

/// Tunables of the local engine.
#[derive(Debug, Clone)]
pub struct LocalEngineConfig {
    /// Where code and runtime files live (mounted read-only into sandboxes).
    pub work_dir: PathBuf,
    pub keep_alive: Duration,
    pub max_concurrency_per_function: usize,
    pub memory_budget_mb: u64,
    /// The most of the budget one user's live instances may hold at once.
    pub user_memory_mb: u64,
    pub queue_timeout: Duration,
    /// Sandboxes run as host uids from here up; the uid just below unpacks code (see
    /// [`code_extractor`]).
    pub uid_base: u32,
    pub tmp_size_mb: u64,
    pub max_processes: u64,
    /// This node's name, recorded on executions.
    pub node: String,
    /// Why this isolation was chosen (`ENGINE_BACKEND=auto`), for `/health`.
    pub selection: Option<String>,
    /// Unpacked code that no function references is removed once no instance has used it for this
    /// long; `None` keeps it forever.
    pub code_gc_after: Option<Duration>,
}

#[derive(Debug)]
pub struct LocalEngine {
    config: LocalEngineConfig,
    /// Where code comes from.
    source: Arc<dyn CodeSource>,
    isolation: Arc<dyn Isolation>,
    runtimes: Vec<RuntimeInfo>,
    code: CodeCache,
    pool: Mutex<Pool<Instance>>,
    /// Per function: its concurrency limit and the semaphore enforcing it (replaced when the limit changes).
    concurrency: Mutex<HashMap<Uuid, (usize, Arc<Semaphore>)>>,
    /// This engine, for background work it starts itself (re-warming after an instance dies).
    me: Weak<Self>,
    memory: Arc<MemoryBudget>,
    /// Each user's part of `memory`.
    shares: Arc<UserShares>,
}

/// The host's memory budget for instances (and whatever a backend runs beside them); permits are
/// MiB.
#[derive(Debug)]
struct MemoryBudget(Arc<Semaphore>);

impl Capacity for MemoryBudget {
    fn try_reserve(&self, mib: u32) -> Option<Reservation> {
        self.0
            .clone()
            .try_acquire_many_owned(mib)
            .ok()
            .map(Reservation::new)
    }
}

/// Why a cold start gave no instance.
#[derive(Debug)]
enum NotStarted {
    /// The platform refused (overloaded, impossible memory, code that cannot be read).
    Refused(EngineError),
    /// The instance failed to start, with what its runtime wrote.
    Failed {
        failure: Failure,
        logs: Vec<voltrun_domain::execution::LogLine>,
    },
}

impl From<EngineError> for NotStarted {
    fn from(e: EngineError) -> Self {
        Self::Refused(e)
    }
}

impl LocalEngine {
    /// An engine running instances in `isolation`, offering those of `runtimes` it can run, with
    /// code from `source`. Writes the bootstraps into the work directory. Fails when it can run none
    /// of them.
    pub fn new(
        config: LocalEngineConfig,
        source: Arc<dyn CodeSource>,
        runtimes: Vec<RuntimeInfo>,
        isolation: Arc<dyn Isolation>,
    ) -> Result<Arc<Self>, EngineError> {
        let runtimes: Vec<RuntimeInfo> = runtimes
            .into_iter()
            .filter(|r| isolation.runs(&r.id))
            .collect();
        if runtimes.is_empty() {
            return Err(EngineError::Unavailable(format!(
                "{} runs none of the runtimes this host offers",
                isolation.describe()
            )));
        }
        lambda_env::write_bootstraps(&config.work_dir)
            .map_err(|e| EngineError::Unavailable(format!("writing runtime files: {e}")))?;
        let code = CodeCache::new(
            config.work_dir.join("code"),
            code_extractor(config.uid_base),
        )
        .map_err(|e| EngineError::Unavailable(format!("code directory: {e}")))?;
        let memory = Arc::new(MemoryBudget(Arc::new(Semaphore::new(
            usize::try_from(config.memory_budget_mb).unwrap_or(usize::MAX >> 4),
        ))));
        let shares = UserShares::new(config.user_memory_mb);
        let engine = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            config,
            source,
            isolation,
            runtimes,
            code,
            pool: Mutex::new(Pool::default()),
            concurrency: Mutex::new(HashMap::new()),
            memory,
            shares,
        });
        Self::start_reaper(Arc::downgrade(&engine));
        Self::start_code_collector(Arc::downgrade(&engine));
        Ok(engine)
    }

    /// Removes unreferenced, unused code from the code cache now and then (see
    /// [`Self::collect_code`]).
    fn start_code_collector(engine: Weak<Self>) {
        let Some(after) = engine.upgrade().and_then(|e| e.config.code_gc_after) else {
            return;
        };
        let every = (after / 4).clamp(Duration::from_millis(250), Duration::from_secs(600));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                engine.collect_code(after).await;
            }
        });
    }

    /// Removes the code (unpacked directory, and what the backend made from it) that no function
    /// references any more and that no instance has used for `unused_for`. Returns how many entries
    /// went.
    async fn collect_code(&self, unused_for: Duration) -> usize {
        let removed = self.code.collect(self.source.as_ref(), unused_for).await;
        for sha in &removed {
            self.isolation.code_removed(&self.code.root().join(sha));
        }
        if !removed.is_empty() {
            tracing::info!(
                entries = removed.len(),
                "removed unpacked code no function uses any more"
            );
        }
        removed.len()
    }

    fn start_reaper(engine: Weak<Self>) {
        tokio::spawn(async move {
            loop {
                let every = match engine.upgrade() {
                    Some(e) => (e.config.keep_alive / 4)
                        .clamp(Duration::from_millis(100), Duration::from_secs(30)),
                    None => return,
                };
                tokio::time::sleep(every).await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                let keep_alive = engine.config.keep_alive;
                let expired = engine
                    .pooled(|pool| pool.take_expired(keep_alive, Instant::now()))
                    .await;
                for instance in expired {
                    tracing::debug!(instance = %instance.id, "stopping idle instance after keep-alive");
                    instance.stop().await;
                }
            }
        });
    }

    /// Runs `change` on the pool under its lock, then sets the idle-instance gauge per runtime.
    async fn pooled<R>(&self, change: impl FnOnce(&mut Pool<Instance>) -> R) -> R {
        let mut pool = self.pool.lock().await;
        let result = change(&mut pool);
        for runtime in &self.runtimes {
            metrics::gauge!("voltrun_instances", "runtime" => runtime.id.clone(), "state" => "idle")
                .set(pool.idle_of(&runtime.id) as f64);
        }
        result
    }

    /// Stops every instance (server shutdown).
    pub async fn shutdown(&self) {
        for instance in self.pooled(Pool::drain).await {
            instance.stop().await;
        }
    }

    /// The runtime `function` names, as this host offers it.
    fn runtime_of(&self, function: &FunctionRecord) -> Result<RuntimeInfo, EngineError> {
        self.runtimes
            .iter()
            .find(|r| r.id == function.runtime)
            .cloned()
            .ok_or_else(|| {
                EngineError::Internal(format!(
                    "runtime {} is not offered on this host",
                    function.runtime
                ))
            })
    }

    /// Starts an instance of `function` (a cold start): reserves its memory and its user's share,
    /// makes its code and layers available, and has the backend start the runtime.
    async fn start_instance(
        &self,
        function: &FunctionRecord,
        runtime: &RuntimeInfo,
        env: &EnvVars,
    ) -> Result<Instance, NotStarted> {
        let share = self.reserve_share(function).await?;
        let memory = self.reserve_memory(function.memory_mib()).await?;
        let (code_dir, code_lease) = self.code.ensure(self.source.as_ref(), function).await?;
        let (opt_dir, opt_lease) = self
            .code
            .ensure_layers(self.source.as_ref(), &function.layers)
            .await?
            .unzip();
        let name = format!("i-{}", Uuid::now_v7().simple());
        let spec = InstanceSpec {
            process: lambda_env::runtime_process(function, runtime, env, &name, Utc::now())?,
            name,
            runtime: runtime.clone(),
            memory_mb: function.memory_mib(),
            tmp_mb: self.config.tmp_size_mb,
            max_processes: self.config.max_processes,
            code_dir,
            opt_dir,
            runtime_api_port: RUNTIME_API_PORT,
            capacity: self.memory.clone(),
        };
        let (running, started) = loop {
            // The init duration counts from here: the backend's start and the runtime's init, not
            // the waits for admission or the code.
            let started = Instant::now();
            match self.isolation.start(&spec).await {
                Ok(running) => break (running, started),
                Err(StartError::Failed { failure, logs }) => {
                    return Err(NotStarted::Failed { failure, logs });
                }
                // An idle instance holds what the backend ran out of: it makes way.
                Err(StartError::Exhausted(what)) => {
                    match self.pooled(|pool| pool.take_oldest(|_| true)).await {
                        Some(idle) => idle.stop().await,
                        None => {
                            tracing::warn!(
                                what,
                                "every {what} is held by a busy instance; refusing a cold start"
                            );
                            return Err(EngineError::Overloaded.into());
                        }
                    }
                }
            }
        };
        let held = Held {
            _memory: memory,
            share,
            _code: [Some(code_lease), opt_lease]
                .into_iter()
                .flatten()
                .collect(),
        };
        Ok(Instance::new(
            spec.name,
            runtime.id.clone(),
            running,
            held,
            started,
        ))
    }
}

/// Stops instances off the invocation's path (stopping takes milliseconds: kill, reap, remove the
/// cgroups).
fn stop_in_background(instances: Vec<Instance>) {
    if instances.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for instance in instances {
            instance.stop().await;
        }
    });
}

/// Who unpacks tenants' archives: where the server runs as root, the uid (and gid) just below the
/// sandboxes' range, which no instance ever runs as; otherwise the server's own user.
fn code_extractor(sandbox_uid_base: u32) -> Option<voltrun_bundle::Unprivileged> {
    let id = sandbox_uid_base.checked_sub(1)?;
    voltrun_bundle::running_as_root().then_some(voltrun_bundle::Unprivileged { uid: id, gid: id })
}

/// An engine's description, with why this backend was chosen when it was chosen automatically.
fn with_selection(detail: String, selection: Option<&str>) -> String {
    match selection {
        Some(why) => format!("{detail} ({why})"),
        None => detail,
    }
}

#[async_trait]
impl Engine for LocalEngine {
    async fn prewarm(&self, function: FunctionRecord, env: EnvVars) -> Result<usize, EngineError> {
        self.keep_floor(function, env).await
    }

    async fn release(&self, function_id: Uuid) {
        self.forget(function_id).await;
    }

    fn status(&self) -> EngineStatus {
        EngineStatus {
            backend: self.isolation.backend().into(),
            ready: true,
            // A backend's description changes as it works (its snapshots, say).
            detail: with_selection(self.isolation.describe(), self.config.selection.as_deref()),
            warnings: self.isolation.warnings(),
        }
    }

    fn runtimes(&self) -> &[RuntimeInfo] {
        &self.runtimes
    }

    async fn invoke(&self, invocation: Invocation) -> Result<InvocationResult, EngineError> {
        let function = &invocation.function;
        let runtime = self.runtime_of(function)?;
        let _slot = self.function_slot(function).await?;
        let key = (function.id, function.version);
        let (warm, stale) = self.pooled(|pool| pool.take_warm(key)).await;
        stop_in_background(stale);
        let request_id = invocation.execution_id.to_string();
        let mut ended = Ended {
            request_id: request_id.clone(),
            started_at: voltrun_domain::now(),
            logs: vec![outcome::start_line(&request_id, function.version)],
            result: Err(Failure::TimedOut),
            init: None,
            cold: warm.is_none(),
            ran: None,
            waited: Duration::ZERO,
        };
        let clock = Instant::now();
        let mut instance = match warm {
            Some(instance) => instance,
            None => match self
                .start_instance(function, &runtime, &invocation.env)
                .await
            {
                Ok(instance) => instance,
                Err(NotStarted::Refused(e)) => return Err(e),
                Err(NotStarted::Failed { failure, logs }) => {
                    ended.logs.extend(logs);
                    ended.result = Err(failure);
                    ended.waited = clock.elapsed();
                    return Ok(self.finish(function, ended));
                }
            },
        };
        crate::metrics::instance_state(&runtime.id, "busy", 1.0);
        ended.init = instance.init.take();
        let event = Bytes::from(
            serde_json::to_vec(&invocation.event)
                .map_err(|e| EngineError::Internal(e.to_string()))?,
        );
        let arn = format!(
            "arn:voltrun:function:{}:{}",
            function.name, function.version
        );
        let invoked = Instant::now();
        let result = instance
            .invoke(request_id, event, function.timeout(), arn)
            .await;
        let duration = invoked.elapsed();
        crate::metrics::instance_state(&runtime.id, "busy", -1.0);
        ended.result = match result {
            InvokeResult::Replied(reply) => Ok(reply),
            InvokeResult::Failed(failure) => Err(failure),
        };
        ended.logs.extend(instance.logs().await);
        ended.ran = Some(Ran {
            duration,
            memory_peak_mb: instance.memory_peak_mb(),
            instance_id: instance.id.clone(),
        });
        if instance.is_healthy() {
            self.pooled(|pool| pool.put(key, instance)).await;
            // A cold start of the same user's waiting for its share may now evict this one.
            self.shares.notify_changed();
        } else {
            instance.stop().await;
            // A kept-warm instance died (timeout, crash, OOM): it is replaced.
            self.rewarm_after_loss(function, &invocation.env).await;
        }
        Ok(self.finish(function, ended))
    }
}

impl LocalEngine {
    /// The invocation's record, counted in the metrics.
    fn finish(&self, function: &FunctionRecord, ended: Ended) -> InvocationResult {
        let (cold, init) = (ended.cold, ended.init.map(|i| i.duration));
        let duration = ended.ran.as_ref().map_or(ended.waited, |ran| ran.duration);
        let result = outcome::finish(function, ended, &self.config.node, voltrun_domain::now());
        crate::metrics::record(
            &function.runtime,
            cold,
            init,
            duration,
            result.outcome.status,
        );
        result
    }
}

#[cfg(test)]
mod tests;
