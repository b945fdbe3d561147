//! The emulated guest: the same guest kernel, root image, code drive and agent as a Firecracker
//! microVM, booted by QEMU's `microvm` machine under TCG (pure emulation) on hosts where no VMM can use
//! KVM. QEMU's `microvm` is modelled on Firecracker (direct kernel boot, no firmware, no PCI,
//! virtio-mmio devices declared on the kernel command line), and its vsock device is served by
//! rust-vmm's `vhost-device-vsock`, which speaks Firecracker's hybrid-vsock protocol on a Unix socket:
//! the host side of the agent protocol is exactly the one used with Firecracker.
//!
//! This is a development and test backend. It isolates no better than the VM it emulates, QEMU's
//! device model is not Firecracker's (much larger, and not jailed here), and TCG is one to two orders
//! of magnitude slower than KVM: boot and run times measured with it are emulation figures.
//!
//! Each guest is two processes (the vsock backend, then QEMU) and a directory under the run
//! directory holding their sockets, the scratch disk and their output. A watcher task owns both
//! processes: however the guest ends (stopped, dropped, crashed, or its kernel panicking, which QEMU
//! turns into an exit with `-no-reboot`) it kills both and removes the directory. A directory left by
//! a server that died is swept, its processes killed, when the next emulator takes the run directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::error::{Step, VmError};
use crate::manager::{ExitInfo, VmSpec, lock_run_dir, tail, wait_for_exit};

/// Where `scripts/install-emulator.sh` puts `vhost-device-vsock`, relative to the repository root.
pub const DEFAULT_INSTALL_DIR: &str = "target/emulator/bin";
pub const INSTALL_HINT: &str = "run scripts/install-emulator.sh (installs Debian's qemu-system-x86 and builds vhost-device-vsock into target/emulator/bin), or set QEMU_BIN / VHOST_VSOCK_BIN";

const GUEST_PREFIX: &str = "emu-";
const PIDS_FILE: &str = "pids";
const SCRATCH: &str = "scratch.ext4";
const CONSOLE: &str = "console.log";
const QEMU_LOG: &str = "qemu.log";
const VSOCK_LOG: &str = "vhost-device-vsock.log";
/// The socket QEMU reaches the vsock backend through.
const VHOST_SOCKET: &str = "vhost.sock";
/// The hybrid-vsock socket the host connects to (`CONNECT <port>`), as Firecracker's `vsock.sock`.
const VSOCK_SOCKET: &str = "vsock.sock";
/// How long the vsock backend may take to listen.
const BACKEND_READY: Duration = Duration::from_secs(5);

/// The two programs an emulated guest needs.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub qemu: PathBuf,
    pub vhost_vsock: PathBuf,
    /// Where guest directories live; swept at start.
    pub run_dir: PathBuf,
}

