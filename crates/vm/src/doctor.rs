//! `voltrun vm doctor`: what this host allows, each check pass or fail with the reason; and
//! [`capability`], the same checks reduced to one answer for `ENGINE_BACKEND=auto`.
//!
//! The decisive check is the boot probe: the smallest guest image is booted and the agent's hello
//! awaited within a deadline. Everything before it can pass on a host where guests still do not boot
//! (a host that is itself a VM may run trivial guest code yet fail real Linux guests), so only the
//! boot probe says whether the Firecracker backend can run functions here.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::binaries::{self, BinarySearch, PINNED_VERSION};
use crate::images::Manifest;
use crate::manager::{ManagerConfig, VmManager, VmSpec};
use crate::{VmError, guest_probe};

/// The vsock port the agent answers on.
const AGENT_PORT: u32 = voltrun_agent::vsock::AGENT_PORT;

#[derive(Debug, Clone)]
pub struct DoctorConfig {
    pub search: BinarySearch,
    /// Where `voltrun vm images build` put the guest kernel and root images.
    pub images_dir: PathBuf,
    /// How long the boot probe waits for the agent's hello.
    pub boot_deadline: Duration,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn all_passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    fn push(&mut self, name: &'static str, result: Result<String, String>) -> bool {
        let passed = result.is_ok();
        let detail = result.unwrap_or_else(|e| e);
        self.checks.push(Check {
            name,
            passed,
            detail,
        });
        passed
    }

    /// One line per check: `PASS name: detail` / `FAIL name: detail`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let verdict = if check.passed { "PASS" } else { "FAIL" };
            let _ = writeln!(out, "{verdict} {:<12} {}", check.name, check.detail);
        }
        out
    }
}

/// Whether the Firecracker backend can run functions here, and why (not).
#[derive(Debug, Clone)]
pub struct Capability {
    pub usable: bool,
    pub reason: String,
    /// The image set, verified against its sha256 sums, when usable (so that the backend need not
    /// hash it again).
    pub manifest: Option<Manifest>,
}

fn kvm() -> Result<String, String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) if pvm_host() => Ok(format!(
            "/dev/kvm is present and this user can open it read-write; {PVM_NOTE}"
        )),
        Ok(_) => Ok("/dev/kvm is present and this user can open it read-write".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(
            "/dev/kvm does not exist: no hardware virtualisation (enable VT-x/AMD-V, or nested virtualisation on a VM)"
                .into(),
        ),
        Err(e) => Err(format!(
            "/dev/kvm cannot be opened read-write: {e} (add the user to the kvm group or run as root)"
        )),
    }
}

async fn binary(found: Result<binaries::Located, VmError>) -> Result<(PathBuf, String), String> {
    let located = found.map_err(|e| e.to_string())?;
    let version = binaries::version(&located.path)
        .await
        .map_err(|e| format!("{}: {e}", located.path.display()))?;
    let note = if version == PINNED_VERSION {
        String::new()
    } else {
        format!(" (tested with {PINNED_VERSION})")
    };
    Ok((
        located.path.clone(),
        format!(
            "v{version} at {} ({}){note}",
            located.path.display(),
            located.origin
        ),
    ))
}

/// Whether this host's KVM is PVM (the `kvm_pvm` module): a hypervisor for hosts that are VMs
/// without nested hardware virtualisation. It runs guest kernels in a mode that only kernels built
/// as PVM guests support; any other kernel stops at its first privileged instruction it cannot
/// emulate (`KVM_EXIT_INTERNAL_ERROR`).
fn pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

const PVM_NOTE: &str = "it is provided by kvm_pvm (PVM), which boots only guest kernels built with \
     PVM guest support (an out-of-tree patch set; Debian's kernels and sources lack it)";

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A run directory of the probe's own (a server may hold the real one).
fn probe_run_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "voltrun-vm-probe-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ))
}

