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

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::api::{ApiClient, BootSource, Drive, MachineConfig, VmConfig, Vsock};
use crate::error::{Step, VmError};
use crate::jailer::{JailPaths, JailerConfig, jail_paths, jailer_args};

/// The lock file that makes one manager the owner of a run directory.
const LOCK_FILE: &str = "manager.lock";
const RECORD_FILE: &str = "vm.json";
const LOG_FILE: &str = "firecracker.log";
/// A non-jailed VMM's API socket, in the VM's directory.
const API_SOCKET: &str = "api.sock";
/// VM directories start with this; nothing else in the run directory is touched by the sweep.
const VM_PREFIX: &str = "vm-";
/// The most of the VMM's output quoted in an error.
const LOG_TAIL_BYTES: usize = 2048;
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

/// A sparse file of `mib` MiB with an empty ext4 file system: a guest's scratch disk (`/tmp`).
pub(crate) async fn make_ext4_disk(path: &Path, mib: u32) -> Result<(), VmError> {
    let step = Step::ConfigureDrive;
    let file = std::fs::File::create(path)
        .map_err(|e| VmError::io(step, "creating the scratch disk", path, e))?;
    file.set_len(u64::from(mib) << 20)
        .map_err(|e| VmError::io(step, "sizing the scratch disk", path, e))?;
    drop(file);
    let output = tokio::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| VmError::io(step, "running mkfs.ext4 (e2fsprogs) for", path, e))?;
    if !output.status.success() {
        return Err(VmError::InvalidSpec {
            step,
            detail: format!(
                "mkfs.ext4 failed for the scratch disk: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// What one VM is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub vcpu_count: u8,
    pub mem_mib: u32,
    /// An uncompressed ELF kernel (`vmlinux`).
    pub kernel: PathBuf,
    pub boot_args: String,
    pub initrd: Option<PathBuf>,
    /// The runtime's root image, attached read-only and shared by all VMs.
    pub rootfs: PathBuf,
    /// A per-VM writable ext4 disk of this size (`/dev/vdb` in the guest); `0` for none.
    pub scratch_mib: u32,
    /// The function's code as an ext4 image, attached read-only (`/dev/vdc`, which the guest agent
    /// mounts at `/var/task`). Drives are lettered in the order they are attached, so a code drive
    /// needs the scratch disk before it.
    pub code: Option<PathBuf>,
    /// The function's layers, merged, as an ext4 image attached read-only (`/dev/vdd`, which the
    /// guest agent mounts at `/opt`); needs the code drive before it.
    pub layers: Option<PathBuf>,
}

/// Memory that gives one full vCPU, as on Lambda.
const MIB_PER_VCPU: u32 = 1769;

impl VmSpec {
    /// The vCPU count for a function's memory size: one per 1,769 MiB, at least one, at most 8.
    pub fn vcpus_for_memory(mem_mib: u32) -> u8 {
        u8::try_from(mem_mib.div_ceil(MIB_PER_VCPU).clamp(1, 8)).unwrap_or(1)
    }

    fn validate(&self) -> Result<(), VmError> {
        let invalid = |detail: String| VmError::InvalidSpec {
            step: Step::Prepare,
            detail,
        };
        if self.mem_mib < 16 {
            return Err(invalid(format!(
                "{} MiB of memory is too little",
                self.mem_mib
            )));
        }
        if self.code.is_some() && self.scratch_mib == 0 {
            return Err(invalid(
                "a code drive needs a scratch disk: the guest finds the code as the third drive"
                    .into(),
            ));
        }
        if self.layers.is_some() && self.code.is_none() {
            return Err(invalid(
                "a layers drive needs a code drive: the guest finds the layers as the fourth drive"
                    .into(),
            ));
        }
        let code = self.code.iter().map(|c| ("code image", c));
        let layers = self.layers.iter().map(|l| ("layers image", l));
        for (what, path) in [("kernel", &self.kernel), ("root image", &self.rootfs)]
            .into_iter()
            .chain(code)
            .chain(layers)
        {
            if !path.is_absolute() {
                return Err(invalid(format!(
                    "the {what} path {} is not absolute",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

/// How a VMM process ended.
#[derive(Debug, Clone)]
pub struct ExitInfo {
    /// As `std::process::ExitStatus` prints it (`exit status: 0`, `signal: 9 (SIGKILL)`).
    pub status: String,
    /// Whether the manager asked for it (stop or drop) rather than the process ending on its own.
    pub requested: bool,
    /// The last of the VMM's output.
    pub log_tail: String,
    /// Anything that could not be removed.
    pub cleanup_errors: Vec<String>,
}

/// What a VM left on the host, written before its process starts so a later sweep can undo it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    jail_dir: Option<PathBuf>,
    cgroups: Vec<PathBuf>,
    netns: Option<String>,
}

/// What the start-up sweep found and removed.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    /// Stale VM directories removed.
    pub vms: Vec<String>,
    /// VMM processes still running from them, killed.
    pub killed: Vec<u32>,
    pub errors: Vec<String>,
}

/// Owns the run directory: holds its lock for as long as it lives.
#[derive(Debug)]
pub struct VmManager {
    config: ManagerConfig,
    _lock: std::fs::File,
    next_cid: AtomicU32,
}

/// Where one VM's files are, as the host sees them and as Firecracker sees them (they differ in a
/// jail).
#[derive(Debug, Clone)]
struct Layout {
    dir: PathBuf,
    api_socket: PathBuf,
    /// The directory Firecracker's paths are relative to (`/` unless jailed).
    root: PathBuf,
    jailed: bool,
}

impl Layout {
    /// A host path for something Firecracker will see at `inner` (absolute, in its root).
    fn host(&self, inner: &str) -> PathBuf {
        if self.jailed {
            self.root.join(inner.trim_start_matches('/'))
        } else {
            PathBuf::from(inner)
        }
    }
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
        let report = manager.sweep().await;
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

    /// Everything under the run directory is stale once we hold the lock: kill the VMMs still
    /// running and remove what their records name.
    async fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        let Ok(entries) = std::fs::read_dir(&self.config.run_dir) else {
            return report;
        };
        let stale: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.starts_with(VM_PREFIX).then(|| (name, e.path()))
            })
            .collect();
        if stale.is_empty() {
            return report;
        }
        let processes = vmm_processes();
        for (id, dir) in stale {
            for &(pid, _) in processes.iter().filter(|(_, vm)| *vm == id) {
                match voltrun_sandbox::process::kill(pid) {
                    Ok(()) => report.killed.push(pid),
                    Err(e) => report.errors.push(format!("killing {pid} ({id}): {e}")),
                }
                wait_gone(pid).await;
            }
            let record = std::fs::read(dir.join(RECORD_FILE))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok());
            let record = record.unwrap_or(Record {
                id: id.clone(),
                jail_dir: None,
                cgroups: vec![],
                netns: None,
            });
            report.errors.extend(remove_everything(&dir, &record).await);
            report.vms.push(id);
        }
        report
    }

    fn layout(&self, id: &str, mem_mib: u32) -> (Layout, Option<JailPaths>) {
        let dir = self.config.run_dir.join(id);
        match &self.config.jailer {
            Some(jailer) => {
                let paths = jail_paths(jailer, id, &self.config.firecracker, mem_mib);
                let layout = Layout {
                    dir,
                    api_socket: paths.api_socket.clone(),
                    root: paths.root.clone(),
                    jailed: true,
                };
                (layout, Some(paths))
            }
            None => {
                let layout = Layout {
                    api_socket: dir.join(API_SOCKET),
                    root: PathBuf::from("/"),
                    dir,
                    jailed: false,
                };
                (layout, None)
            }
        }
    }

    /// Starts a VMM for `spec` and waits until its API answers. Nothing is configured yet.
    pub async fn spawn(&self, spec: VmSpec) -> Result<Vm, VmError> {
        spec.validate()?;
        let started = Instant::now();
        let id = format!(
            "{VM_PREFIX}{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        let (layout, jail) = self.layout(&id, spec.mem_mib);
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
        let mut prepared = Prepared {
            dir: layout.dir.clone(),
            record: Some(record.clone()),
        };
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

    /// Starts a VMM and loads `snapshot` into it, resumed: the guest carries on where the snapshot
    /// was taken, with no boot. `spec` is the spec of the VM it was taken from (the root image and
    /// code drive are where they were; the scratch disk is this VM's copy of the snapshot's).
    pub async fn restore(&self, spec: VmSpec, snapshot: &Snapshot) -> Result<Vm, VmError> {
        let mut vm = self.spawn(spec).await?;
        match Self::load(&mut vm, snapshot).await {
            Ok(()) => Ok(vm),
            Err(e) => {
                // Gone, files and all, before the caller hears of it.
                vm.stop().await;
                Err(e)
            }
        }
    }

    async fn load(vm: &mut Vm, snapshot: &Snapshot) -> Result<(), VmError> {
        let started = Instant::now();
        let step = Step::Restore;
        if let Some(disk) = &snapshot.scratch {
            let target = if vm.layout.jailed {
                vm.layout.host(&format!("/{SCRATCH}"))
            } else {
                vm.layout.dir.join(SCRATCH)
            };
            sparse_copy(disk, &target, step).await?;
            if let (true, Some(owner)) = (vm.layout.jailed, vm.jail_owner()) {
                std::os::unix::fs::chown(&target, Some(owner.0), Some(owner.1)).map_err(|e| {
                    VmError::io(
                        step,
                        "handing the scratch disk to the jail user",
                        &target,
                        e,
                    )
                })?;
            }
        }
        if vm.layout.jailed {
            // The snapshot's drives name the jail-relative paths the first VM used: the same images
            // must be there in this jail. (Unjailed, they are the host paths themselves.)
            let (rootfs, code, layers) = (
                vm.spec.rootfs.clone(),
                vm.spec.code.clone(),
                vm.spec.layers.clone(),
            );
            vm.place(&rootfs, ROOTFS_IN_JAIL, step)?;
            if let Some(code) = &code {
                vm.place(code, CODE_IN_JAIL, step)?;
            }
            if let Some(layers) = &layers {
                vm.place(layers, LAYERS_IN_JAIL, step)?;
            }
        }
        let state = vm.place(&snapshot.state, &format!("/{SNAPSHOT_STATE}"), step)?;
        let memory = vm.place(&snapshot.memory, &format!("/{SNAPSHOT_MEMORY}"), step)?;
        let loaded = vm.api.load_snapshot(&state, &memory).await;
        vm.unless_exited(step, loaded).await?;
        vm.timings.restore = Some(started.elapsed());
        Ok(())
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

/// A VM directory prepared but not yet handed to a watcher: removed (with what its record names)
/// if spawning fails.
struct Prepared {
    dir: PathBuf,
    record: Option<Record>,
}

impl Prepared {
    fn take(&mut self) -> Record {
        self.record.take().unwrap_or(Record {
            id: String::new(),
            jail_dir: None,
            cgroups: vec![],
            netns: None,
        })
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            let dir = self.dir.clone();
            // Spawning failed before a process existed: only files and perhaps a netns to undo.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    remove_everything(&dir, &record).await;
                });
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

/// How long the steps took, as measured by the manager.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Process start to the API answering `GET /`.
    pub api_ready: Option<Duration>,
    /// Machine, boot source, drives and vsock configured (including the scratch disk's mkfs).
    pub configure: Option<Duration>,
    /// The `InstanceStart` request.
    pub start: Option<Duration>,
    /// Loading a snapshot into the VMM, resumed (a restored VM is neither configured nor started).
    pub restore: Option<Duration>,
}

/// A full snapshot of a VM, on the host: its device state, its memory and, when it has one, a copy
/// of its scratch disk as it was (the guest's page cache in the memory file refers to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub state: PathBuf,
    pub memory: PathBuf,
    pub scratch: Option<PathBuf>,
}

impl Snapshot {
    /// The snapshot [`Vm::snapshot`] wrote into `dir`, if its state and memory files are there.
    pub fn in_dir(dir: &Path) -> Option<Self> {
        let state = dir.join(SNAPSHOT_STATE);
        let memory = dir.join(SNAPSHOT_MEMORY);
        if !state.is_file() || !memory.is_file() {
            return None;
        }
        let scratch = Some(dir.join(SCRATCH)).filter(|s| s.is_file());
        Some(Self {
            state,
            memory,
            scratch,
        })
    }
}

const SNAPSHOT_STATE: &str = "snapshot.state";
const SNAPSHOT_MEMORY: &str = "snapshot.mem";

/// One microVM. Dropping it kills the VMM (the watcher then cleans up); [`Vm::stop`] does the same
/// and waits until everything is gone.
#[derive(Debug)]
pub struct Vm {
    id: String,
    pid: u32,
    spec: VmSpec,
    guest_cid: u32,
    api: ApiClient,
    layout: Layout,
    kill: Option<oneshot::Sender<()>>,
    exit: watch::Receiver<Option<ExitInfo>>,
    timings: Timings,
}

/// What Firecracker sees inside a jail.
const KERNEL_IN_JAIL: &str = "/kernel";
const INITRD_IN_JAIL: &str = "/initrd";
const ROOTFS_IN_JAIL: &str = "/rootfs.ext4";
const CODE_IN_JAIL: &str = "/code.ext4";

/// One of a VM's drives, in the order the guest letters them (`vda`, `vdb`, …): what configuring
/// the VM attaches and what `GET /vm/config` should then report.
#[derive(Debug)]
struct PlannedDrive<'a> {
    id: &'static str,
    /// The host image and its path inside a jail; `None` for the VM's own scratch disk.
    image: Option<(&'a Path, &'static str)>,
    root: bool,
    read_only: bool,
}

fn planned_drives<'a>(spec: &'a VmSpec) -> Vec<PlannedDrive<'a>> {
    let image = |id, path: &'a Path, in_jail| PlannedDrive {
        id,
        image: Some((path, in_jail)),
        root: false,
        read_only: true,
    };
    let mut drives = vec![PlannedDrive {
        root: true,
        ..image("rootfs", &spec.rootfs, ROOTFS_IN_JAIL)
    }];
    if spec.scratch_mib > 0 {
        drives.push(PlannedDrive {
            id: "scratch",
            image: None,
            root: false,
            read_only: false,
        });
    }
    for (id, path, in_jail) in [
        ("code", &spec.code, CODE_IN_JAIL),
        ("layers", &spec.layers, LAYERS_IN_JAIL),
    ] {
        if let Some(path) = path {
            drives.push(image(id, path, in_jail));
        }
    }
    drives
}
const LAYERS_IN_JAIL: &str = "/layers.ext4";
const SCRATCH: &str = "scratch.ext4";
const VSOCK: &str = "vsock.sock";

impl Vm {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The VMM's process id (the jailer execs into Firecracker, so the same process).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    pub fn guest_cid(&self) -> u32 {
        self.guest_cid
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// The VM's own directory on the host.
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// The host side of the VM's vsock device: connect here and send `CONNECT <port>\n`.
    pub fn vsock_path(&self) -> PathBuf {
        if self.layout.jailed {
            self.layout.host(&self.vsock_inner())
        } else {
            self.layout.dir.join(VSOCK)
        }
    }

    /// The vsock socket as the VMM names it: relative to its working directory (the VM's directory,
    /// or the jail's root), so that a snapshot, which records the name, restores into another VM's
    /// directory rather than onto the socket of the VM it was taken from.
    fn vsock_inner(&self) -> String {
        if self.layout.jailed {
            format!("/{VSOCK}")
        } else {
            VSOCK.to_string()
        }
    }

    /// Whether the process has exited, and how.
    pub fn exit_info(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }

    /// Waits for the process to exit (and its files to be removed).
    pub async fn wait_exit(&self) -> ExitInfo {
        wait_for_exit(&self.exit).await
    }

    fn exited_error(&self, step: Step) -> Option<VmError> {
        self.exit_info().map(|info| VmError::Exited {
            step,
            status: info.status,
            log: info.log_tail,
        })
    }

    /// `result` of an API call at `step`, except that a transport error from a VMM that has died
    /// meanwhile becomes [`VmError::Exited`]: why the VMM ended says more than the broken socket.
    async fn unless_exited<T>(&self, step: Step, result: Result<T, VmError>) -> Result<T, VmError> {
        if let Err(VmError::Transport { .. }) = &result {
            // The exit is reaped a moment after the socket breaks.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(error) = self.exited_error(step) {
                return Err(error);
            }
        }
        result
    }

    async fn wait_api_ready(&mut self, timeout: Duration) -> Result<(), VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(error) = self.exited_error(Step::ApiReady) {
                return Err(error);
            }
            if self.layout.api_socket.exists() && self.api.ping().await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VmError::ApiTimeout {
                    step: Step::ApiReady,
                    waited: timeout,
                    log: tail(&self.layout.dir.join(LOG_FILE)),
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Configures machine, boot source, drives (read-only root image, writable scratch disk) and the
    /// vsock device. No network interface is configured.
    pub async fn configure(&mut self) -> Result<(), VmError> {
        let started = Instant::now();
        let spec = self.spec.clone();
        let result = self.configure_inner(&spec).await;
        // A refusal may come from the VMM having died meanwhile: say so rather than quote the
        // transport error.
        let step = match &result {
            Err(VmError::Transport { step, .. }) => *step,
            _ => Step::ConfigureMachine,
        };
        self.unless_exited(step, result).await?;
        self.timings.configure = Some(started.elapsed());
        Ok(())
    }

    async fn configure_inner(&mut self, spec: &VmSpec) -> Result<(), VmError> {
        self.api
            .put_machine_config(&MachineConfig {
                vcpu_count: spec.vcpu_count,
                mem_size_mib: spec.mem_mib,
                smt: false,
                track_dirty_pages: false,
            })
            .await?;
        let kernel = self.place(&spec.kernel, KERNEL_IN_JAIL, Step::ConfigureBootSource)?;
        let initrd = spec
            .initrd
            .as_ref()
            .map(|i| self.place(i, INITRD_IN_JAIL, Step::ConfigureBootSource))
            .transpose()?;
        self.api
            .put_boot_source(&BootSource {
                kernel_image_path: kernel,
                boot_args: Some(spec.boot_args.clone()),
                initrd_path: initrd,
            })
            .await?;
        for drive in planned_drives(spec) {
            let path_on_host = match drive.image {
                Some((host, in_jail)) => self.place(host, in_jail, Step::ConfigureDrive)?,
                None => self.make_scratch(spec.scratch_mib).await?,
            };
            self.api
                .put_drive(&Drive {
                    drive_id: drive.id.into(),
                    path_on_host,
                    is_root_device: drive.root,
                    is_read_only: drive.read_only,
                })
                .await?;
        }
        self.api
            .put_vsock(&Vsock {
                guest_cid: self.guest_cid,
                uds_path: self.vsock_inner(),
            })
            .await
    }

    /// Makes a host file visible to Firecracker and returns the path it uses: the file itself when
    /// not jailed; a hard link inside the jail otherwise (a copy across file systems).
    fn place(&self, source: &Path, inner: &str, step: Step) -> Result<String, VmError> {
        if !self.layout.jailed {
            return Ok(source.display().to_string());
        }
        let target = self.layout.host(inner);
        if std::fs::hard_link(source, &target).is_err() {
            std::fs::copy(source, &target)
                .map_err(|e| VmError::io(step, "copying into the jail", source, e))?;
        }
        Ok(inner.to_string())
    }

    /// Creates the VM's scratch disk: a sparse file with an empty ext4 file system.
    async fn make_scratch(&self, mib: u32) -> Result<String, VmError> {
        let (inner, host) = if self.layout.jailed {
            let inner = format!("/{SCRATCH}");
            let host = self.layout.host(&inner);
            (inner, host)
        } else {
            // Relative to the VMM's working directory (the VM's), as the vsock socket is: a snapshot
            // restored into another VM's directory then finds that VM's copy of the disk.
            (SCRATCH.to_string(), self.layout.dir.join(SCRATCH))
        };
        let step = Step::ConfigureDrive;
        make_ext4_disk(&host, mib).await?;
        if let (true, Some(jailer)) = (self.layout.jailed, self.jail_owner()) {
            std::os::unix::fs::chown(&host, Some(jailer.0), Some(jailer.1)).map_err(|e| {
                VmError::io(step, "handing the scratch disk to the jail user", &host, e)
            })?;
        }
        Ok(inner)
    }

    /// The jail's uid and gid, read from the jail root the jailer created and handed over.
    fn jail_owner(&self) -> Option<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.layout.root)
            .ok()
            .map(|m| (m.uid(), m.gid()))
    }

    /// Issues `InstanceStart`.
    pub async fn start(&mut self) -> Result<(), VmError> {
        let started = Instant::now();
        let result = self.api.instance_start().await;
        self.unless_exited(Step::Start, result).await?;
        self.timings.start = Some(started.elapsed());
        Ok(())
    }

    /// Pauses the guest, writes a full snapshot into `dir` (which must exist), and resumes the guest.
    pub async fn snapshot(&mut self, dir: &Path) -> Result<Snapshot, VmError> {
        let step = Step::Snapshot;
        self.api.set_paused(true).await?;
        let (state_inner, memory_inner) = if self.layout.jailed {
            (format!("/{SNAPSHOT_STATE}"), format!("/{SNAPSHOT_MEMORY}"))
        } else {
            let at = |name: &str| dir.join(name).display().to_string();
            (at(SNAPSHOT_STATE), at(SNAPSHOT_MEMORY))
        };
        let created = self.api.create_snapshot(&state_inner, &memory_inner).await;
        // The disk is copied while the guest is still paused: it matches the memory image.
        let scratch = match (&created, self.spec.scratch_mib > 0) {
            (Ok(()), true) => {
                let disk = if self.layout.jailed {
                    self.layout.host(&format!("/{SCRATCH}"))
                } else {
                    self.layout.dir.join(SCRATCH)
                };
                let copy = dir.join(SCRATCH);
                sparse_copy(&disk, &copy, step).await?;
                Some(copy)
            }
            _ => None,
        };
        let resumed = self.api.set_paused(false).await;
        created?;
        resumed?;
        let snapshot = Snapshot {
            state: dir.join(SNAPSHOT_STATE),
            memory: dir.join(SNAPSHOT_MEMORY),
            scratch,
        };
        if self.layout.jailed {
            // Written inside the jail: moved out to where the caller asked.
            for (inner, target) in [
                (&state_inner, &snapshot.state),
                (&memory_inner, &snapshot.memory),
            ] {
                let source = self.layout.host(inner);
                if std::fs::rename(&source, target).is_err() {
                    std::fs::copy(&source, target)
                        .and_then(|_| std::fs::remove_file(&source))
                        .map_err(|e| VmError::io(step, "moving out of the jail", &source, e))?;
                }
            }
        }
        Ok(snapshot)
    }

    /// `GET /vm/config`: the configuration Firecracker holds.
    pub async fn read_config(&self) -> Result<VmConfig, VmError> {
        self.api.vm_config().await
    }

    /// What the manager configured, as `GET /vm/config` should report it.
    pub fn expected_config(&self) -> VmConfig {
        let inner = |host: &Path, jailed: &str| {
            if self.layout.jailed {
                jailed.to_string()
            } else {
                host.display().to_string()
            }
        };
        let drives = planned_drives(&self.spec)
            .into_iter()
            .map(|drive| Drive {
                drive_id: drive.id.into(),
                path_on_host: match drive.image {
                    Some((host, in_jail)) => inner(host, in_jail),
                    None if self.layout.jailed => format!("/{SCRATCH}"),
                    None => SCRATCH.to_string(),
                },
                is_root_device: drive.root,
                is_read_only: drive.read_only,
            })
            .collect();
        VmConfig {
            machine_config: MachineConfig {
                vcpu_count: self.spec.vcpu_count,
                mem_size_mib: self.spec.mem_mib,
                smt: false,
                track_dirty_pages: false,
            },
            boot_source: BootSource {
                kernel_image_path: inner(&self.spec.kernel, KERNEL_IN_JAIL),
                boot_args: Some(self.spec.boot_args.clone()),
                initrd_path: self.spec.initrd.as_ref().map(|i| inner(i, INITRD_IN_JAIL)),
            },
            drives,
            vsock: Some(Vsock {
                guest_cid: self.guest_cid,
                uds_path: self.vsock_inner(),
            }),
            network_interfaces: vec![],
        }
    }

    /// Kills the VMM and waits until it has exited and everything the VM created is removed. The VM
    /// holds no state worth a graceful shutdown: its scratch disk is discarded anyway.
    pub async fn stop(mut self) -> ExitInfo {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        self.wait_exit().await
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Dropping the kill sender wakes the watcher, which kills the process and cleans up.
        self.kill.take();
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

/// Waits until a guest's watcher says how its process ended (and its files are removed).
pub(crate) async fn wait_for_exit(exit: &watch::Receiver<Option<ExitInfo>>) -> ExitInfo {
    let unknown = || ExitInfo {
        status: "unknown (the watcher stopped)".into(),
        requested: false,
        log_tail: String::new(),
        cleanup_errors: vec![],
    };
    let mut exit = exit.clone();
    match exit.wait_for(Option::is_some).await {
        Ok(info) => info.clone().unwrap_or_else(unknown),
        Err(_) => unknown(),
    }
}

/// Owns the VMM process: waits for it to exit (or kills it on request or when the [`Vm`] is
/// dropped), then removes what the VM created and publishes how it ended.
async fn watch_process(
    mut child: tokio::process::Child,
    kill: oneshot::Receiver<()>,
    exit: watch::Sender<Option<ExitInfo>>,
    dir: PathBuf,
    record: Record,
) {
    let (status, requested) = tokio::select! {
        status = child.wait() => (status, false),
        _ = kill => {
            let _ = child.start_kill();
            (child.wait().await, true)
        }
    };
    let status = match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    let log_tail = tail(&dir.join(LOG_FILE));
    if !requested {
        tracing::warn!(vm = record.id, status, log = log_tail, "microVM exited");
    }
    let cleanup_errors = remove_everything(&dir, &record).await;
    for error in &cleanup_errors {
        tracing::warn!(vm = record.id, error, "microVM cleanup incomplete");
    }
    let _ = exit.send(Some(ExitInfo {
        status,
        requested,
        log_tail,
        cleanup_errors,
    }));
}

/// The last of a log file, for errors.
pub(crate) fn tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

/// Removes a VM's directory, jail, cgroups and network namespace. Returns what could not be removed.
async fn remove_everything(dir: &Path, record: &Record) -> Vec<String> {
    let mut errors = Vec::new();
    let mut remove_dir = |path: &Path| match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(format!("removing {}: {e}", path.display())),
    };
    if let Some(jail) = &record.jail_dir {
        remove_dir(jail);
    }
    remove_dir(dir);
    // A cgroup can be removed only once its last task is gone, which may lag the exit slightly.
    for cgroup in &record.cgroups {
        let mut last = None;
        for _ in 0..50 {
            match std::fs::remove_dir(cgroup) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(e) = last {
            errors.push(format!("removing cgroup {}: {e}", cgroup.display()));
        }
    }
    if let Some(name) = &record.netns
        && Path::new("/var/run/netns").join(name).exists()
        && let Err(e) = run_ip(&["netns", "delete", name]).await
    {
        errors.push(e.to_string());
    }
    errors
}

async fn run_ip(args: &[&str]) -> Result<(), VmError> {
    let output = tokio::process::Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            VmError::io(
                Step::Prepare,
                "running ip (iproute2) for",
                args.join(" "),
                e,
            )
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(VmError::InvalidSpec {
            step: Step::Prepare,
            detail: format!(
                "ip {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

/// Running Firecracker processes started by a manager, with the VM id they were given (`--id`).
fn vmm_processes() -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let program = args.first()?;
            if !String::from_utf8_lossy(program).contains("firecracker") {
                return None;
            }
            let id = args
                .windows(2)
                .find(|w| w[0] == b"--id")
                .map(|w| String::from_utf8_lossy(w[1]).into_owned())?;
            id.starts_with(VM_PREFIX).then_some((pid, id))
        })
        .collect()
}

async fn wait_gone(pid: u32) {
    let path = PathBuf::from(format!("/proc/{pid}"));
    for _ in 0..200 {
        // A killed child of ours would linger as a zombie; those from a dead server were reparented
        // and are reaped by init. Either way, stop waiting once it no longer runs.
        let state = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !path.exists() || zombie {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Copies a (sparse) disk image keeping its holes: a mostly empty scratch disk stays small.
async fn sparse_copy(source: &Path, target: &Path, step: Step) -> Result<(), VmError> {
    let output = tokio::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(source)
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| VmError::io(step, "running cp for", source, e))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(VmError::io(
            step,
            "copying",
            source,
            std::io::Error::other(String::from_utf8_lossy(&output.stderr).trim().to_string()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpus_follow_memory_like_lambda() {
        assert_eq!(VmSpec::vcpus_for_memory(128), 1);
        assert_eq!(VmSpec::vcpus_for_memory(1769), 1);
        assert_eq!(VmSpec::vcpus_for_memory(1770), 2);
        assert_eq!(VmSpec::vcpus_for_memory(10240), 6);
        assert_eq!(VmSpec::vcpus_for_memory(100_000), 8);
    }
}
