//! The execution engine: which isolation backend runs functions, and what instances may hold
//! (memory, processes, /tmp, host uids, time kept warm), how invocations queue for capacity, and
//! how asynchronous executions are run and retried.

use std::time::Duration;

use super::parse::{engine_backend, number};
use super::quotas::limit;
use super::{Host, VmSettings};

/// Which isolation backend runs functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineBackend {
    /// Firecracker where `voltrun vm doctor`'s boot probe passes, else the namespace sandbox where
    /// this host can run it, else none (each time with the reason in /health).
    Auto,
    Firecracker,
    Namespace,
    /// The Firecracker backend's guests booted by QEMU under emulation: a development and test
    /// backend for hosts where no guest boots under KVM. Never chosen by `Auto`.
    Emulated,
    None,
}

#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Isolation backend: auto, firecracker, namespace, emulated or none (auto: firecracker where a
    /// guest boots, else namespace where this host can run it; never emulated)
    #[arg(
        long = "engine-backend",
        env = "ENGINE_BACKEND",
        default_value = "auto",
        value_parser = engine_backend
    )]
    pub backend: EngineBackend,
    /// Seconds unpacked code no function references stays on disk after its last use; 0 keeps it
    /// forever
    #[arg(
        long = "engine-code-gc-after-s",
        env = "ENGINE_CODE_GC_AFTER_S",
        default_value_t = 3600,
        value_parser = number::<u64>(0, 30 * 86_400)
    )]
    pub code_gc_after_s: u64,
    /// Seconds an idle instance stays warm
    #[arg(
        long = "engine-keep-alive-s",
        env = "ENGINE_KEEP_ALIVE_S",
        default_value_t = 600,
        value_parser = number::<u64>(1, 86_400)
    )]
    pub keep_alive_s: u64,
    /// Concurrent invocations per function
    #[arg(
        long = "engine-max-concurrency",
        env = "ENGINE_MAX_CONCURRENCY",
        default_value_t = 10,
        value_parser = number::<usize>(1, 10_000)
    )]
    pub max_concurrency: usize,
    /// Memory all instances together may use, in MB [default: 3/4 of this host's memory]
    #[arg(
        long = "engine-memory-budget-mb",
        env = "ENGINE_MEMORY_BUDGET_MB",
        value_parser = number::<u64>(128, u64::MAX >> 20)
    )]
    pub memory_budget_mb: Option<u64>,
    /// Memory one user's live instances may hold at once, in MB: no tenant can take the whole
    /// budget [default: half of ENGINE_MEMORY_BUDGET_MB, at least 128]
    #[arg(
        long = "engine-user-memory-mb",
        env = "ENGINE_USER_MEMORY_MB",
        value_parser = number::<u64>(128, u64::MAX >> 20)
    )]
    pub user_memory_mb: Option<u64>,
    /// Seconds an invocation waits for capacity before 429
    #[arg(
        long = "engine-queue-timeout-s",
        env = "ENGINE_QUEUE_TIMEOUT_S",
        default_value_t = 10,
        value_parser = number::<u64>(0, 900)
    )]
    pub queue_timeout_s: u64,
    /// First host uid of the range sandboxes run as; the uid just below it unpacks code, so neither
    /// may belong to anything else on the host
    #[arg(
        long = "engine-sandbox-uid-base",
        env = "ENGINE_SANDBOX_UID_BASE",
        default_value_t = 200_000,
        value_parser = number::<u32>(1000, u32::MAX - 100_000)
    )]
    pub sandbox_uid_base: u32,
    /// How many host uids from the base sandboxes may use: each live instance holds one of its own
    #[arg(
        long = "engine-sandbox-uid-count",
        env = "ENGINE_SANDBOX_UID_COUNT",
        default_value_t = 10_000,
        value_parser = number::<u32>(1, 100_000)
    )]
    pub sandbox_uid_count: u32,
    /// Size of each sandbox's /tmp in MB
    #[arg(
        long = "engine-tmp-size-mb",
        env = "ENGINE_TMP_SIZE_MB",
        default_value_t = 512,
        value_parser = number::<u64>(1, 10_240)
    )]
    pub tmp_size_mb: u64,
    /// Processes and threads per instance
    #[arg(
        long = "engine-max-processes",
        env = "ENGINE_MAX_PROCESSES",
        default_value_t = 256,
        value_parser = number::<u64>(8, 100_000)
    )]
    pub max_processes: u64,
    /// Asynchronous executions run at once
    #[arg(
        long = "engine-async-parallelism",
        env = "ENGINE_ASYNC_PARALLELISM",
        default_value_t = 8,
        value_parser = number::<usize>(1, 1000)
    )]
    pub async_parallelism: usize,
    /// Delay before the first retry of a failed asynchronous execution, in ms; doubles per retry
    #[arg(
        long = "engine-retry-backoff-ms",
        env = "ENGINE_RETRY_BACKOFF_MS",
        default_value_t = 1000,
        value_parser = number::<u64>(0, 3_600_000)
    )]
    pub retry_backoff_ms: u64,
}

#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub backend: EngineBackend,
    pub vm: VmSettings,
    pub keep_alive_s: u64,
    pub max_concurrency: usize,
    pub memory_budget_mb: u64,
    pub user_memory_mb: u64,
    pub queue_timeout_s: u64,
    pub sandbox_uid_base: u32,
    pub sandbox_uid_count: u32,
    pub tmp_size_mb: u64,
    pub max_processes: u64,
    pub async_parallelism: usize,
    pub retry_backoff_ms: u64,
    /// Unreferenced code is removed this long after its last use; `None` keeps it.
    pub code_gc_after: Option<Duration>,
}

/// Used when the host's memory is unknown.
const FALLBACK_MEMORY_BUDGET_MB: u64 = 4096;

/// The smallest budget a user may be given (the lower bound of ENGINE_USER_MEMORY_MB too).
const MIN_USER_MEMORY_MB: u64 = 128;

impl EngineArgs {
    /// The memory defaults are computed here, and only here, from the host's memory.
    pub(super) fn settings(&self, vm: VmSettings, host: &Host) -> EngineSettings {
        let memory_budget_mb = self.memory_budget_mb.unwrap_or_else(|| {
            host.memory_mb
                .map_or(FALLBACK_MEMORY_BUDGET_MB, |total| total * 3 / 4)
        });
        let user_memory_mb = self
            .user_memory_mb
            .unwrap_or((memory_budget_mb / 2).max(MIN_USER_MEMORY_MB));
        EngineSettings {
            backend: self.backend,
            vm,
            keep_alive_s: self.keep_alive_s,
            max_concurrency: self.max_concurrency,
            memory_budget_mb,
            user_memory_mb,
            queue_timeout_s: self.queue_timeout_s,
            sandbox_uid_base: self.sandbox_uid_base,
            sandbox_uid_count: self.sandbox_uid_count,
            tmp_size_mb: self.tmp_size_mb,
            max_processes: self.max_processes,
            async_parallelism: self.async_parallelism,
            retry_backoff_ms: self.retry_backoff_ms,
            code_gc_after: limit(self.code_gc_after_s).map(Duration::from_secs),
        }
    }
}
