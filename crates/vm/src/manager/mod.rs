//! The VM manager: one Firecracker process per microVM, started directly or through the jailer,
//! configured over its API socket, watched until it exits, and cleaned up after.
//!
//! Every VM owns a directory `<run_dir>/<vm id>/` holding its record (`vm.json`: what was created
//! on the host for it), the VMM's output (`firecracker.log`) and, when not jailed, its sockets and
//! scratch disk. Jailed VMs keep those inside the jail instead. A watcher task owns the process:
//! when it exits — stopped, crashed or killed from outside — the watcher removes everything the VM
//! created (directories, sockets, scratch disk, jail, cgroups, network namespace) and publishes how
//! it ended. A server that dies without stopping its VMs leaves records behind: the next manager to
//! take the run directory's lock kills the VMMs they name and removes the rest ([`SweepReport`]).
//!
//! This module owns the manager itself: its configuration, the run directory's lock, and spawning a
//! VMM. The rest is split by what it deals with on the host:
//!
//! - `spec`: what a VM is made of ([`VmSpec`]);
//! - `layout`: where a VM's files are, jailed or not, as the host and as Firecracker see them;
//! - `vm`: the handle on one running VMM ([`Vm`]) and its configuration over the API;
//! - `drives`: the drives a VM gets, planned once for configuring and for checking;
//! - `snapshot`: taking a snapshot of a running VM and restoring one into a new VMM;
//! - `watcher`: the task that owns a VMM process and publishes how it ended;
//! - `cleanup`: removing what a VM left, on exit, on a failed spawn, and in the start-up sweep;
//! - `host`: the host tools the manager runs (`mkfs.ext4`, `ip`, `cp`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::api::ApiClient;
use crate::error::{Step, VmError};
use crate::jailer::{JailerConfig, jailer_args};

mod cleanup;
mod drives;
mod host;
mod layout;
mod snapshot;
mod spec;
mod vm;
mod watcher;

pub use cleanup::SweepReport;
pub use snapshot::Snapshot;
pub use spec::VmSpec;
pub use vm::{Timings, Vm};
pub use watcher::ExitInfo;

pub(crate) use host::make_ext4_disk;
pub(crate) use watcher::{tail, wait_for_exit};

use cleanup::{Prepared, Record};
use host::run_ip;
use layout::{API_SOCKET, LOG_FILE, Layout, RECORD_FILE, VM_PREFIX};
use watcher::watch_process;

/// The lock file that makes one manager the owner of a run directory.
const LOCK_FILE: &str = "manager.lock";
/// Guest CIDs 0–2 are reserved (hypervisor, local, host).
const FIRST_GUEST_CID: u32 = 3;

/// How the manager runs VMs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Where VM directories live; the manager locks it.
    pub run_dir: PathBuf,
    pub firecracker: PathBuf,
    /// Run each VMM through the jailer, when set.
    pub jailer: Option<JailerConfig>,
    /// How long the API socket may take to answer after the process starts.
    pub api_timeout: Duration,
}

impl ManagerConfig {
    pub fn new(run_dir: impl Into<PathBuf>, firecracker: impl Into<PathBuf>) -> Self {
        Self {
            run_dir: run_dir.into(),
            firecracker: firecracker.into(),
            jailer: None,
            api_timeout: Duration::from_secs(5),
        }
    }
}

/// Owns the run directory: holds its lock for as long as it lives.
#[derive(Debug)]
pub struct VmManager {
    config: ManagerConfig,
    _lock: std::fs::File,
    next_cid: AtomicU32,
}