impl EmulatorConfig {
    /// Finds `qemu-system-x86_64` and `vhost-device-vsock`: where the settings say (`QEMU_BIN`,
    /// `VHOST_VSOCK_BIN`: then only there), else on `PATH`, else in `install_dir` (where
    /// `scripts/install-emulator.sh` installs, [`DEFAULT_INSTALL_DIR`]).
    pub fn locate(
        qemu: Option<PathBuf>,
        vhost_vsock: Option<PathBuf>,
        install_dir: &Path,
        run_dir: PathBuf,
    ) -> Result<Self, VmError> {
        let find = |given: Option<PathBuf>,
                    variable: &str,
                    name: &'static str|
         -> Result<PathBuf, VmError> {
            if let Some(path) = given {
                return if is_executable(&path) {
                    Ok(path)
                } else {
                    Err(VmError::Missing {
                        what: name,
                        hint: format!("{variable}={} is not an executable file", path.display()),
                    })
                };
            }
            let on_path = std::env::var_os("PATH")
                .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
                .unwrap_or_default();
            on_path
                .into_iter()
                .chain([install_dir.to_path_buf()])
                .map(|dir| dir.join(name))
                .find(|candidate| is_executable(candidate))
                .ok_or_else(|| VmError::Missing {
                    what: name,
                    hint: INSTALL_HINT.into(),
                })
        };
        Ok(Self {
            qemu: find(qemu, "QEMU_BIN", "qemu-system-x86_64")?,
            vhost_vsock: find(vhost_vsock, "VHOST_VSOCK_BIN", "vhost-device-vsock")?,
            run_dir,
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Boots emulated guests. Owns its run directory: what it finds there at start belongs to a dead
/// server and is removed.
#[derive(Debug)]
pub struct Emulator {
    config: EmulatorConfig,
    _lock: std::fs::File,
}

impl Emulator {
    /// Takes the run directory (refused while another server holds it), killing and removing the
    /// guests a previous server left there. Paths are made absolute: the guests' processes run in
    /// their own directories.
    pub async fn new(mut config: EmulatorConfig) -> Result<Self, VmError> {
        std::fs::create_dir_all(&config.run_dir)
            .map_err(|e| VmError::io(Step::Prepare, "creating", &config.run_dir, e))?;
        for path in [
            &mut config.run_dir,
            &mut config.qemu,
            &mut config.vhost_vsock,
        ] {
            *path = std::path::absolute(&*path)
                .map_err(|e| VmError::io(Step::Prepare, "resolving", &*path, e))?;
        }
        let lock = lock_run_dir(&config.run_dir)?;
        let emulator = Self {
            config,
            _lock: lock,
        };
        emulator.sweep().await;
        Ok(emulator)
    }

    pub fn config(&self) -> &EmulatorConfig {
        &self.config
    }

    async fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.config.run_dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(GUEST_PREFIX) {
                continue;
            }
            let dir = entry.path();
            kill_recorded(&dir).await;
            let _ = std::fs::remove_dir_all(&dir);
            tracing::info!(
                guest = name,
                "removed an emulated guest a previous server left"
            );
        }
    }

    /// Boots `spec` (its `kernel` a bzImage) and returns once QEMU runs; the caller then connects to
    /// the agent through [`EmulatedGuest::vsock_path`]. Every error names its step, and leaves no
    /// process or file behind.
    pub async fn boot(&self, spec: &VmSpec, guest_cid: u32) -> Result<EmulatedGuest, VmError> {
        let id = format!(
            "{GUEST_PREFIX}{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        let dir = self.config.run_dir.join(&id);
        std::fs::create_dir(&dir).map_err(|e| VmError::io(Step::Prepare, "creating", &dir, e))?;
        // From here on the directory is the guard's to remove, on every path.
        let mut guard = Leftovers {
            dir: dir.clone(),
            children: Vec::new(),
        };
        if spec.scratch_mib > 0 {
            crate::manager::make_ext4_disk(&dir.join(SCRATCH), spec.scratch_mib).await?;
        }
        let mut backend = self.spawn_vsock_backend(&dir, guest_cid).await?;
        let qemu = async {
            guard.record(&backend)?;
            wait_for_socket(&dir.join(VHOST_SOCKET), &mut backend, &dir).await?;
            let qemu = tokio::process::Command::new(&self.config.qemu)
                .args(qemu_args(spec, &id))
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log_file(&dir, QEMU_LOG)?)
                .stderr(log_file(&dir, QEMU_LOG)?)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| VmError::io(Step::Spawn, "starting", &self.config.qemu, e))?;
            guard.record(&qemu)?;
            Ok(qemu)
        }
        .await;
        let qemu = match qemu {
            Ok(qemu) => qemu,
            Err(error) => {
                // Dead before the caller hears of it (the guard then removes the directory).
                let _ = backend.kill().await;
                return Err(error);
            }
        };
        let (exit_tx, exit) = watch::channel(None);
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(watch_guest(qemu, backend, guard.disarm(), stop_rx, exit_tx));
        Ok(EmulatedGuest {
            id,
            dir,
            stop: Some(stop_tx),
            exit,
            started: Instant::now(),
        })
    }

    async fn spawn_vsock_backend(
        &self,
        dir: &Path,
        guest_cid: u32,
    ) -> Result<tokio::process::Child, VmError> {
        // Names relative to the guest's directory, its working directory: a Unix socket's path is
        // limited to 107 bytes, and a data directory can be deep.
        tokio::process::Command::new(&self.config.vhost_vsock)
            .arg("--guest-cid")
            .arg(guest_cid.to_string())
            .arg("--socket")
            .arg(VHOST_SOCKET)
            .arg("--uds-path")
            .arg(VSOCK_SOCKET)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log_file(dir, VSOCK_LOG)?)
            .stderr(log_file(dir, VSOCK_LOG)?)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| VmError::io(Step::Spawn, "starting", &self.config.vhost_vsock, e))
    }
}

