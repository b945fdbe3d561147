//! The local engine: runs invocations on this host, isolated in namespace sandboxes or in
//! Firecracker microVMs ([`Isolation`]), reusing warm instances.
//!
//! Scheduling: instances are pooled per (function, version). An invocation takes an idle instance or
//! starts one (a cold start). Each function may run at most `max_concurrency_per_function`
//! invocations at once and all instances together stay within a host memory budget; over either,
//! an invocation waits up to `queue_timeout`, then fails as overloaded (429 for synchronous calls).
//! Idle instances stop after `keep_alive`; a new version drains the old version's idle instances.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Bytes;
use chrono::Utc;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;
use voltrun_domain::execution::{
    ExecutionError, ExecutionOutcome, ExecutionStatus, LogLine, LogStream,
};
use voltrun_domain::function::{EnvVars, FunctionRecord, LogFormat, RuntimeFamily};
use voltrun_sandbox::{BindMount, Limits, SandboxSpec, Spawner};
use voltrun_storage::Store;

use crate::code_cache::CodeCache;
use crate::instance::{Failure, Instance};
use crate::microvm::{GuestLauncher, GuestSpec};
use crate::runtime_api::RuntimeReply;
use crate::shares::UserShares;
use crate::uids::{UidLease, UidPool};
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
    /// Sandboxes run as host uids `uid_base .. uid_base + uid_count`, one per instance at a time.
    pub uid_base: u32,
    pub uid_count: u32,
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

/// The port of the Runtime API on each sandbox's own loopback (as on Lambda).
const RUNTIME_API_PORT: u16 = 9001;
/// Memory that gives one full CPU share, as on Lambda (1,769 MB = one vCPU).
const MB_PER_CPU_SHARE: u64 = 1769;

type PoolKey = (Uuid, i64);

/// A runtime's command line and whole environment.
struct RuntimeProcess {
    command: Vec<String>,
    env: Vec<(String, String)>,
}

/// What isolates an instance.
#[derive(Debug)]
pub enum Isolation {
    /// A bubblewrap sandbox with its own namespaces, cgroups and seccomp filter.
    Namespace(Arc<Spawner>),
    /// A guest: a Firecracker microVM, or the same guest emulated.
    Guest(Arc<dyn GuestLauncher>),
}

impl Isolation {
    fn backend(&self) -> &'static str {
        match self {
            Self::Namespace(_) => "namespace",
            Self::Guest(launcher) => launcher.backend(),
        }
    }
}

#[derive(Debug)]
pub struct LocalEngine {
    config: LocalEngineConfig,
    store: Arc<dyn Store>,
    isolation: Isolation,
    runtimes: Vec<RuntimeInfo>,
    code: CodeCache,
    runtime_dir: PathBuf,
    idle: Mutex<HashMap<PoolKey, Vec<Instance>>>,
    /// Per function: its concurrency limit and the semaphore enforcing it (replaced when the limit changes).
    concurrency: Mutex<HashMap<Uuid, (usize, Arc<Semaphore>)>>,
    /// This engine, for background work it starts itself (re-warming after an instance dies).
    me: std::sync::Weak<Self>,
    /// Per (function, version): how many idle instances the reaper must leave warm (`min_instances`).
    warm_floor: Mutex<HashMap<PoolKey, usize>>,
    memory: Arc<Semaphore>,
    /// Each user's part of `memory`.
    shares: Arc<UserShares>,
    uids: Arc<UidPool>,
    detail: String,
    warnings: Vec<String>,
}

const PYTHON_BOOTSTRAP: &str = include_str!("../bootstraps/bootstrap.py");
const NODE_BOOTSTRAP: &str = include_str!("../bootstraps/bootstrap.js");

