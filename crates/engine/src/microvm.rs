//! The Firecracker backend's instances: one microVM per instance, whose guest agent starts the same
//! bootstraps the namespace backend runs, serves them the same Lambda Runtime API on the guest's own
//! loopback, and carries invocations, results, errors and log lines over vsock.
//!
//! Pools, limits, version drains and the execution records are the local engine's, shared with the
//! namespace backend: only how an instance comes to be and how an invocation reaches it differ. A
//! [`GuestLauncher`] makes guests; [`FirecrackerLauncher`] is the real one (a VM per guest, through
//! [`voltrun_vm::VmManager`]). Tests that cannot boot a Linux guest on their host launch the agent as
//! a host process behind the same handshake instead, through this same trait.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use chrono::Utc;
use voltrun_agent::host::{AgentSession, InvokeOutcome, SessionError, StartOutcome};
use voltrun_agent::protocol::{StartSpec, Stream};
use voltrun_agent::vsock::{self, AGENT_PORT};
use voltrun_domain::execution::{LogLine, LogStream};
/// The steps a guest's errors name (the VM manager's).
pub use voltrun_vm::Step;
use voltrun_vm::images::Manifest;
use voltrun_vm::jailer::JailerConfig;
use voltrun_vm::{ExitInfo, ManagerConfig, Snapshot, Vm, VmManager, VmSpec};

use crate::guest_snapshots::SnapshotStore;

use crate::instance::{Failure, INIT_TIMEOUT, InvokeResult};
use crate::runtime_api::{InitFailure, RuntimeReply};

