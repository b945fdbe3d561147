//! The Firecracker launcher: one microVM per guest, booted from the verified image set through
//! [`VmManager`] (jailed where configured), or restored from a snapshot of an initialised guest of
//! the same configuration when [`SnapshotStore`] has one. The first cold start of a configuration
//! makes that snapshot from a template VM of its own, with memory the scheduler lends.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use voltrun_agent::host::{AgentSession, StartOutcome};
use voltrun_agent::protocol::StartSpec;
use voltrun_agent::vsock;
use voltrun_vm::images::Manifest;
use voltrun_vm::jailer::JailerConfig;
use voltrun_vm::{ManagerConfig, Snapshot, Vm, VmManager, VmSpec};

use super::snapshots::SnapshotStore;
use super::{
    Guest, GuestBody, GuestError, GuestImages, GuestLauncher, GuestSpec, Step, agent_hello,
    guest_images, guest_vm_spec, warn_of_leftovers,
};
use crate::isolation::{INIT_TIMEOUT, Reservation};

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

/// The template VM's share of the scheduler's memory budget, when the budget has room for it now
/// (otherwise no template now: a later cold start asks again).
fn template_memory(spec: &GuestSpec, mem_mib: u32) -> Option<Option<Reservation>> {
    match &spec.capacity {
        None => Some(None),
        Some(capacity) => capacity.try_reserve(mem_mib).map(Some),
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