impl LocalEngine {
    /// Sets up the spawner (finds bubblewrap, the cgroup setup and compiles the seccomp filters) and
    /// writes the runtime files. Fails when this host cannot run sandboxes.
    pub fn new(
        config: LocalEngineConfig,
        store: Arc<dyn Store>,
        runtimes: Vec<RuntimeInfo>,
    ) -> Result<Arc<Self>, EngineError> {
        let is_root = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata("/proc/self")
                .map_err(|e| EngineError::Unavailable(e.to_string()))?,
        ) == 0;
        if !is_root {
            return Err(EngineError::Unavailable(
                "the namespace sandbox needs root (to run sandboxes as unprivileged uids and set cgroup limits)".into(),
            ));
        }
        // Sandboxes mount code and runtime files from the work directory (see `SHARED_MOUNT`).
        create_shared_dir(&config.work_dir)
            .map_err(|e| EngineError::Unavailable(format!("work directory: {e}")))?;
        let spawner =
            Spawner::new(&config.work_dir).map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let cgroups = spawner.cgroups();
        let warnings = if !cgroups.is_available() {
            vec![format!(
                "resource limits are degraded: {}; memory and process caps are per-process rlimits, CPU is not shared fairly",
                cgroups.describe()
            )]
        } else if !cgroups.can_freeze() {
            vec![format!(
                "idle instances are not frozen: {} has no freezer, so what a function leaves running keeps using CPU between invocations",
                cgroups.describe()
            )]
        } else {
            vec![]
        };
        let detail = format!("bubblewrap sandboxes; {}", spawner.cgroups().describe());
        if !spawner.cgroups().is_available() {
            tracing::warn!(detail, "sandbox limits are degraded");
        }
        Self::build(
            config,
            store,
            runtimes,
            Isolation::Namespace(Arc::new(spawner)),
            detail,
            warnings,
        )
    }

    /// An engine whose instances are guests of `launcher` (Firecracker microVMs), offering the
    /// runtimes this host has that the launcher has guest images for.
    pub fn with_guests(
        config: LocalEngineConfig,
        store: Arc<dyn Store>,
        runtimes: Vec<RuntimeInfo>,
        launcher: Arc<dyn GuestLauncher>,
    ) -> Result<Arc<Self>, EngineError> {
        let imaged = launcher.runtimes();
        let runtimes: Vec<RuntimeInfo> = runtimes
            .into_iter()
            .filter(|r| imaged.contains(&r.id))
            .collect();
        if runtimes.is_empty() {
            return Err(EngineError::Unavailable(format!(
                "{} has guest images for no runtime this host offers",
                launcher.describe()
            )));
        }
        let detail = launcher.describe();
        Self::build(
            config,
            store,
            runtimes,
            Isolation::Guest(launcher),
            detail,
            vec![],
        )
    }

    fn build(
        config: LocalEngineConfig,
        store: Arc<dyn Store>,
        runtimes: Vec<RuntimeInfo>,
        isolation: Isolation,
        detail: String,
        warnings: Vec<String>,
    ) -> Result<Arc<Self>, EngineError> {
        let detail = with_selection(detail, config.selection.as_deref());
        let runtime_dir = config.work_dir.join("runtime");
        write_runtime_files(&runtime_dir)
            .map_err(|e| EngineError::Unavailable(format!("writing runtime files: {e}")))?;
        let code = CodeCache::new(
            config.work_dir.join("code"),
            code_extractor(config.uid_base),
        )
        .map_err(|e| EngineError::Unavailable(format!("code directory: {e}")))?;
        let memory = Arc::new(Semaphore::new(
            usize::try_from(config.memory_budget_mb).unwrap_or(usize::MAX >> 4),
        ));
        let uids = UidPool::new(config.uid_base, config.uid_count);
        let shares = UserShares::new(config.user_memory_mb);
        let engine = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            config,
            store,
            isolation,
            runtimes,
            code,
            runtime_dir,
            idle: Mutex::new(HashMap::new()),
            concurrency: Mutex::new(HashMap::new()),
            warm_floor: Mutex::new(HashMap::new()),
            memory,
            shares,
            uids,
            detail,
            warnings,
        });
        Self::start_reaper(Arc::downgrade(&engine));
        Self::start_code_collector(Arc::downgrade(&engine));
        Ok(engine)
    }

    /// Removes unreferenced, unused code from the code cache now and then (see
    /// [`Self::collect_code`]).
    fn start_code_collector(engine: std::sync::Weak<Self>) {
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

    /// Removes the code (unpacked directory and microVM image) that no function references any
    /// more and that no instance has used for `unused_for`; a snapshot booted from a removed image
    /// goes with it. Returns how many entries went.
    async fn collect_code(&self, unused_for: Duration) -> usize {
        let removed = self.code.collect(self.store.as_ref(), unused_for).await;
        if let Isolation::Guest(launcher) = &self.isolation {
            for sha in &removed {
                launcher.code_removed(&self.code.root().join(sha));
            }
        }
        if !removed.is_empty() {
            tracing::info!(
                entries = removed.len(),
                "removed unpacked code no function uses any more"
            );
        }
        removed.len()
    }

    fn start_reaper(engine: std::sync::Weak<Self>) {
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
                let expired = engine.take_expired().await;
                for instance in expired {
                    tracing::debug!(instance = %instance.id, "stopping idle instance after keep-alive");
                    instance.stop().await;
                }
            }
        });
    }

    /// Idle instances past the keep-alive, except the most recently used `min_instances` of each
    /// (function, version), which stay warm.
    async fn take_expired(&self) -> Vec<Instance> {
        let floors = self.warm_floor.lock().await.clone();
        let mut idle = self.idle.lock().await;
        let mut taken = Vec::new();
        for (key, list) in idle.iter_mut() {
            list.sort_by_key(|i| std::cmp::Reverse(i.last_used));
            let floor = floors.get(key).copied().unwrap_or(0);
            let mut keep = Vec::new();
            for (n, instance) in list.drain(..).enumerate() {
                if n >= floor && instance.last_used.elapsed() >= self.config.keep_alive {
                    taken.push(instance);
                } else {
                    keep.push(instance);
                }
            }
            *list = keep;
        }
        idle.retain(|_, list| !list.is_empty());
        self.publish_idle(&idle);
        taken
    }

    async fn take_idle_where(&self, mut pred: impl FnMut(&Instance) -> bool) -> Vec<Instance> {
        let mut idle = self.idle.lock().await;
        let mut taken = Vec::new();
        for list in idle.values_mut() {
            let (out, keep): (Vec<Instance>, Vec<Instance>) = list.drain(..).partition(|i| pred(i));
            *list = keep;
            taken.extend(out);
        }
        idle.retain(|_, list| !list.is_empty());
        self.publish_idle(&idle);
        taken
    }

    /// Sets the idle-instance gauge per runtime from the pool (call with the pool locked, after a change).
    fn publish_idle(&self, idle: &HashMap<PoolKey, Vec<Instance>>) {
        for runtime in &self.runtimes {
            let count = idle
                .values()
                .flatten()
                .filter(|i| i.runtime == runtime.id)
                .count();
            metrics::gauge!("voltrun_instances", "runtime" => runtime.id.clone(), "state" => "idle").set(count as f64);
        }
    }

    /// Stops every instance (server shutdown).
    pub async fn shutdown(&self) {
        for instance in self.take_idle_where(|_| true).await {
            instance.stop().await;
        }
    }

    async fn function_slot(
        &self,
        function: &FunctionRecord,
    ) -> Result<OwnedSemaphorePermit, EngineError> {
        let limit = function
            .max_concurrency
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(self.config.max_concurrency_per_function);
        let semaphore = {
            let mut all = self.concurrency.lock().await;
            let entry = all
                .entry(function.id)
                .or_insert_with(|| (limit, Arc::new(Semaphore::new(limit))));
            if entry.0 != limit {
                // A changed limit takes effect for new invocations; running ones finish on the old one.
                *entry = (limit, Arc::new(Semaphore::new(limit)));
            }
            entry.1.clone()
        };
        tokio::time::timeout(self.config.queue_timeout, semaphore.acquire_owned())
            .await
            .map_err(|_| EngineError::Overloaded)?
            .map_err(|_| EngineError::Overloaded)
    }

    /// Takes an idle instance of this exact version; idle instances of older versions are drained.
    async fn take_warm(&self, key: PoolKey) -> (Option<Instance>, Vec<Instance>) {
        let mut idle = self.idle.lock().await;
        let stale = other_versions(&mut idle, key);
        let warm = idle.get_mut(&key).and_then(Vec::pop);
        self.publish_idle(&idle);
        (warm, stale)
    }

    /// Reserves memory for a new instance, evicting idle instances (oldest first) when the budget is
    /// used up, then waiting up to the queue timeout.
    async fn reserve_memory(&self, memory_mb: i32) -> Result<OwnedSemaphorePermit, EngineError> {
        let wanted = u32::try_from(memory_mb).unwrap_or(u32::MAX);
        if u64::from(wanted) > self.config.memory_budget_mb {
            return Err(EngineError::MemoryTooLarge(format!(
                "the function's {memory_mb} MB exceed this host's memory budget of {} MB",
                self.config.memory_budget_mb
            )));
        }
        loop {
            if let Ok(permit) = self.memory.clone().try_acquire_many_owned(wanted) {
                return Ok(permit);
            }
            let oldest = self.take_oldest_idle().await;
            match oldest {
                Some(instance) => instance.stop().await,
                None => {
                    return tokio::time::timeout(
                        self.config.queue_timeout,
                        self.memory.clone().acquire_many_owned(wanted),
                    )
                    .await
                    .map_err(|_| EngineError::Overloaded)?
                    .map_err(|_| EngineError::Overloaded);
                }
            }
        }
    }

    /// Takes the idle instance unused the longest out of the pools, if there is one.
    async fn take_oldest_idle(&self) -> Option<Instance> {
        self.take_oldest_idle_where(|_| true).await
    }

    /// [`take_oldest_idle`](Self::take_oldest_idle) among the instances `pick` accepts.
    async fn take_oldest_idle_where(&self, pick: impl Fn(&Instance) -> bool) -> Option<Instance> {
        let mut idle = self.idle.lock().await;
        let key = idle
            .iter()
            .filter_map(|(k, list)| {
                let oldest = list.iter().filter(|i| pick(i)).map(|i| i.last_used).min();
                oldest.map(|t| (*k, t))
            })
            .min_by_key(|(_, t)| *t)
            .map(|(k, _)| k);
        let evicted = key.and_then(|k| {
            let list = idle.get_mut(&k)?;
            let pos = list
                .iter()
                .enumerate()
                .filter(|(_, i)| pick(i))
                .min_by_key(|(_, i)| i.last_used)
                .map(|(p, _)| p)?;
            Some(list.remove(pos))
        });
        self.publish_idle(&idle);
        evicted
    }

    /// The user's share of the memory budget for a new instance of `function`: its idle instances
    /// (the oldest first) make way for it, then it waits up to the queue timeout for its busy ones.
    async fn reserve_share(
        &self,
        function: &FunctionRecord,
    ) -> Result<crate::shares::MemoryShare, EngineError> {
        let (user, mb) = (function.user_id, u64::from(function.memory_mib()));
        if mb > self.shares.cap_mb() {
            return Err(EngineError::MemoryTooLarge(format!(
                "the function's {mb} MB exceed this server's memory share per user of {} MB (ENGINE_USER_MEMORY_MB)",
                self.shares.cap_mb()
            )));
        }
        let deadline = tokio::time::Instant::now() + self.config.queue_timeout;
        loop {
            // Armed before looking: a share given back, or an instance of the user's going idle
            // (which can then make way), in between still ends the wait below.
            let changed = self.shares.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(share) = self.shares.try_take(user, mb) {
                return Ok(share);
            }
            match self
                .take_oldest_idle_where(|i| i.user() == Some(user))
                .await
            {
                Some(instance) => instance.stop().await,
                None => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return Err(EngineError::Overloaded);
                    }
                }
            }
        }
    }

    /// A host uid of its own for a new sandbox, evicting idle instances (oldest first) while every
    /// uid is held; refused when every holder is busy.
    async fn lease_uid(&self) -> Result<UidLease, EngineError> {
        loop {
            if let Some(lease) = self.uids.lease() {
                return Ok(lease);
            }
            match self.take_oldest_idle().await {
                Some(instance) => instance.stop().await,
                None => {
                    tracing::warn!(
                        uids = self.config.uid_count,
                        "every sandbox uid is held by a busy instance; refusing a cold start"
                    );
                    return Err(EngineError::Overloaded);
                }
            }
        }
    }

    /// Starts an instance of `function` (a cold start): reserves its memory, makes its code
    /// available, and starts the runtime in the engine's isolation. The outer error is the platform
    /// refusing; the inner one is the instance failing to start, with what it wrote.
    async fn start_instance(
        &self,
        function: &FunctionRecord,
        runtime: &RuntimeInfo,
        env: &EnvVars,
    ) -> Result<Result<Instance, (Failure, Vec<LogLine>)>, EngineError> {
        let share = self.reserve_share(function).await?;
        let memory = self.reserve_memory(function.memory_mb).await?;
        let (code_dir, code_lease) = self.code.ensure(self.store.as_ref(), function).await?;
        let (opt_dir, opt_lease) = self
            .code
            .ensure_layers(self.store.as_ref(), &function.layers)
            .await?
            .unzip();
        let leases = [Some(code_lease), opt_lease];
        let name = format!("i-{}", Uuid::now_v7().simple());
        let process = self.runtime_process(function, runtime, env, &name)?;
        Ok(match &self.isolation {
            Isolation::Namespace(spawner) => {
                let uid = self.lease_uid().await?;
                let code = Mounted {
                    task: code_dir,
                    opt: opt_dir,
                };
                let spec = self.sandbox_spec(function, runtime, code, name, process, uid.uid());
                Instance::start(spawner.clone(), spec, runtime.id.clone(), Some(memory))
                    .await
                    .map(|instance| {
                        instance
                            .holding_uid(uid)
                            .holding_code(leases)
                            .holding_share(share)
                    })
            }
            Isolation::Guest(launcher) => {
                let RuntimeProcess { command, env } = process;
                let spec = GuestSpec {
                    name,
                    runtime: runtime.id.clone(),
                    memory_mb: function.memory_mib(),
                    tmp_mb: u32::try_from(self.config.tmp_size_mb).unwrap_or(512),
                    code_dir,
                    opt_dir,
                    command,
                    env,
                    runtime_api_port: RUNTIME_API_PORT,
                    max_processes: u32::try_from(self.config.max_processes).unwrap_or(u32::MAX),
                    memory_budget: Some(self.memory.clone()),
                };
                Instance::start_guest(launcher.as_ref(), spec, Some(memory))
                    .await
                    .map(|instance| instance.holding_code(leases).holding_share(share))
            }
        })
    }

    /// The runtime's command line and whole environment, as seen from inside the instance (code at
    /// `/var/task`, the bootstraps at `/var/runtime`): the same for every isolation.
    fn runtime_process(
        &self,
        function: &FunctionRecord,
        runtime: &RuntimeInfo,
        env: &EnvVars,
        name: &str,
    ) -> Result<RuntimeProcess, EngineError> {
        let family = RuntimeFamily::of(&runtime.id)
            .ok_or_else(|| EngineError::Internal(format!("unknown runtime {}", runtime.id)))?;
        let command = match (family, &runtime.interpreter) {
            (RuntimeFamily::Python, Some(interpreter)) => vec![
                interpreter.display().to_string(),
                "/var/runtime/bootstrap.py".into(),
            ],
            (RuntimeFamily::Node, Some(interpreter)) => vec![
                interpreter.display().to_string(),
                "/var/runtime/bootstrap.js".into(),
            ],
            (RuntimeFamily::Provided, _) => vec!["/var/task/bootstrap".into()],
            (RuntimeFamily::Python | RuntimeFamily::Node, None) => {
                return Err(EngineError::Internal(format!(
                    "runtime {} has no interpreter",
                    runtime.id
                )));
            }
        };
        let mut vars: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.extend([
            (
                "AWS_LAMBDA_RUNTIME_API".to_string(),
                format!("127.0.0.1:{RUNTIME_API_PORT}"),
            ),
            ("_HANDLER".into(), function.handler.clone()),
            ("LAMBDA_TASK_ROOT".into(), "/var/task".into()),
            ("LAMBDA_RUNTIME_DIR".into(), "/var/runtime".into()),
            ("AWS_LAMBDA_FUNCTION_NAME".into(), function.name.clone()),
            (
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
                function.memory_mb.to_string(),
            ),
            (
                "AWS_LAMBDA_FUNCTION_VERSION".into(),
                function.version.to_string(),
            ),
            // Where the instance's logs go, named as Lambda names them (the group as the built-in
            // bootstraps report it); the official runtime interface clients put them on the
            // context, and aws-lambda-ric refuses to run without them.
            (
                "AWS_LAMBDA_LOG_GROUP_NAME".into(),
                format!("/voltrun/{}", function.name),
            ),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME".into(),
                format!(
                    "{}/[{}]{name}",
                    Utc::now().format("%Y/%m/%d"),
                    function.version
                ),
            ),
            ("AWS_LAMBDA_INITIALIZATION_TYPE".into(), "on-demand".into()),
            ("AWS_REGION".into(), "local".into()),
            ("AWS_DEFAULT_REGION".into(), "local".into()),
            ("TZ".into(), ":UTC".into()),
            ("LANG".into(), "C.UTF-8".into()),
            // Lambda's: layers' programs and libraries (`/opt/bin`, `/opt/lib`) come after the
            // system's, the function's own libraries (`/var/task/lib`) before its layers'. The
            // system's library directories come first, so a function's `libz.so.1` cannot replace
            // the one its interpreter links (Debian's are the multiarch ones).
            (
                "PATH".into(),
                "/usr/local/bin:/usr/bin:/bin:/opt/bin".into(),
            ),
            ("LD_LIBRARY_PATH".into(), library_path()),
            ("HOME".into(), "/tmp".into()),
        ]);
        // Lambda's module path for Node.js: layers' packages (`/opt/nodejs/node<major>/node_modules`,
        // then `/opt/nodejs/node_modules`) before the runtime's and the function's own. (Python's
        // bootstrap puts `/opt/python` on `sys.path` itself, as Lambda's does.)
        // The function may set its own, as on Lambda.
        if family == RuntimeFamily::Node && !env.contains_key("NODE_PATH") {
            let major = runtime.id.trim_start_matches("nodejs");
            vars.push((
                "NODE_PATH".into(),
                format!(
                    "/opt/nodejs/node{major}/node_modules:/opt/nodejs/node_modules:\
                     /var/runtime/node_modules:/var/runtime:/var/task"
                ),
            ));
        }
        // Lambda's advanced logging controls, as its runtimes (and AWS's clients) read them.
        if function.log_format == LogFormat::Json {
            vars.push(("AWS_LAMBDA_LOG_FORMAT".into(), "JSON".into()));
        }
        if let Some(level) = function.log_level {
            vars.push(("AWS_LAMBDA_LOG_LEVEL".into(), level.env_value().into()));
        }
        Ok(RuntimeProcess { command, env: vars })
    }

    fn sandbox_spec(
        &self,
        function: &FunctionRecord,
        runtime: &RuntimeInfo,
        code: Mounted,
        name: String,
        RuntimeProcess { command, env }: RuntimeProcess,
        host_uid: u32,
    ) -> SandboxSpec {
        let mut binds = vec![
            BindMount {
                source: code.task,
                dest: "/var/task".into(),
            },
            BindMount {
                source: self.runtime_dir.join("bootstraps"),
                dest: "/var/runtime".into(),
            },
        ];
        binds.extend(code.opt.map(|opt| BindMount {
            source: opt,
            dest: "/opt".into(),
        }));
        for etc in ["passwd", "group", "hosts"] {
            binds.push(BindMount {
                source: self.runtime_dir.join("etc").join(etc),
                dest: PathBuf::from("/etc").join(etc),
            });
        }
        binds.extend(runtime.binds.iter().map(|dir| BindMount {
            source: dir.clone(),
            dest: dir.clone(),
        }));
        let memory_bytes = u64::from(function.memory_mib()) << 20;
        SandboxSpec {
            name,
            command,
            env,
            binds,
            workdir: "/var/task".into(),
            tmp_size_bytes: self.config.tmp_size_mb << 20,
            limits: Limits {
                memory_bytes,
                max_processes: self.config.max_processes,
                cpu_shares: (1024 * (memory_bytes >> 20) / MB_PER_CPU_SHARE).max(2),
            },
            host_uid,
            listen_port: RUNTIME_API_PORT,
        }
    }
}

