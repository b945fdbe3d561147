//! The seam between the scheduler and what isolates an instance. A backend implements
//! [`Isolation`] (start an instance from an [`InstanceSpec`]) and [`RunningInstance`] (run one
//! invocation at a time on it, hand over its log lines, stop it); the scheduler knows nothing else
//! of it. Adding a backend is adding a module here.
//!
//! - [`namespace`]: bubblewrap sandboxes with their own namespaces, cgroups and seccomp filter,
//!   served the Runtime API from the host.
//! - [`guest`]: guests whose agent serves the Runtime API inside them: Firecracker microVMs, or the
//!   same guests emulated.

pub mod guest;
pub mod namespace;
mod uids;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use voltrun_domain::execution::LogLine;

use crate::RuntimeInfo;
use crate::runtime_api::{InitFailure, RuntimeReply};

/// Lambda's limit on initialisation.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A runtime's command line and whole environment, as seen from inside the instance (code at
/// `/var/task`, the bootstraps at `/var/runtime`): the same for every backend.
#[derive(Debug, Clone)]
pub struct RuntimeProcess {
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// What the scheduler asks a backend to start.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// The instance's name, unique on this host (`i-…`).
    pub name: String,
    pub runtime: RuntimeInfo,
    pub memory_mb: u32,
    /// The size of its writable `/tmp`.
    pub tmp_mb: u64,
    /// Processes and threads the runtime may have.
    pub max_processes: u64,
    /// The host directory holding the function's code (mounted at `/var/task`).
    pub code_dir: PathBuf,
    /// The host directory where the function's layers are merged (mounted at `/opt`), if any.
    pub opt_dir: Option<PathBuf>,
    pub process: RuntimeProcess,
    /// The Runtime API's port on the instance's own loopback.
    pub runtime_api_port: u16,
    /// The scheduler's memory budget, for a backend that runs machines of its own beside the
    /// instance (a snapshot's template VM): it asks here rather than taking memory unaccounted.
    pub capacity: Arc<dyn Capacity>,
}

/// Why an instance ended or an invocation did not complete normally.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The runtime reported an initialisation error (`init/error`).
    Init(InitFailure),
    /// The runtime process exited.
    Exited { status: String, out_of_memory: bool },
    /// Initialisation or the invocation ran past its deadline; the instance was killed.
    TimedOut,
    /// The sandbox or guest could not be set up, or its connection broke.
    Sandbox(String),
}

/// Why a backend did not start an instance.
#[derive(Debug)]
pub enum StartError {
    /// Every unit of something the backend has a fixed number of (host uids) is held by a live
    /// instance: stopping an idle instance frees one, and nothing else will.
    Exhausted(&'static str),
    /// The instance did not start, with what its runtime wrote meanwhile.
    Failed {
        failure: Failure,
        logs: Vec<LogLine>,
    },
}

impl StartError {
    /// The instance did not start and wrote nothing.
    pub fn failed(failure: Failure) -> Self {
        Self::Failed {
            failure,
            logs: Vec::new(),
        }
    }
}

/// One invocation as a backend receives it.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    pub request_id: String,
    pub event: Bytes,
    /// When the function's time is up, for the runtime's `Lambda-Runtime-Deadline-Ms`.
    pub deadline_unix_ms: i64,
    pub timeout: Duration,
    pub function_arn: String,
}

/// What one invocation produced.
#[derive(Debug)]
pub enum InvokeResult {
    Replied(RuntimeReply),
    Failed(Failure),
}

/// What isolates instances: starts them.
#[async_trait]
pub trait Isolation: Send + Sync + fmt::Debug {
    /// The backend's name, as `/health` and `ENGINE_BACKEND` say it.
    fn backend(&self) -> &'static str;
    /// What runs instances, for `/health` (it may change as the backend works: its snapshots).
    fn describe(&self) -> String;
    /// Ways the isolation is weaker than it should be on this host.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether it can run `runtime` (a guest backend needs an image of it).
    fn runs(&self, _runtime: &str) -> bool {
        true
    }
    /// Starts an instance; it is ready when its runtime asks for its first invocation.
    async fn start(&self, spec: &InstanceSpec) -> Result<Box<dyn RunningInstance>, StartError>;
    /// The code cache removed the code in `code_dir`: whatever the backend made from it (a code
    /// image, a snapshot whose guest mounted it) must not be used again.
    fn code_removed(&self, _code_dir: &Path) {}
}

/// One started instance: one runtime serving one invocation at a time.
#[async_trait]
pub trait RunningInstance: Send + fmt::Debug {
    /// Runs one invocation. A timeout or a broken instance ends it (every process of it) before
    /// this returns.
    async fn invoke(&mut self, request: InvokeRequest) -> InvokeResult;
    /// The log lines written since the last call, all of those the runtime wrote before it
    /// answered.
    async fn logs(&mut self) -> Vec<LogLine>;
    /// The most memory it used since its last invocation began.
    fn memory_peak_mb(&self) -> Option<i64>;
    /// Whether it can take another invocation.
    fn healthy(&self) -> bool;
    /// Whether it was restored from a snapshot of an initialised instance.
    fn restored(&self) -> bool {
        false
    }
    /// Stops it: every process of it, its cgroup or its VM.
    async fn stop(self: Box<Self>);
}

/// Memory the scheduler lends a backend for what it runs beside instances.
pub trait Capacity: Send + Sync + fmt::Debug {
    /// Reserves `mib` now if there is room (no waiting); held until the reservation is dropped.
    fn try_reserve(&self, mib: u32) -> Option<Reservation>;
}

/// Memory held from a [`Capacity`] until dropped.
#[derive(Debug)]
pub struct Reservation {
    _held: Box<dyn fmt::Debug + Send + Sync>,
}

impl Reservation {
    /// A reservation that holds `held` (a semaphore permit, say) until it is dropped.
    pub fn new(held: impl fmt::Debug + Send + Sync + 'static) -> Self {
        Self {
            _held: Box::new(held),
        }
    }
}
