//! The execution engine seam. The executions service hands invocations to an [`Engine`] and records
//! what it reports; it never reaches into how or where code runs. The local engine
//! ([`LocalEngine`], the [`scheduler`]) runs them on this host in an [`isolation`] backend; another
//! engine (a remote scheduler) can implement this trait. The engine knows no database: it reads code
//! through a [`CodeSource`].
//!
//! Until a backend is configured the server runs [`UnavailableEngine`], which refuses every
//! invocation with a clear reason rather than pretending to run anything.

mod code_cache;
pub mod isolation;
mod lambda_env;
mod metrics;
pub mod runtimes;
pub mod scheduler;

use async_trait::async_trait;
use serde::Serialize;
use uuid::Uuid;
use voltrun_domain::execution::{ExecutionOutcome, LogLine};
use voltrun_domain::function::{EnvVars, FunctionRecord};

pub use code_cache::{CodeSource, CodeSourceError};
pub use isolation::Isolation;
pub use runtimes::{RuntimeInfo, detect_runtimes};
pub use scheduler::{LocalEngine, LocalEngineConfig};
/// The Lambda Runtime API served to each instance (shared with the guest agent).
pub use voltrun_runtime_api as runtime_api;

/// Everything a backend needs to run one invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub execution_id: Uuid,
    /// The function as it was when invoked (its code is fetched by sha256 when not cached).
    pub function: FunctionRecord,
    /// The decrypted environment variables.
    pub env: EnvVars,
    pub event: serde_json::Value,
}

/// How an invocation ended, and what it wrote.
#[derive(Debug, Clone)]
pub struct InvocationResult {
    pub outcome: ExecutionOutcome,
    /// stdout/stderr lines plus Lambda's START / END / REPORT lines, in order.
    pub logs: Vec<LogLine>,
}

/// What `/health` reports about the engine.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EngineStatus {
    /// The isolation backend, e.g. `namespace`, `firecracker`, `emulated` or `none`.
    pub backend: String,
    /// Whether invocations can run now.
    pub ready: bool,
    /// What runs functions, or why nothing can.
    pub detail: String,
    /// Ways the isolation is weaker than it should be on this host (e.g. no cgroups: rlimits only).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("execution engine unavailable: {0}")]
    Unavailable(String),
    #[error("too many concurrent invocations")]
    Overloaded,
    /// The function asks for more memory than this server grants one instance (its budget, or one
    /// user's share of it): no wait would help, and the function's configuration has to change.
    #[error("{0}")]
    MemoryTooLarge(String),
    /// A write the platform needed (unpacking code, storing the outcome) failed for want of disk
    /// space.
    #[error("storage full: {0}")]
    StorageFull(String),
    #[error("engine failure: {0}")]
    Internal(String),
}

#[async_trait]
pub trait Engine: Send + Sync + std::fmt::Debug {
    fn status(&self) -> EngineStatus;

    /// Runtimes this host can run, for validation and `GET /api/runtimes`.
    fn runtimes(&self) -> &[RuntimeInfo];

    /// Runs one invocation to its end. A function's own failure is an `Ok` outcome with status
    /// `failed` or `timed_out`; `Err` is for the platform refusing or failing to run it.
    async fn invoke(&self, invocation: Invocation) -> Result<InvocationResult, EngineError>;

    /// Starts instances until `function.min_instances` of its current version are warm; returns how
    /// many it started. Backends without warm instances start none.
    async fn prewarm(
        &self,
        _function: FunctionRecord,
        _env: EnvVars,
    ) -> Result<usize, EngineError> {
        Ok(0)
    }

    /// Forgets a deleted function: its `min_instances` floor goes, and its idle instances stop.
    async fn release(&self, _function_id: Uuid) {}
}

/// The engine in place while no isolation backend is configured: it lists the runtimes the host has
/// but refuses to run anything, so the API answers `503 engine_unavailable` instead of a fake result.
#[derive(Debug)]
pub struct UnavailableEngine {
    reason: String,
    runtimes: Vec<RuntimeInfo>,
}

impl UnavailableEngine {
    pub fn new(reason: impl Into<String>, runtimes: Vec<RuntimeInfo>) -> Self {
        Self {
            reason: reason.into(),
            runtimes,
        }
    }
}

#[async_trait]
impl Engine for UnavailableEngine {
    fn status(&self) -> EngineStatus {
        EngineStatus {
            backend: "none".into(),
            ready: false,
            detail: self.reason.clone(),
            warnings: vec![],
        }
    }

    fn runtimes(&self) -> &[RuntimeInfo] {
        &self.runtimes
    }

    async fn invoke(&self, _invocation: Invocation) -> Result<InvocationResult, EngineError> {
        Err(EngineError::Unavailable(self.reason.clone()))
    }
}

/// A function as storage returns one, for unit tests: 128 MB, 3 s, version 1.
#[cfg(test)]
pub(crate) fn test_function(runtime: &str) -> FunctionRecord {
    let now = chrono::Utc::now();
    FunctionRecord {
        id: Uuid::now_v7(),
        user_id: Uuid::now_v7(),
        name: "hello".into(),
        description: String::new(),
        runtime: runtime.into(),
        handler: "main.handler".into(),
        code_sha256: "0".repeat(64),
        code_size_bytes: 1,
        code_kind: voltrun_domain::function::CodeKind::Source,
        code_filename: Some("main.py".into()),
        memory_mb: 128,
        timeout_s: 3,
        env_ciphertext: Vec::new(),
        max_retries: 2,
        max_concurrency: None,
        min_instances: 0,
        log_format: voltrun_domain::function::LogFormat::Text,
        log_level: None,
        layers: Vec::new(),
        version: 1,
        created_at: now,
        updated_at: now,
    }
}