/// QEMU's command line for `spec`: the `microvm` machine under TCG with the legacy PIT, PIC and RTC
/// (without them the guest kernel can hang calibrating its clock) and no ACPI (then QEMU declares the
/// virtio-mmio devices on the kernel command line, as Firecracker does); guest memory in a shared
/// memfd, which the vhost-user vsock backend maps; the drives in Firecracker's order (root `vda`,
/// scratch `vdb`, code `vdc`, layers `vdd`), and no network device.
fn qemu_args(spec: &VmSpec, id: &str) -> Vec<String> {
    let mem = spec.mem_mib;
    let mut args: Vec<String> = [
        "-M",
        "microvm,accel=tcg,pit=on,pic=on,rtc=on,acpi=off,memory-backend=mem0",
        "-cpu",
        "max",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
    ]
    .map(String::from)
    .to_vec();
    args.extend([
        "-name".into(),
        id.to_string(),
        "-m".into(),
        format!("{mem}M"),
        "-smp".into(),
        spec.vcpu_count.to_string(),
        "-object".into(),
        format!("memory-backend-memfd,id=mem0,size={mem}M,share=on"),
        "-chardev".into(),
        format!("file,id=console,path={CONSOLE}"),
        "-serial".into(),
        "chardev:console".into(),
        "-kernel".into(),
        spec.kernel.display().to_string(),
        "-append".into(),
        spec.boot_args.clone(),
    ]);
    if let Some(initrd) = &spec.initrd {
        args.extend(["-initrd".into(), initrd.display().to_string()]);
    }
    let mut drives = vec![("root", spec.rootfs.clone(), true)];
    if spec.scratch_mib > 0 {
        drives.push(("scratch", PathBuf::from(SCRATCH), false));
    }
    if let Some(code) = &spec.code {
        drives.push(("code", code.clone(), true));
    }
    if let Some(layers) = &spec.layers {
        drives.push(("layers", layers.clone(), true));
    }
    for (name, file, read_only) in drives {
        args.extend([
            "-drive".into(),
            format!(
                "id={name},file={},format=raw,if=none,readonly={}",
                file.display(),
                if read_only { "on" } else { "off" }
            ),
            "-device".into(),
            format!("virtio-blk-device,drive={name}"),
        ]);
    }
    args.extend([
        "-chardev".into(),
        format!("socket,id=vsock,path={VHOST_SOCKET}"),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vsock".into(),
    ]);
    args
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File, VmError> {
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| VmError::io(Step::Prepare, "creating", path, e))
}