/// `LD_LIBRARY_PATH` inside an instance: the system's directories, then the function's and its
/// layers', in Lambda's order.
fn library_path() -> String {
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    format!(
        "/lib/{multiarch}:/usr/lib/{multiarch}:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:\
         /var/task:/var/task/lib:/opt/lib"
    )
}

/// The code an instance mounts: the function's at `/var/task`, its layers merged at `/opt`.
#[derive(Debug)]
struct Mounted {
    task: PathBuf,
    opt: Option<PathBuf>,
}

/// A directory sandboxes read from (mode 0755, whatever the umask).
fn create_shared_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

fn write_runtime_files(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bootstraps = dir.join("bootstraps");
    let etc = dir.join("etc");
    for d in [dir, &bootstraps, &etc] {
        create_shared_dir(d)?;
    }
    let files: [(PathBuf, &str); 5] = [
        (bootstraps.join("bootstrap.py"), PYTHON_BOOTSTRAP),
        (bootstraps.join("bootstrap.js"), NODE_BOOTSTRAP),
        (
            etc.join("passwd"),
            "root:x:0:0:root:/root:/usr/sbin/nologin\nsbx_user:x:1000:1000:function:/tmp:/usr/sbin/nologin\n",
        ),
        (etc.join("group"), "root:x:0:\nsbx_user:x:1000:\n"),
        (etc.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n"),
    ];
    for (path, contents) in files {
        std::fs::write(&path, contents)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Takes the idle instances of the function `key` names at any other version out of the pool.
fn other_versions(idle: &mut HashMap<PoolKey, Vec<Instance>>, key: PoolKey) -> Vec<Instance> {
    let keys: Vec<PoolKey> = idle
        .keys()
        .filter(|(f, v)| *f == key.0 && *v != key.1)
        .copied()
        .collect();
    keys.iter()
        .filter_map(|k| idle.remove(k))
        .flatten()
        .collect()
}

fn platform_error(error_type: &str, message: impl Into<String>) -> ExecutionError {
    ExecutionError {
        error_type: error_type.into(),
        message: message.into(),
    }
}

/// An error a runtime reported (at start or for an invocation): Lambda's own types (`Runtime.*`,
/// `Function.*`) as they are; an exception's class (`ValueError`) as `Runtime.Unhandled` with the
/// class before the message, as Lambda shows a function's unhandled error (no class: the message
/// alone).
fn function_error(error_type: &str, message: String) -> ExecutionError {
    if error_type.starts_with("Runtime.") || error_type.starts_with("Function.") {
        platform_error(error_type, message)
    } else if error_type.is_empty() {
        platform_error("Runtime.Unhandled", message)
    } else {
        platform_error("Runtime.Unhandled", format!("{error_type}: {message}"))
    }
}

/// Maps how an invocation ended to the execution's status and error (Lambda's error types).
fn classify(
    result: Result<RuntimeReply, Failure>,
    function: &FunctionRecord,
) -> (
    ExecutionStatus,
    Option<serde_json::Value>,
    Option<ExecutionError>,
) {
    match result {
        Ok(RuntimeReply::Response(bytes)) => {
            // Lambda returns whatever bytes the function produced; a record keeps JSON, so non-JSON
            // output is kept as a string.
            let output = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            });
            (ExecutionStatus::Succeeded, Some(output), None)
        }
        Ok(RuntimeReply::Error {
            error_type,
            message,
        }) => (
            ExecutionStatus::Failed,
            None,
            Some(function_error(&error_type, message)),
        ),
        Ok(RuntimeReply::ResponseTooLarge(size)) => (
            ExecutionStatus::Failed,
            None,
            Some(platform_error(
                "Function.ResponseSizeTooLarge",
                format!(
                    "response payload of {size} bytes exceeds the limit of {} bytes",
                    crate::runtime_api::MAX_RESPONSE_BYTES
                ),
            )),
        ),
        Err(Failure::Init(init)) => (
            ExecutionStatus::Failed,
            None,
            Some(function_error(&init.error_type, init.message)),
        ),
        Err(Failure::Exited {
            out_of_memory: true,
            ..
        }) => (
            ExecutionStatus::Failed,
            None,
            Some(platform_error(
                "Runtime.OutOfMemory",
                format!(
                    "the function ran out of memory (limit {} MB)",
                    function.memory_mb
                ),
            )),
        ),
        Err(Failure::Exited { status, .. }) => (
            ExecutionStatus::Failed,
            None,
            Some(platform_error(
                "Runtime.ExitError",
                format!("the runtime exited: {status}"),
            )),
        ),
        Err(Failure::TimedOut) => (
            ExecutionStatus::TimedOut,
            None,
            Some(platform_error(
                "Sandbox.Timedout",
                format!("task timed out after {} seconds", function.timeout_s),
            )),
        ),
        Err(Failure::Sandbox(message)) => (
            ExecutionStatus::Failed,
            None,
            Some(platform_error("Platform.SandboxError", message)),
        ),
    }
}

fn platform_line(text: String) -> LogLine {
    LogLine {
        timestamp: Utc::now(),
        stream: LogStream::Stdout,
        line: text,
    }
}

#[async_trait]
impl Engine for LocalEngine {
    async fn prewarm(&self, function: FunctionRecord, env: EnvVars) -> Result<usize, EngineError> {
        let key = (function.id, function.version);
        let wanted = usize::try_from(function.min_instances).unwrap_or(0);
        {
            let mut floors = self.warm_floor.lock().await;
            floors.retain(|(f, _), _| *f != function.id);
            if wanted > 0 {
                floors.insert(key, wanted);
            }
        }
        let runtime = self
            .runtimes
            .iter()
            .find(|r| r.id == function.runtime)
            .ok_or_else(|| {
                EngineError::Internal(format!(
                    "runtime {} is not offered on this host",
                    function.runtime
                ))
            })?
            .clone();
        // The new version's floor replaces the old versions' idle instances at once: each holds
        // memory, a uid and its user's share, and an update must not add a floor to the old one.
        let (have, stale) = {
            let mut idle = self.idle.lock().await;
            let stale = other_versions(&mut idle, key);
            self.publish_idle(&idle);
            (idle.get(&key).map_or(0, Vec::len), stale)
        };
        for instance in stale {
            instance.stop().await;
        }
        let mut started = 0;
        for _ in have..wanted {
            let mut instance = self
                .start_instance(&function, &runtime, &env)
                .await?
                .map_err(|(failure, _)| {
                    EngineError::Internal(format!("pre-warming failed: {failure:?}"))
                })?;
            // An update made while it started has replaced this version's floor (and drained the
            // pool of this version before this instance was in it): it is not kept.
            if !self.warm_floor.lock().await.contains_key(&key) {
                instance.stop().await;
                break;
            }
            // Its initialisation happened ahead of time: invocations on it are not cold starts.
            instance.init_duration = None;
            metrics::counter!("voltrun_prewarmed_instances_total", "runtime" => runtime.id.clone())
                .increment(1);
            let mut idle = self.idle.lock().await;
            idle.entry(key).or_default().push(instance);
            self.publish_idle(&idle);
            started += 1;
        }
        Ok(started)
    }

    async fn release(&self, function_id: Uuid) {
        self.warm_floor
            .lock()
            .await
            .retain(|(f, _), _| *f != function_id);
        let released: Vec<Instance> = {
            let mut idle = self.idle.lock().await;
            let keys: Vec<PoolKey> = idle
                .keys()
                .filter(|(f, _)| *f == function_id)
                .copied()
                .collect();
            let released = keys
                .iter()
                .filter_map(|key| idle.remove(key))
                .flatten()
                .collect();
            self.publish_idle(&idle);
            released
        };
        for instance in released {
            instance.stop().await;
        }
    }

    fn status(&self) -> EngineStatus {
        EngineStatus {
            backend: self.isolation.backend().into(),
            ready: true,
            // A launcher's description changes as it works (its snapshots, say).
            detail: match &self.isolation {
                Isolation::Guest(launcher) => {
                    with_selection(launcher.describe(), self.config.selection.as_deref())
                }
                Isolation::Namespace(_) => self.detail.clone(),
            },
            warnings: self.warnings.clone(),
        }
    }

    fn runtimes(&self) -> &[RuntimeInfo] {
        &self.runtimes
    }

    async fn invoke(&self, invocation: Invocation) -> Result<InvocationResult, EngineError> {
        let function = &invocation.function;
        let runtime = self
            .runtimes
            .iter()
            .find(|r| r.id == function.runtime)
            .ok_or_else(|| {
                EngineError::Internal(format!(
                    "runtime {} is no longer offered on this host",
                    function.runtime
                ))
            })?
            .clone();
        let _slot = self.function_slot(function).await?;
        let key = (function.id, function.version);
        let (warm, stale) = self.take_warm(key).await;
        if !stale.is_empty() {
            // Stopping takes milliseconds (kill, reap, remove the cgroups): not on this call's path.
            tokio::spawn(async move {
                for old in stale {
                    old.stop().await;
                }
            });
        }
        let started_at = voltrun_storage::now();
        let request_id = invocation.execution_id.to_string();
        let mut logs = vec![platform_line(format!(
            "START RequestId: {request_id} Version: {}",
            function.version
        ))];
        let clock = Instant::now();

        let (mut instance, cold) = match warm {
            Some(instance) => (instance, false),
            None => {
                match self
                    .start_instance(function, &runtime, &invocation.env)
                    .await?
                {
                    Ok(instance) => (instance, true),
                    Err((failure, init_logs)) => {
                        logs.extend(init_logs);
                        return Ok(self.finish(
                            function,
                            Ended {
                                request_id: &request_id,
                                started_at,
                                clock,
                                logs,
                                result: Err(failure),
                                init: None,
                                cold: true,
                                ran: None,
                            },
                        ));
                    }
                }
            }
        };
        crate::metrics::instance_state(&runtime.id, "busy", 1.0);
        let init = instance.init_duration.take().map(|duration| Init {
            duration,
            restored: instance.restored(),
        });
        let event = Bytes::from(
            serde_json::to_vec(&invocation.event)
                .map_err(|e| EngineError::Internal(e.to_string()))?,
        );
        let timeout = function.timeout();
        let arn = format!(
            "arn:voltrun:function:{}:{}",
            function.name, function.version
        );
        let invoke_clock = Instant::now();
        let result = match instance.invoke(&request_id, event, timeout, arn).await {
            crate::instance::InvokeResult::Replied(reply) => Ok(reply),
            crate::instance::InvokeResult::Failed(failure) => Err(failure),
        };
        let duration = invoke_clock.elapsed();
        crate::metrics::instance_state(&runtime.id, "busy", -1.0);
        logs.extend(instance.finish_logs().await);
        let peak = instance.memory_peak_mb();
        let instance_id = instance.id.clone();
        if instance.is_healthy() {
            let mut idle = self.idle.lock().await;
            idle.entry(key).or_default().push(instance);
            self.publish_idle(&idle);
            drop(idle);
            // A cold start of the same user's waiting for its share may now evict this one.
            self.shares.notify_changed();
        } else {
            instance.stop().await;
            // A kept-warm instance died (timeout, crash, OOM): start its replacement in the background.
            let floor = self.warm_floor.lock().await.get(&key).copied().unwrap_or(0);
            if let (true, Some(me)) = (floor > 0, self.me.upgrade()) {
                let (function, env) = (function.clone(), invocation.env.clone());
                tokio::spawn(async move {
                    if let Err(e) = me.prewarm(function, env).await {
                        tracing::warn!(error = %e, "re-warming after an instance ended failed");
                    }
                });
            }
        }
        Ok(self.finish(
            function,
            Ended {
                request_id: &request_id,
                started_at,
                clock,
                logs,
                result,
                init,
                cold,
                ran: Some((duration, peak, instance_id)),
            },
        ))
    }
}

/// Who unpacks tenants' archives: where the server runs as root, the uid (and gid) just below the
/// sandboxes' range, which no instance ever runs as; otherwise the server's own user.
fn code_extractor(sandbox_uid_base: u32) -> Option<voltrun_bundle::Unprivileged> {
    let id = sandbox_uid_base.checked_sub(1)?;
    voltrun_bundle::running_as_root().then_some(voltrun_bundle::Unprivileged { uid: id, gid: id })
}

/// How an invocation ended, for its record: what [`LocalEngine::finish`] turns into the execution's
/// outcome and its last log lines.
#[derive(Debug)]
struct Ended<'a> {
    request_id: &'a str,
    started_at: chrono::DateTime<Utc>,
    /// Started when the invocation was taken, for an invocation that never ran.
    clock: Instant,
    logs: Vec<LogLine>,
    result: Result<RuntimeReply, Failure>,
    init: Option<Init>,
    cold: bool,
    /// How long it ran, its memory peak and its instance, when an instance ran it.
    ran: Option<(Duration, Option<i64>, String)>,
}