/// Why a guest could not be brought up, or a launcher made. A failed cold start's message, so each
/// names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The VM manager's or the emulator's own error, which names its step.
    #[error(transparent)]
    Vm(#[from] voltrun_vm::VmError),
    /// The image set is missing or fails its verification.
    #[error(transparent)]
    Images(#[from] voltrun_vm::images::ImageError),
    /// The image set lacks what this backend boots.
    #[error("the image set in {} has no {what}", dir.display())]
    NoKernel { dir: PathBuf, what: &'static str },
    /// A step of the engine's own around the VM (images, the agent's hello, a snapshot).
    #[error("{step}: {detail}")]
    At { step: Step, detail: String },
    /// A directory the launcher needs.
    #[error("{}: {source}", path.display())]
    Path {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Booting after a failed restore of the configuration's snapshot failed too.
    #[error("{boot} (booted after restoring its snapshot failed: {restore})")]
    AfterRestore {
        boot: Box<GuestError>,
        restore: Box<GuestError>,
    },
}

impl GuestError {
    pub fn at(step: Step, detail: impl fmt::Display) -> Self {
        Self::At {
            step,
            detail: detail.to_string(),
        }
    }

    pub(crate) fn path(path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Path { path, source }
    }
}

/// What the engine asks of a guest: the runtime command and environment as the guest sees them
/// (code at `/var/task`, bootstraps at `/var/runtime`), and the host directory holding the code.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub name: String,
    /// The runtime identifier (`python3.11`, `nodejs20`, `provided`): which root image boots.
    pub runtime: String,
    pub memory_mb: u32,
    /// The writable `/tmp` (a scratch disk in a VM).
    pub tmp_mb: u32,
    pub code_dir: PathBuf,
    /// The host directory where the function's layers are merged (mounted at `/opt`), if it has any.
    pub opt_dir: Option<PathBuf>,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The Runtime API's port on the guest's loopback.
    pub runtime_api_port: u16,
    /// Processes and threads the runtime may have.
    pub max_processes: u32,
    /// The engine's memory budget (permits are MiB): a launcher that runs VMs of its own beside the
    /// instance's (a snapshot's template) takes their memory from it, or does not run them.
    pub memory_budget: Option<Arc<tokio::sync::Semaphore>>,
}

/// Ends a guest (a VM: kill the VMM, remove its files).
#[async_trait]
pub trait GuestBody: Send + Sync + fmt::Debug {
    async fn stop(self: Box<Self>);
}

/// A guest whose agent has said hello.
#[derive(Debug)]
pub struct Guest {
    pub session: AgentSession,
    pub body: Box<dyn GuestBody>,
}

/// Makes guests.
#[async_trait]
pub trait GuestLauncher: Send + Sync + fmt::Debug {
    /// The backend's name, as `/health` and `ENGINE_BACKEND` say it.
    fn backend(&self) -> &'static str {
        "firecracker"
    }
    /// How long a runtime may take to initialise in these guests: Lambda's 10 s, except where
    /// every instruction is emulated.
    fn init_timeout(&self) -> Duration {
        INIT_TIMEOUT
    }
    /// What runs the guests, for `/health`.
    fn describe(&self) -> String;
    /// The runtimes it has guest images for.
    fn runtimes(&self) -> Vec<String>;
    /// Brings a guest up and connects to its agent. The error names the step that failed.
    async fn launch(&self, spec: &GuestSpec) -> Result<Guest, GuestError>;
    /// The code cache removed the code in `code_dir` (and its image, `<code_dir>.ext4`): whatever
    /// the launcher keeps that was made from it (a snapshot whose guest mounted the image) must not
    /// be used again, as an image made anew at that path would differ under it.
    fn code_removed(&self, _code_dir: &Path) {}
    /// The runtime's start request, with paths as this launcher's guests see them: a VM sees the
    /// code at `/var/task` and the bootstraps at `/var/runtime`, as given.
    fn start_spec(&self, spec: &GuestSpec) -> StartSpec {
        StartSpec {
            command: spec.command.clone(),
            env: spec.env.clone(),
            cwd: TASK_ROOT.into(),
            runtime_api_port: spec.runtime_api_port,
            max_processes: spec.max_processes,
        }
    }
}

/// Where a guest finds the function's code.
pub const TASK_ROOT: &str = "/var/task";

/// How the Firecracker backend runs its VMs.
#[derive(Debug, Clone)]
pub struct FirecrackerConfig {
    pub firecracker: PathBuf,
    /// Run each VMM through the jailer, when set.
    pub jailer: Option<JailerConfig>,
    /// Where VM directories (sockets, scratch disks, logs) live; swept at start.
    pub run_dir: PathBuf,
    /// Where `voltrun vm images build` put the kernel and root images.
    pub images_dir: PathBuf,
    /// How long a guest may take from `InstanceStart` to its agent's hello.
    pub boot_timeout: Duration,
    /// The image set as a start-up probe just loaded and verified it from `images_dir`; `None`
    /// loads and verifies it here.
    pub verified_manifest: Option<Manifest>,
    /// Where snapshots of initialised guests are kept (emptied at start); `None` boots every cold
    /// start.
    pub snapshot_dir: Option<PathBuf>,
    /// How many snapshots are kept at most (each is as large as its function's memory).
    pub max_snapshots: usize,
}

/// Boots one Firecracker microVM per guest from the verified image set, or restores one from a
/// snapshot of an initialised guest of the same configuration when there is one.
#[derive(Debug)]
pub struct FirecrackerLauncher {
    shared: Arc<Machines>,
}

/// What booting, restoring and snapshotting VMs share (with the tasks that make snapshots).
#[derive(Debug)]
struct Machines {
    manager: VmManager,
    manifest: Manifest,
    images_dir: PathBuf,
    boot_timeout: Duration,
    snapshots: Option<SnapshotStore>,
}

impl FirecrackerLauncher {
    /// Takes the run directory (sweeping what a crashed server left) and verifies the images.
    pub async fn new(mut config: FirecrackerConfig) -> Result<Self, GuestError> {
        // VM specs take absolute paths; `VM_IMAGES_DIR` is often relative (`./data/vm/images`).
        config.images_dir = std::path::absolute(&config.images_dir)
            .map_err(GuestError::path(&config.images_dir))?;
        let manifest = match config.verified_manifest.take() {
            Some(manifest) => manifest,
            None => {
                let manifest = Manifest::load(&config.images_dir)?;
                manifest.verify(&config.images_dir)?;
                manifest
            }
        };
        if manifest.kernel.is_none() {
            return Err(GuestError::NoKernel {
                dir: config.images_dir,
                what: "guest kernel",
            });
        }
        let mut manager_config = ManagerConfig::new(&config.run_dir, &config.firecracker);
        manager_config.jailer = config.jailer;
        let (manager, swept) = VmManager::new(manager_config).await?;
        if !swept.vms.is_empty() {
            tracing::info!(
                vms = swept.vms.len(),
                killed = swept.killed.len(),
                "removed microVMs a previous server left behind"
            );
        }
        let snapshots = match &config.snapshot_dir {
            Some(dir) if config.max_snapshots > 0 => Some(
                SnapshotStore::open(dir, config.max_snapshots).map_err(GuestError::path(dir))?,
            ),
            _ => None,
        };
        Ok(Self {
            shared: Arc::new(Machines {
                manager,
                manifest,
                images_dir: config.images_dir,
                boot_timeout: config.boot_timeout,
                snapshots,
            }),
        })
    }

    /// The VM a guest for `spec` runs in, its code and layers drives made if need be.
    pub async fn vm_spec(&self, spec: &GuestSpec) -> Result<VmSpec, GuestError> {
        let images = guest_images(spec).await?;
        self.shared.vm_spec(spec, images)
    }

    /// Where the snapshot for `spec`'s configuration is (or would be) kept; `None` without
    /// snapshots.
    pub async fn snapshot_path(&self, spec: &GuestSpec) -> Result<Option<PathBuf>, GuestError> {
        let Some(store) = &self.shared.snapshots else {
            return Ok(None);
        };
        let vm = self.vm_spec(spec).await?;
        Ok(Some(
            store.path(&SnapshotStore::key(&vm, &self.start_spec(spec))),
        ))
    }

    /// Why `spec`'s configuration has no snapshot, when making one failed.
    pub async fn snapshot_failure(&self, spec: &GuestSpec) -> Option<String> {
        let store = self.shared.snapshots.as_ref()?;
        let vm = self.vm_spec(spec).await.ok()?;
        store.failure(&SnapshotStore::key(&vm, &self.start_spec(spec)))
    }

    /// The firecracker VM manager, for tests that make VMs beside the launcher's.
    pub fn manager(&self) -> &VmManager {
        &self.shared.manager
    }
}

impl Machines {
    fn vm_spec(&self, spec: &GuestSpec, images: GuestImages) -> Result<VmSpec, GuestError> {
        let kernel =
            self.manifest.kernel.as_ref().ok_or_else(|| {
                GuestError::at(Step::Prepare, "the image set has no guest kernel")
            })?;
        guest_vm_spec(&self.manifest, &self.images_dir, &kernel.file, spec, images)
    }

    /// Boots a VM and waits for its agent's hello.
    async fn boot(&self, spec: VmSpec) -> Result<(Vm, AgentSession), GuestError> {
        let mut vm = self.manager.spawn(spec).await?;
        // From here on, dropping `vm` kills the VMM and removes its files.
        vm.configure().await?;
        vm.start().await?;
        self.connect(vm, "said hello").await
    }

    /// Restores a VM from `snapshot` and reconnects to its agent, which must have the runtime
    /// waiting.
    async fn restore(
        &self,
        spec: VmSpec,
        snapshot: &Snapshot,
    ) -> Result<(Vm, AgentSession), GuestError> {
        let vm = self.manager.restore(spec, snapshot).await?;
        let (vm, session) = self.connect(vm, "answered after the restore").await?;
        if !session.runtime_ready() {
            return Err(GuestError::at(
                Step::AgentConnect,
                "the restored guest's agent has no runtime waiting",
            ));
        }
        Ok((vm, session))
    }

    async fn connect(&self, vm: Vm, what: &str) -> Result<(Vm, AgentSession), GuestError> {
        let session = agent_hello(
            &vm.vsock_path(),
            (self.boot_timeout, vsock::RETRY_PAUSE),
            vm.wait_exit(),
            what,
        )
        .await?;
        Ok((vm, session))
    }

    /// Makes the snapshot of `key` from a VM of its own: boot, start the runtime, let its first
    /// request for an invocation arrive, detach (vsock connections do not survive a snapshot),
    /// snapshot, and end the VM. Runs beside the cold start that asked for it, which boots as usual.
    async fn make_snapshot(&self, key: String, spec: VmSpec, start: StartSpec) {
        let Some(store) = &self.snapshots else { return };
        let images: Vec<PathBuf> = spec.code.iter().chain(&spec.layers).cloned().collect();
        let mut staging = None;
        let made = async {
            let (mut vm, mut session) = self.boot(spec).await?;
            match session.start(start, INIT_TIMEOUT).await {
                Ok(StartOutcome::Ready { .. }) => {}
                Ok(other) => {
                    return Err(GuestError::at(
                        Step::Snapshot,
                        format!("the runtime did not initialise: {other:?}"),
                    ));
                }
                Err(e) => {
                    return Err(GuestError::at(
                        Step::Snapshot,
                        format!("starting the runtime: {e}"),
                    ));
                }
            }
            session.detach(Duration::from_secs(5)).await.map_err(|e| {
                GuestError::at(Step::Snapshot, format!("detaching from the agent: {e}"))
            })?;
            let dir = store
                .staging(&key)
                .map_err(|e| GuestError::at(Step::Snapshot, e))?;
            staging = Some(dir.clone());
            let snapshot = vm.snapshot(&dir).await.map_err(GuestError::from);
            vm.stop().await;
            snapshot.map(|_| dir)
        }
        .await;
        let published = made.and_then(|dir| {
            store
                .publish(&key, &dir, images)
                .map_err(|e| GuestError::at(Step::Snapshot, format!("publishing: {e}")))
        });
        match published {
            Ok(()) => {
                tracing::info!(key, "snapshot of an initialised guest ready");
                crate::metrics::snapshot_made("made");
            }
            Err(why) => {
                crate::metrics::snapshot_made("failed");
                tracing::warn!(key, %why, "no snapshot for this configuration: cold starts boot");
                store.failed(&key, staging.as_deref(), why.to_string());
            }
        }
    }
}

/// Says what an ended guest left on the host that could not be removed.
pub(crate) fn warn_of_leftovers(exit: &ExitInfo) {
    if !exit.cleanup_errors.is_empty() {
        tracing::warn!(errors = ?exit.cleanup_errors, "a microVM left files behind");
    }
}

/// A VM as a guest body.
#[derive(Debug)]
struct VmBody(Vm);

#[async_trait]
impl GuestBody for VmBody {
    async fn stop(self: Box<Self>) {
        warn_of_leftovers(&self.0.stop().await);
    }
}

#[async_trait]
impl GuestLauncher for FirecrackerLauncher {
    fn describe(&self) -> String {
        let machines = &self.shared;
        format!(
            "Firecracker microVMs ({}; {}), guest images for {} in {}",
            if machines.manager.config().jailer.is_some() {
                "jailed"
            } else {
                "not jailed"
            },
            match &machines.snapshots {
                Some(store) => format!("cold starts restore snapshots, {} ready", store.count()),
                None => "every cold start boots".into(),
            },
            machines.manifest.runtimes().join(", "),
            machines.images_dir.display()
        )
    }

    fn runtimes(&self) -> Vec<String> {
        self.shared.manifest.runtimes()
    }

    fn code_removed(&self, code_dir: &Path) {
        if let Some(store) = &self.shared.snapshots {
            let gone = store.forget_code(&code_dir.with_extension("ext4"));
            if gone > 0 {
                tracing::info!(
                    snapshots = gone,
                    "removed snapshots of guests that mounted removed code"
                );
            }
        }
    }

    async fn launch(&self, spec: &GuestSpec) -> Result<Guest, GuestError> {
        let vm_spec = self.vm_spec(spec).await?;
        let machines = &self.shared;
        let mut restore_failed = None;
        if let Some(store) = &machines.snapshots {
            let start = self.start_spec(spec);
            let key = SnapshotStore::key(&vm_spec, &start);
            if let Some(snapshot) = store.ready(&key) {
                match machines.restore(vm_spec.clone(), &snapshot).await {
                    Ok((vm, session)) => {
                        crate::metrics::snapshot_restore("restored");
                        return Ok(Guest {
                            session,
                            body: Box::new(VmBody(vm)),
                        });
                    }
                    Err(why) => {
                        tracing::warn!(key, %why, "restoring a snapshot failed: booting instead");
                        crate::metrics::snapshot_restore("failed");
                        store.discard(&key, why.to_string());
                        restore_failed = Some(why);
                    }
                }
            } else if let Some(memory) = template_memory(spec, vm_spec.mem_mib)
                && store.claim(&key)
            {
                let (machines, spec) = (machines.clone(), vm_spec.clone());
                tokio::spawn(async move {
                    machines
                        .make_snapshot(key, spec, snapshot_start(start))
                        .await;
                    drop(memory);
                });
            }
        }
        let (vm, session) = machines
            .boot(vm_spec)
            .await
            .map_err(|e| match restore_failed {
                Some(why) => GuestError::AfterRestore {
                    boot: Box::new(e),
                    restore: Box::new(why),
                },
                None => e,
            })?;
        Ok(Guest {
            session,
            body: Box::new(VmBody(vm)),
        })
    }
}

/// The images a guest mounts besides its root image: the function's code, and its layers merged.
#[derive(Debug)]
pub(crate) struct GuestImages {
    code: PathBuf,
    layers: Option<PathBuf>,
}

/// [`GuestImages`] for `spec`, each made if need be.
pub(crate) async fn guest_images(spec: &GuestSpec) -> Result<GuestImages, GuestError> {
    let code = code_image(&spec.code_dir).await?;
    let layers = match &spec.opt_dir {
        Some(dir) => Some(code_image(dir).await?),
        None => None,
    };
    Ok(GuestImages { code, layers })
}

/// The VM a guest for `spec` runs in, from a verified image set: the runtime's root image, the given
/// kernel file of the set, and the code and layers images.
pub(crate) fn guest_vm_spec(
    manifest: &Manifest,
    images_dir: &Path,
    kernel_file: &str,
    spec: &GuestSpec,
    GuestImages { code, layers }: GuestImages,
) -> Result<VmSpec, GuestError> {
    let root = manifest
        .rootfs
        .iter()
        .find(|r| r.runtime == spec.runtime)
        .ok_or_else(|| {
            GuestError::at(
                Step::Prepare,
                format!(
                    "no guest image for runtime {} (rebuild them with `voltrun vm images build`)",
                    spec.runtime
                ),
            )
        })?;
    // The function's memory is the guest's: the kernel and the agent live in it too, as
    // Lambda's sandbox overhead lives in the function's memory. Below 128 MiB a guest kernel
    // with a runtime does not fit.
    let mem_mib = spec.memory_mb.max(128);
    Ok(VmSpec {
        vcpu_count: VmSpec::vcpus_for_memory(mem_mib),
        mem_mib,
        kernel: images_dir.join(kernel_file),
        boot_args: manifest.boot_args.clone(),
        initrd: manifest.initrd.as_ref().map(|i| images_dir.join(&i.file)),
        rootfs: images_dir.join(&root.image.file),
        scratch_mib: spec.tmp_mb.max(1),
        code: Some(code),
        layers,
    })
}

/// Connects to a guest's agent through its hybrid-vsock socket and waits for its hello, unless the
/// process running the guest exits first; `what` is what the agent did not do (`said hello`).
pub(crate) async fn agent_hello(
    vsock: &Path,
    (timeout, pause): (Duration, Duration),
    exited: impl Future<Output = ExitInfo>,
    what: &str,
) -> Result<AgentSession, GuestError> {
    tokio::select! {
        session = AgentSession::connect_paced(vsock, AGENT_PORT, timeout, pause) => session.map_err(|e| {
            GuestError::at(Step::AgentConnect, format!("the guest agent did not answer: {e}"))
        }),
        exit = exited => Err(GuestError::at(
            Step::AgentConnect,
            format!(
                "the VMM exited ({}) before the guest agent {what}; last output: {}",
                exit.status,
                exit.log_tail.lines().rev().take(4).collect::<Vec<_>>().join(" | ")
            ),
        )),
    }
}

/// The template VM's share of the engine's memory budget, when the budget has room for it now
/// (otherwise no template now: a later cold start asks again).
fn template_memory(
    spec: &GuestSpec,
    mem_mib: u32,
) -> Option<Option<tokio::sync::OwnedSemaphorePermit>> {
    match &spec.memory_budget {
        None => Some(None),
        Some(budget) => budget
            .clone()
            .try_acquire_many_owned(mem_mib)
            .ok()
            .map(Some),
    }
}

/// The start request of a snapshot's template runtime: what Lambda tells a SnapStart runtime.
fn snapshot_start(mut start: StartSpec) -> StartSpec {
    for (name, value) in &mut start.env {
        if name == "AWS_LAMBDA_INITIALIZATION_TYPE" {
            *value = "snap-start".into();
        }
    }
    start
}

/// The function's code (or its merged layers) as a read-only ext4 image next to its directory
/// (`<entry>.ext4`), made once and shared by every VM with that code.
pub(crate) async fn code_image(code_dir: &Path) -> Result<PathBuf, GuestError> {
    let image = code_dir.with_extension("ext4");
    if image.is_file() {
        return Ok(image);
    }
    let (dir, target) = (code_dir.to_path_buf(), image.clone());
    tokio::task::spawn_blocking(move || {
        // Made under a unique name and renamed: two cold starts of the same code never see half an
        // image.
        let staging = target.with_extension(format!("ext4.{}", uuid::Uuid::new_v4().simple()));
        let made = voltrun_vm::image_build::make_ext4(&dir, &staging, "code").and_then(|()| {
            std::fs::rename(&staging, &target).map_err(|e| {
                voltrun_vm::image_build::BuildError::Tool(format!("renaming the image: {e}"))
            })
        });
        if made.is_err() {
            let _ = std::fs::remove_file(&staging);
        }
        made
    })
    .await
    .map_err(|e| GuestError::at(Step::Prepare, e))?
    .map_err(|e| GuestError::at(Step::Prepare, format!("making the code image: {e}")))?;
    Ok(image)
}

/// One guest serving one runtime: the engine's view of a microVM instance.
#[derive(Debug)]
pub struct GuestInstance {
    /// `None` once the guest has ended (a timeout, a crash, a lost connection): the instance is
    /// then no longer healthy.
    guest: Option<Guest>,
    /// Lines taken from a guest that was stopped before the engine collected them.
    orphaned_logs: Vec<LogLine>,
    /// The guest was restored from a snapshot with its runtime initialised.
    restored: bool,
}

impl GuestInstance {
    /// Launches a guest and starts the runtime in it; ready when the runtime asks for its first
    /// invocation. On failure, returns what the runtime wrote meanwhile.
    pub async fn start(
        launcher: &dyn GuestLauncher,
        spec: GuestSpec,
    ) -> Result<Self, (Failure, Vec<LogLine>)> {
        let mut guest = launcher
            .launch(&spec)
            .await
            .map_err(|e| (Failure::Sandbox(e.to_string()), vec![]))?;
        // A guest restored from a snapshot has its runtime initialised and waiting.
        let restored = guest.session.runtime_ready();
        let init_timeout = launcher.init_timeout();
        let outcome = if restored {
            guest.session.resume(init_timeout).await
        } else {
            guest
                .session
                .start(launcher.start_spec(&spec), init_timeout)
                .await
        };
        let failure = match outcome {
            Ok(StartOutcome::Ready { .. }) => {
                return Ok(Self {
                    guest: Some(guest),
                    orphaned_logs: Vec::new(),
                    restored,
                });
            }
            Ok(StartOutcome::InitError {
                error_type,
                message,
            }) => Failure::Init(InitFailure {
                error_type,
                message,
            }),
            Ok(StartOutcome::Exited {
                status,
                out_of_memory,
            }) => Failure::Exited {
                status,
                out_of_memory,
            },
            Err(SessionError::Timeout { .. }) => Failure::TimedOut,
            Err(e) => Failure::Sandbox(e.to_string()),
        };
        let logs = log_lines(guest.session.take_logs());
        guest.body.stop().await;
        Err((failure, logs))
    }

    pub fn is_healthy(&self) -> bool {
        self.guest.is_some()
    }

    pub fn restored(&self) -> bool {
        self.restored
    }

    /// The runtime's peak resident memory during the last invocation, as the guest's agent saw it.
    pub fn memory_peak_mb(&self) -> Option<i64> {
        let bytes = self.guest.as_ref()?.session.memory_peak_bytes()?;
        Some(i64::try_from(bytes >> 20).unwrap_or(i64::MAX))
    }

    /// Runs one invocation. A timeout or a broken connection ends the guest before this returns.
    pub async fn invoke(
        &mut self,
        request_id: &str,
        event: Bytes,
        deadline_unix_ms: i64,
        timeout: Duration,
        function_arn: &str,
    ) -> InvokeResult {
        let Some(guest) = self.guest.as_mut() else {
            return InvokeResult::Failed(Failure::Sandbox("the microVM is gone".into()));
        };
        let outcome = guest
            .session
            .invoke(
                request_id,
                event.to_vec(),
                deadline_unix_ms,
                function_arn,
                timeout,
            )
            .await;
        // Replies leave the guest warm; every failure ends it.
        let failure = match outcome {
            Ok(InvokeOutcome::Response(payload)) => {
                return InvokeResult::Replied(RuntimeReply::Response(Bytes::from(payload)));
            }
            Ok(InvokeOutcome::Error {
                error_type,
                message,
            }) => {
                return InvokeResult::Replied(RuntimeReply::Error {
                    error_type,
                    message,
                });
            }
            Ok(InvokeOutcome::TooLarge(size)) => {
                return InvokeResult::Replied(RuntimeReply::ResponseTooLarge(
                    usize::try_from(size).unwrap_or(usize::MAX),
                ));
            }
            Ok(InvokeOutcome::Exited {
                status,
                out_of_memory,
            }) => Failure::Exited {
                status,
                out_of_memory,
            },
            Err(SessionError::Timeout { .. }) => Failure::TimedOut,
            Err(e) => Failure::Sandbox(format!("the microVM's agent: {e}")),
        };
        // The whole guest goes, with every process in it, before the caller hears of it.
        self.stop_guest().await;
        InvokeResult::Failed(failure)
    }

    /// The lines the runtime wrote since the last call. The agent sends an invocation's lines
    /// before its result, so they are all here once the result is.
    pub fn finish_logs(&mut self) -> Vec<LogLine> {
        let mut lines = std::mem::take(&mut self.orphaned_logs);
        if let Some(guest) = self.guest.as_mut() {
            lines.extend(log_lines(guest.session.take_logs()));
        }
        lines
    }

    async fn stop_guest(&mut self) {
        if let Some(mut guest) = self.guest.take() {
            self.orphaned_logs
                .extend(log_lines(guest.session.take_logs()));
            guest.session.shutdown().await;
            guest.body.stop().await;
        }
    }

    pub async fn stop(mut self) {
        self.stop_guest().await;
    }
}

fn log_lines(entries: Vec<voltrun_agent::host::LogEntry>) -> Vec<LogLine> {
    entries
        .into_iter()
        .map(|entry| LogLine {
            // The guest's clock, set from the host's at boot and at every resume.
            timestamp: chrono::DateTime::from_timestamp_millis(entry.unix_ms)
                .unwrap_or_else(Utc::now),
            stream: match entry.stream {
                Stream::Stdout => LogStream::Stdout,
                Stream::Stderr => LogStream::Stderr,
            },
            line: entry.line,
        })
        .collect()
}