/// Boots `reset_kernel`: proves KVM executes guest code under this Firecracker.
async fn guest_code(firecracker: &Path, deadline: Duration) -> Result<String, String> {
    let run_dir = probe_run_dir();
    let result = async {
        let kernel = run_dir.join("reset-kernel.elf");
        std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        std::fs::write(&kernel, guest_probe::reset_kernel()).map_err(|e| e.to_string())?;
        let rootfs = run_dir.join("empty.img");
        std::fs::write(&rootfs, vec![0u8; 4096]).map_err(|e| e.to_string())?;
        let (manager, _) = VmManager::new(ManagerConfig::new(run_dir.join("run"), firecracker))
            .await
            .map_err(|e| e.to_string())?;
        let mut vm = manager
            .spawn(VmSpec {
                vcpu_count: 1,
                mem_mib: 32,
                kernel,
                boot_args: String::new(),
                initrd: None,
                rootfs,
                scratch_mib: 0,
                code: None,
                layers: None,
            })
            .await
            .map_err(|e| e.to_string())?;
        vm.configure().await.map_err(|e| e.to_string())?;
        let started = Instant::now();
        if let Err(e) = vm.start().await
            && !matches!(e, VmError::Exited { .. })
        {
            return Err(e.to_string());
        }
        match tokio::time::timeout(deadline, vm.wait_exit()).await {
            Ok(exit) if exit.status == "exit status: 0" => Ok(format!(
                "KVM ran a 3-instruction guest under Firecracker; its i8042 reset ended the VMM {:.1} ms after InstanceStart",
                started.elapsed().as_secs_f64() * 1e3
            )),
            Ok(exit) => Err(format!(
                "the tiny guest's VMM ended with {}: {}",
                exit.status, exit.log_tail
            )),
            Err(_) => {
                let _ = vm.stop().await;
                Err(format!("the tiny guest did not reset within {deadline:?}"))
            }
        }
    }
    .await;
    let _ = std::fs::remove_dir_all(&run_dir);
    result
}

