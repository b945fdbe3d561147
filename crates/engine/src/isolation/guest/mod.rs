//! The guest backends: each instance is a guest (a microVM) whose agent starts the same bootstraps
//! the namespace backend runs, serves them the same Lambda Runtime API on the guest's own loopback,
//! and carries invocations, results, errors and log lines over vsock.
//!
//! Only how a guest comes to be differs between them: a [`GuestLauncher`] makes guests, and
//! [`GuestIsolation`] makes any launcher an [`Isolation`] backend. [`FirecrackerLauncher`] is the
//! real one (a VM per guest through [`voltrun_vm::VmManager`], restored from [`snapshots`] where it
//! can); [`EmulatedLauncher`] boots the same guests under QEMU's emulation. Tests that cannot boot
//! a Linux guest on their host launch the agent as a host process behind the same handshake, through
//! this same trait.

mod emulated;
mod firecracker;
mod instance;
mod snapshots;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use voltrun_agent::host::AgentSession;
use voltrun_agent::protocol::StartSpec;
use voltrun_agent::vsock::AGENT_PORT;
/// The steps a guest's errors name (the VM manager's).
pub use voltrun_vm::Step;
use voltrun_vm::images::Manifest;
use voltrun_vm::{ExitInfo, VmSpec};

pub use self::emulated::{EmulatedConfig, EmulatedLauncher};
pub use self::firecracker::{FirecrackerConfig, FirecrackerLauncher};
pub use self::instance::GuestInstance;
use super::{Capacity, INIT_TIMEOUT, InstanceSpec, Isolation, RunningInstance, StartError};

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
    /// The scheduler's memory budget: a launcher that runs VMs of its own beside the instance's (a
    /// snapshot's template) takes their memory from it, or does not run them; `None`: no limit.
    pub capacity: Option<Arc<dyn Capacity>>,
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

/// Says what an ended guest left on the host that could not be removed.
pub(crate) fn warn_of_leftovers(exit: &ExitInfo) {
    if !exit.cleanup_errors.is_empty() {
        tracing::warn!(errors = ?exit.cleanup_errors, "a microVM left files behind");
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

/// Any [`GuestLauncher`] as an isolation backend.
#[derive(Debug)]
pub struct GuestIsolation {
    launcher: Arc<dyn GuestLauncher>,
    /// The runtimes it has guest images for.
    runtimes: Vec<String>,
}

impl GuestIsolation {
    pub fn new(launcher: Arc<dyn GuestLauncher>) -> Self {
        Self {
            runtimes: launcher.runtimes(),
            launcher,
        }
    }
}

#[async_trait]
impl Isolation for GuestIsolation {
    fn backend(&self) -> &'static str {
        self.launcher.backend()
    }

    fn describe(&self) -> String {
        self.launcher.describe()
    }

    fn runs(&self, runtime: &str) -> bool {
        self.runtimes.iter().any(|r| r == runtime)
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Box<dyn RunningInstance>, StartError> {
        let spec = GuestSpec {
            name: spec.name.clone(),
            runtime: spec.runtime.id.clone(),
            memory_mb: spec.memory_mb,
            tmp_mb: u32::try_from(spec.tmp_mb).unwrap_or(512),
            code_dir: spec.code_dir.clone(),
            opt_dir: spec.opt_dir.clone(),
            command: spec.process.command.clone(),
            env: spec.process.env.clone(),
            runtime_api_port: spec.runtime_api_port,
            max_processes: u32::try_from(spec.max_processes).unwrap_or(u32::MAX),
            capacity: Some(spec.capacity.clone()),
        };
        let instance = GuestInstance::start(self.launcher.as_ref(), spec).await?;
        Ok(Box::new(instance))
    }

    fn code_removed(&self, code_dir: &Path) {
        self.launcher.code_removed(code_dir);
    }
}