/// Lambda's `REPORT` line: the duration, the billed duration (whole milliseconds, rounded up), the
/// memory size and peak, and for a cold start its init duration (`Restore Duration` for a guest
/// restored from a snapshot, as SnapStart reports it).
fn report_line(
    request_id: &str,
    duration: Duration,
    memory_mb: i32,
    peak_mb: Option<i64>,
    init: Option<Init>,
) -> String {
    let duration_ms = duration.as_secs_f64() * 1000.0;
    let mut report = format!(
        "REPORT RequestId: {request_id}\tDuration: {duration_ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {memory_mb} MB\tMax Memory Used: {} MB",
        duration_ms.ceil() as u64,
        peak_mb.unwrap_or(0)
    );
    if let Some(init) = init {
        let label = if init.restored {
            "Restore Duration"
        } else {
            "Init Duration"
        };
        report.push_str(&format!(
            "\t{label}: {:.2} ms",
            init.duration.as_secs_f64() * 1000.0
        ));
    }
    report
}

impl LocalEngine {
    fn finish(&self, function: &FunctionRecord, ended: Ended<'_>) -> InvocationResult {
        let Ended {
            request_id,
            started_at,
            clock,
            mut logs,
            result,
            init,
            cold,
            ran,
        } = ended;
        let (status, output, error) = classify(result, function);
        let (duration, peak, instance_id) = ran.unwrap_or((clock.elapsed(), None, String::new()));
        let report = report_line(request_id, duration, function.memory_mb, peak, init);
        let init_duration = init.map(|i| i.duration);
        if let Some(error) = &error {
            logs.push(LogLine {
                timestamp: Utc::now(),
                stream: LogStream::Stderr,
                line: format!("[ERROR] {}: {}", error.error_type, error.message),
            });
        }
        logs.push(platform_line(format!("END RequestId: {request_id}")));
        logs.push(platform_line(report));
        crate::metrics::record(&function.runtime, cold, init_duration, duration, status);
        InvocationResult {
            outcome: ExecutionOutcome {
                status,
                output,
                error,
                started_at,
                finished_at: voltrun_storage::now(),
                duration_ms: duration.as_millis().try_into().unwrap_or(i64::MAX),
                init_duration_ms: init_duration
                    .map(|d| d.as_millis().try_into().unwrap_or(i64::MAX)),
                memory_peak_mb: peak,
                cold_start: cold,
                node: self.config.node.clone(),
                instance_id,
            },
            logs,
        }
    }
}