/// Boots the smallest root image with the agent and waits for its hello.
async fn boot(
    firecracker: &Path,
    images_dir: &Path,
    manifest: &Manifest,
    deadline: Duration,
) -> Result<String, String> {
    let kernel = manifest
        .kernel
        .as_ref()
        .ok_or("the image set has no guest kernel")?;
    let root = manifest
        .smallest_rootfs()
        .ok_or("the image set has no root image")?;
    let run_dir = probe_run_dir();
    let result = async {
        let (manager, _) = VmManager::new(ManagerConfig::new(run_dir.join("run"), firecracker))
            .await
            .map_err(|e| e.to_string())?;
        let mut vm = manager
            .spawn(VmSpec {
                vcpu_count: 1,
                mem_mib: 256,
                kernel: images_dir.join(&kernel.file),
                boot_args: manifest.boot_args.clone(),
                initrd: manifest.initrd.as_ref().map(|i| images_dir.join(&i.file)),
                rootfs: images_dir.join(&root.image.file),
                scratch_mib: 16,
                code: None,
                layers: None,
            })
            .await
            .map_err(|e| e.to_string())?;
        vm.configure().await.map_err(|e| e.to_string())?;
        let started = Instant::now();
        vm.start().await.map_err(|e| e.to_string())?;
        let vsock = vm.vsock_path();
        let hello = tokio::select! {
            session = voltrun_agent::host::AgentSession::connect(&vsock, AGENT_PORT, deadline) => session.map_err(|e| e.to_string()),
            exit = vm.wait_exit() => Err(format!("the guest's VMM exited ({}) before the agent said hello; console: {}", exit.status, last_lines(&exit.log_tail, 6))),
        };
        let elapsed = started.elapsed();
        let console = std::fs::read_to_string(vm.dir().join("firecracker.log")).unwrap_or_default();
        let _ = vm.stop().await;
        match hello {
            Ok(session) => Ok(format!(
                "booted {} ({}) and the agent v{} said hello {:.0} ms after InstanceStart",
                root.runtime,
                root.image.file,
                session.agent_version(),
                elapsed.as_secs_f64() * 1e3
            )),
            Err(e) => {
                let mut why = format!(
                    "no agent hello {:.1} s after InstanceStart (deadline {deadline:?}): {e}",
                    elapsed.as_secs_f64()
                );
                if !console.trim().is_empty() {
                    let _ = write!(why, "; last console lines: {}", last_lines(&console, 6));
                }
                if why.contains("KVM_EXIT_INTERNAL_ERROR") {
                    if pvm_host() {
                        let _ = write!(why, " — KVM could not emulate a guest instruction: {PVM_NOTE}");
                    } else {
                        why.push_str(" — KVM could not emulate a guest instruction, typical of nested virtualisation (this host is itself a VM): Linux guests do not boot here");
                    }
                }
                Err(why)
            }
        }
    }
    .await;
    let _ = std::fs::remove_dir_all(&run_dir);
    result
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Runs every check. A check whose prerequisite failed fails too, saying which.
pub async fn run(config: &DoctorConfig) -> Report {
    let mut report = Report::default();
    let kvm_ok = report.push("kvm", kvm());
    let firecracker = binary(config.search.firecracker()).await;
    let firecracker_path = firecracker.as_ref().ok().map(|(p, _)| p.clone());
    report.push("firecracker", firecracker.map(|(_, d)| d));
    let jailer = binary(config.search.jailer()).await.map(|(_, d)| {
        if is_root() {
            d
        } else {
            format!("{d}; note: the jailer needs root to chroot, switch uid and create cgroups")
        }
    });
    report.push("jailer", jailer);
    let manifest = Manifest::load(&config.images_dir).map_err(|e| e.to_string());
    let images_ok = report.push(
        "images",
        manifest.clone().and_then(|m| {
            m.verify(&config.images_dir)
                .map(|lines| format!("{} in {}", lines.join("; "), config.images_dir.display()))
                .map_err(|e| e.to_string())
        }),
    );
    let guest = match (&firecracker_path, kvm_ok) {
        (Some(fc), true) => guest_code(fc, config.boot_deadline).await,
        (None, _) => Err("skipped: no Firecracker binary".into()),
        (_, false) => Err("skipped: /dev/kvm is not usable".into()),
    };
    report.push("guest-code", guest);
    let boot = match (&firecracker_path, kvm_ok, images_ok, &manifest) {
        (Some(fc), true, true, Ok(manifest)) => {
            boot(
                fc,
                &absolute(&config.images_dir),
                manifest,
                config.boot_deadline,
            )
            .await
        }
        (None, _, _, _) => Err("not attempted: no Firecracker binary".into()),
        (_, false, _, _) => Err("not attempted: /dev/kvm is not usable".into()),
        _ => Err("not attempted: no verified guest images".into()),
    };
    report.push("boot", boot);
    report
}

/// For `ENGINE_BACKEND=auto`: usable only when a real guest boots and its agent answers. Runs only
/// what that needs (KVM, the Firecracker binary, the images, the boot), in that order, and stops at
/// the first failure: a boot (bounded by the deadline) is attempted only when the rest passed.
pub async fn capability(config: &DoctorConfig) -> Capability {
    let unusable = |check: &str, why: String| Capability {
        usable: false,
        reason: format!("{check}: {why}"),
        manifest: None,
    };
    if let Err(why) = kvm() {
        return unusable("kvm", why);
    }
    let firecracker = match binary(config.search.firecracker()).await {
        Ok((path, _)) => path,
        Err(why) => return unusable("firecracker", why),
    };
    let manifest = match Manifest::load(&config.images_dir).and_then(|m| {
        m.verify(&config.images_dir)?;
        Ok(m)
    }) {
        Ok(manifest) => manifest,
        Err(e) => return unusable("images", e.to_string()),
    };
    match boot(
        &firecracker,
        &absolute(&config.images_dir),
        &manifest,
        config.boot_deadline,
    )
    .await
    {
        Ok(detail) => Capability {
            usable: true,
            reason: detail,
            manifest: Some(manifest),
        },
        Err(why) => unusable("boot", why),
    }
}

/// VM specs take absolute paths; the images directory is often given relative.
fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}