impl VmManager {
    /// Takes the run directory (creating it) and sweeps what crashed managers left in it.
    pub async fn new(mut config: ManagerConfig) -> Result<(Self, SweepReport), VmError> {
        // Each VMM runs in its VM's directory: a relative binary or run directory would not be
        // found from there.
        for path in [&mut config.firecracker, &mut config.run_dir] {
            *path = std::path::absolute(&*path)
                .map_err(|e| VmError::io(Step::Prepare, "resolving", path.clone(), e))?;
        }
        if let Some(jailer) = &mut config.jailer {
            jailer.jailer = std::path::absolute(&jailer.jailer)
                .map_err(|e| VmError::io(Step::Prepare, "resolving", &jailer.jailer, e))?;
        }
        std::fs::create_dir_all(&config.run_dir)
            .map_err(|e| VmError::io(Step::Prepare, "creating", &config.run_dir, e))?;
        if let Some(jailer) = &config.jailer {
            // The jailer canonicalises its chroot base, so it must exist.
            std::fs::create_dir_all(&jailer.chroot_base)
                .map_err(|e| VmError::io(Step::Prepare, "creating", &jailer.chroot_base, e))?;
        }
        let lock = lock_run_dir(&config.run_dir)?;
        let manager = Self {
            config,
            _lock: lock,
            next_cid: AtomicU32::new(FIRST_GUEST_CID),
        };
        let report = cleanup::sweep(&manager.config.run_dir).await;
        if !report.vms.is_empty() {
            tracing::warn!(
                vms = ?report.vms,
                killed = ?report.killed,
                errors = ?report.errors,
                "removed microVMs left by a previous run"
            );
        }
        Ok((manager, report))
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// Starts a VMM for `spec` and waits until its API answers. Nothing is configured yet.
    pub async fn spawn(&self, spec: VmSpec) -> Result<Vm, VmError> {
        spec.validate()?;
        let started = Instant::now();
        let id = format!(
            "{VM_PREFIX}{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        let (layout, jail) = Layout::new(&self.config, &id, spec.mem_mib);
        std::fs::create_dir(&layout.dir)
            .map_err(|e| VmError::io(Step::Prepare, "creating", &layout.dir, e))?;
        let record = Record {
            id: id.clone(),
            jail_dir: jail.as_ref().map(|j| j.jail_dir.clone()),
            cgroups: jail.as_ref().map(|j| j.cgroups.clone()).unwrap_or_default(),
            netns: jail
                .as_ref()
                .and_then(|j| j.netns.as_ref().map(|(name, _)| name.clone())),
        };
        // From here on, anything that fails must undo what was done: `Prepared` does on drop.
        let mut prepared = Prepared::new(layout.dir.clone(), record.clone());
        let record_path = layout.dir.join(RECORD_FILE);
        let json = serde_json::to_vec(&record).map_err(|e| VmError::Protocol {
            step: Step::Prepare,
            detail: e.to_string(),
        })?;
        std::fs::write(&record_path, json)
            .map_err(|e| VmError::io(Step::Prepare, "writing", &record_path, e))?;
        if let Some(name) = &record.netns {
            run_ip(&["netns", "add", name]).await?;
        }
        let log_path = layout.dir.join(LOG_FILE);
        let log = std::fs::File::create(&log_path)
            .map_err(|e| VmError::io(Step::Spawn, "creating", &log_path, e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| VmError::io(Step::Spawn, "opening", &log_path, e))?;
        let mut command = match &self.config.jailer {
            Some(jailer) => {
                let mut c = tokio::process::Command::new(&jailer.jailer);
                c.args(jailer_args(
                    jailer,
                    &id,
                    &self.config.firecracker,
                    spec.mem_mib,
                ));
                c
            }
            None => {
                let mut c = tokio::process::Command::new(&self.config.firecracker);
                // Relative to its working directory (the VM's): a socket path must fit in 108 bytes,
                // which a deep data directory would not.
                c.arg("--api-sock")
                    .arg(API_SOCKET)
                    .arg("--id")
                    .arg(&id)
                    .current_dir(&layout.dir);
                c
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true);
        let program = self
            .config
            .jailer
            .as_ref()
            .map_or(&self.config.firecracker, |j| &j.jailer);
        let child = command
            .spawn()
            .map_err(|e| VmError::io(Step::Spawn, "starting", program, e))?;
        let pid = child.id().unwrap_or(0);
        let (exit_tx, exit_rx) = watch::channel(None);
        let (kill_tx, kill_rx) = oneshot::channel();
        tokio::spawn(watch_process(
            child,
            kill_rx,
            exit_tx,
            layout.dir.clone(),
            prepared.take(),
        ));
        let mut vm = Vm {
            id,
            pid,
            spec,
            guest_cid: self.next_guest_cid(),
            api: ApiClient::new(&layout.api_socket),
            layout,
            kill: Some(kill_tx),
            exit: exit_rx,
            timings: Timings::default(),
        };
        vm.wait_api_ready(self.config.api_timeout).await?;
        vm.timings.api_ready = Some(started.elapsed());
        Ok(vm)
    }

    fn next_guest_cid(&self) -> u32 {
        // Firecracker's vsock is a per-VM emulation over Unix sockets, so CIDs need not be unique
        // host-wide; distinct ones make logs easier to follow.
        let cid = self.next_cid.fetch_add(1, Ordering::Relaxed);
        if cid < FIRST_GUEST_CID {
            self.next_cid.store(FIRST_GUEST_CID + 1, Ordering::Relaxed);
            FIRST_GUEST_CID
        } else {
            cid
        }
    }
}

/// Takes the run directory for this process (an exclusive `flock` on its lock file, held while the
/// returned file lives): what is left in it then belongs to a dead server, and a second server on
/// the same directory is refused rather than allowed to sweep the first one's VMs.
pub(crate) fn lock_run_dir(run_dir: &Path) -> Result<std::fs::File, VmError> {
    let lock_path = run_dir.join(LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| VmError::io(Step::Prepare, "opening", &lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(VmError::RunDirInUse(run_dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(VmError::io(Step::Prepare, "locking", &lock_path, e))
        }
    }
}