/// How a cold start's instance became ready, for its first invocation's report.
#[derive(Debug, Clone, Copy)]
struct Init {
    duration: Duration,
    /// Restored from a snapshot of an initialised guest rather than initialised.
    restored: bool,
}

/// An engine's description, with why this backend was chosen when it was chosen automatically.
fn with_selection(detail: String, selection: Option<&str>) -> String {
    match selection {
        Some(why) => format!("{detail} ({why})"),
        None => detail,
    }
}

#[cfg(test)]
mod tests {
    use super::{Init, function_error, report_line};
    use std::time::Duration;

    #[test]
    fn the_report_line_is_lambdas() {
        assert_eq!(
            report_line("r-1", Duration::from_micros(12_345), 256, Some(31), None),
            "REPORT RequestId: r-1\tDuration: 12.35 ms\tBilled Duration: 13 ms\tMemory Size: 256 MB\tMax Memory Used: 31 MB"
        );
        let cold = Init {
            duration: Duration::from_millis(80),
            restored: false,
        };
        assert!(
            report_line("r-2", Duration::from_millis(2), 128, None, Some(cold))
                .ends_with("\tBilled Duration: 2 ms\tMemory Size: 128 MB\tMax Memory Used: 0 MB\tInit Duration: 80.00 ms")
        );
        let restored = Init {
            restored: true,
            ..cold
        };
        assert!(
            report_line("r-3", Duration::from_millis(2), 128, None, Some(restored))
                .ends_with("\tRestore Duration: 80.00 ms")
        );
    }

    #[test]
    fn a_runtimes_error_keeps_lambdas_types_and_names_an_exceptions_class() {
        let shown = |t: &str, m: &str| {
            let e = function_error(t, m.to_string());
            (e.error_type, e.message)
        };
        assert_eq!(
            shown("Runtime.ImportModuleError", "no module"),
            ("Runtime.ImportModuleError".into(), "no module".into())
        );
        assert_eq!(
            shown("Function.ResponseSizeTooLarge", "big"),
            ("Function.ResponseSizeTooLarge".into(), "big".into())
        );
        assert_eq!(
            shown("ValueError", "at import"),
            ("Runtime.Unhandled".into(), "ValueError: at import".into())
        );
        assert_eq!(
            shown("", "no class"),
            ("Runtime.Unhandled".into(), "no class".into())
        );
    }
}