/// Waits until the vsock backend listens on `socket`, or says why not.
async fn wait_for_socket(
    socket: &Path,
    backend: &mut tokio::process::Child,
    dir: &Path,
) -> Result<(), VmError> {
    let deadline = Instant::now() + BACKEND_READY;
    loop {
        if socket.exists() {
            return Ok(());
        }
        if let Ok(Some(status)) = backend.try_wait() {
            return Err(VmError::Exited {
                step: Step::Spawn,
                status: format!("vhost-device-vsock {status}"),
                log: tail(&dir.join(VSOCK_LOG)),
            });
        }
        if Instant::now() >= deadline {
            return Err(VmError::Agent {
                step: Step::Spawn,
                detail: format!(
                    "vhost-device-vsock did not listen within {BACKEND_READY:?}; its output: {}",
                    tail(&dir.join(VSOCK_LOG))
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Owns both processes of a running guest until it ends, then removes its directory and says how it
/// ended.
async fn watch_guest(
    mut qemu: tokio::process::Child,
    mut backend: tokio::process::Child,
    dir: PathBuf,
    stop: oneshot::Receiver<()>,
    exit: watch::Sender<Option<ExitInfo>>,
) {
    let (status, requested) = tokio::select! {
        status = qemu.wait() => (status.map_or_else(|e| format!("unknown ({e})"), |s| s.to_string()), false),
        // Without its vsock device the guest is unreachable: it ends too.
        backend_status = backend.wait() => {
            let _ = qemu.kill().await;
            (format!("the vsock backend exited ({})", backend_status.map_or_else(|e| e.to_string(), |s| s.to_string())), false)
        }
        // A stop, or the guest's handle dropped.
        _ = stop => {
            let _ = qemu.kill().await;
            (qemu.wait().await.map_or_else(|e| format!("unknown ({e})"), |s| s.to_string()), true)
        }
    };
    let _ = backend.kill().await;
    let log_tail = format!(
        "{} | {}",
        tail(&dir.join(QEMU_LOG)),
        tail(&dir.join(CONSOLE))
    );
    let mut cleanup_errors = Vec::new();
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        cleanup_errors.push(format!("{}: {e}", dir.display()));
    }
    let _ = exit.send(Some(ExitInfo {
        status,
        requested,
        log_tail,
        cleanup_errors,
    }));
}

/// A guest's directory and processes while it is being brought up: on an early error, everything
/// goes.
struct Leftovers {
    dir: PathBuf,
    /// Recorded so that a sweep after a crash can kill them; killed on drop by `kill_on_drop`.
    children: Vec<u32>,
}

impl Leftovers {
    fn record(&mut self, child: &tokio::process::Child) -> Result<(), VmError> {
        self.children.extend(child.id());
        let list: Vec<String> = self.children.iter().map(u32::to_string).collect();
        let path = self.dir.join(PIDS_FILE);
        std::fs::write(&path, list.join("\n"))
            .map_err(|e| VmError::io(Step::Spawn, "writing", path, e))
    }

    /// The watcher takes over the directory.
    fn disarm(mut self) -> PathBuf {
        std::mem::take(&mut self.dir)
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if self.dir.as_os_str().is_empty() {
            return;
        }
        // The children die with their handles (`kill_on_drop`); the directory goes now.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills the processes a dead server's guest directory records, if they still run that guest (their
/// working directory is the guest's: a recycled pid belongs to someone else).
async fn kill_recorded(dir: &Path) {
    let Ok(pids) = std::fs::read_to_string(dir.join(PIDS_FILE)) else {
        return;
    };
    for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        if std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir) {
            let _ = voltrun_sandbox::process::kill(pid);
        }
    }
}

/// A running emulated guest. Dropping it ends the guest as [`EmulatedGuest::stop`] does, without
/// waiting.
#[derive(Debug)]
pub struct EmulatedGuest {
    id: String,
    dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    exit: watch::Receiver<Option<ExitInfo>>,
    started: Instant,
}

impl EmulatedGuest {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The hybrid-vsock socket: connect, write `CONNECT <port>\n`, read `OK <port>\n`.
    pub fn vsock_path(&self) -> PathBuf {
        self.dir.join(VSOCK_SOCKET)
    }

    /// The guest's directory (its sockets, scratch disk and output), removed when it ends.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last of the guest's console (its kernel's messages), for errors.
    pub fn console_tail(&self) -> String {
        tail(&self.dir.join(CONSOLE))
    }

    /// Waits until the guest's console shows `line` (then true), QEMU has exited, or `deadline`.
    pub async fn wait_for_console(&self, line: &str, deadline: Instant) -> bool {
        let console = self.dir.join(CONSOLE);
        loop {
            let text = std::fs::read(&console).unwrap_or_default();
            if String::from_utf8_lossy(&text).contains(line) {
                return true;
            }
            if self.exit.borrow().is_some() || Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How long ago QEMU was started.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits for QEMU to exit (and the guest's files to be removed).
    pub async fn wait_exit(&self) -> ExitInfo {
        wait_for_exit(&self.exit).await
    }

    /// Kills QEMU and the vsock backend, waits for both, and removes the guest's files.
    pub async fn stop(mut self) -> ExitInfo {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait_exit().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drives_come_in_firecrackers_order_and_only_the_scratch_disk_is_writable() {
        let spec = VmSpec {
            vcpu_count: 1,
            mem_mib: 128,
            kernel: "/images/bzImage".into(),
            boot_args: "console=ttyS0".into(),
            initrd: None,
            rootfs: "/images/rootfs.ext4".into(),
            scratch_mib: 16,
            code: Some("/code/abc.ext4".into()),
            layers: None,
        };
        let args = qemu_args(&spec, "emu-1");
        let drives: Vec<&String> = args
            .iter()
            .filter(|a| a.starts_with("id=") && a.contains("format=raw"))
            .collect();
        assert_eq!(
            drives,
            [
                "id=root,file=/images/rootfs.ext4,format=raw,if=none,readonly=on",
                "id=scratch,file=scratch.ext4,format=raw,if=none,readonly=off",
                "id=code,file=/code/abc.ext4,format=raw,if=none,readonly=on",
            ]
        );
        assert!(
            !args
                .iter()
                .any(|a| a.contains("netdev") || a.contains("-nic"))
        );
        assert!(args.contains(&"memory-backend-memfd,id=mem0,size=128M,share=on".to_string()));
    }
}
