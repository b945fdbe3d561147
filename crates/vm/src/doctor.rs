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

use voltrun_agent::host::{AgentSession, SessionError};

use crate::binaries::{self, BinarySearch, PINNED_VERSION};
use crate::images::{ImageError, Manifest};
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

    /// Adds a check: passed with its detail, or failed with why.
    fn push(&mut self, name: &'static str, result: Result<String, CheckError>) -> bool {
        let passed = result.is_ok();
        let detail = result.unwrap_or_else(|e| e.to_string());
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

/// Why a check failed, as its report line and the capability's reason print it.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error(
        "/dev/kvm does not exist: no hardware virtualisation (enable VT-x/AMD-V, or nested virtualisation on a VM)"
    )]
    NoKvm,
    #[error(
        "/dev/kvm cannot be opened read-write: {0} (add the user to the kvm group or run as root)"
    )]
    KvmDenied(std::io::Error),
    /// A binary not found, or the VM manager failing under a probe.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A binary found that does not say its version.
    #[error("{}: {source}", path.display())]
    Version { path: PathBuf, source: VmError },
    #[error(transparent)]
    Images(#[from] ImageError),
    /// Writing the guest-code probe's own files.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the tiny guest's VMM ended with {status}: {log}")]
    GuestExited { status: String, log: String },
    #[error("the tiny guest did not reset within {0:?}")]
    GuestTimeout(Duration),
    #[error("the image set has no guest kernel")]
    NoKernel,
    #[error("the image set has no root image")]
    NoRootImage,
    /// The boot probe's guest started but its agent never said hello; `console` is the VMM's whole
    /// output, of which the reason quotes the end.
    #[error("{}", no_hello_reason(*.elapsed, *.deadline, .why, .console))]
    NoHello {
        elapsed: Duration,
        deadline: Duration,
        why: HelloFailure,
        console: String,
    },
    /// A check not run because one it depends on failed.
    #[error("skipped: {0}")]
    Skipped(&'static str),
    /// The boot not attempted because a check it depends on failed.
    #[error("not attempted: {0}")]
    NotAttempted(&'static str),
}

/// Why the boot probe's guest did not say hello.
#[derive(Debug, thiserror::Error)]
enum HelloFailure {
    #[error(transparent)]
    Agent(#[from] SessionError),
    #[error(
        "the guest's VMM exited ({status}) before the agent said hello; console: {}",
        last_lines(.log_tail, 6)
    )]
    Exited { status: String, log_tail: String },
}

/// A failed boot explained: how long was waited, why, the console's last lines and, when KVM could
/// not emulate a guest instruction, what that means on this host.
fn no_hello_reason(
    elapsed: Duration,
    deadline: Duration,
    why: &HelloFailure,
    console: &str,
) -> String {
    let mut reason = format!(
        "no agent hello {:.1} s after InstanceStart (deadline {deadline:?}): {why}",
        elapsed.as_secs_f64()
    );
    if !console.trim().is_empty() {
        let _ = write!(reason, "; last console lines: {}", last_lines(console, 6));
    }
    if reason.contains("KVM_EXIT_INTERNAL_ERROR") {
        if pvm_host() {
            let _ = write!(
                reason,
                " — KVM could not emulate a guest instruction: {PVM_NOTE}"
            );
        } else {
            reason.push_str(" — KVM could not emulate a guest instruction, typical of nested virtualisation (this host is itself a VM): Linux guests do not boot here");
        }
    }
    reason
}

fn kvm() -> Result<String, CheckError> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) if pvm_host() => Ok(format!(
            "/dev/kvm is present and this user can open it read-write; {PVM_NOTE}"
        )),
        Ok(_) => Ok("/dev/kvm is present and this user can open it read-write".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CheckError::NoKvm),
        Err(e) => Err(CheckError::KvmDenied(e)),
    }
}

/// A binary found, with its version checked.
#[derive(Debug)]
struct Binary {
    path: PathBuf,
    /// Its version, where it was found and how, for the report.
    detail: String,
}

async fn binary(found: Result<binaries::Located, VmError>) -> Result<Binary, CheckError> {
    let located = found?;
    let version = binaries::version(&located.path)
        .await
        .map_err(|source| CheckError::Version {
            path: located.path.clone(),
            source,
        })?;
    let note = if version == PINNED_VERSION {
        String::new()
    } else {
        format!(" (tested with {PINNED_VERSION})")
    };
    Ok(Binary {
        detail: format!(
            "v{version} at {} ({}){note}",
            located.path.display(),
            located.origin
        ),
        path: located.path,
    })
}

/// The image set in `dir`, verified against its sha256 sums, with a line per image.
fn verified_images(dir: &Path) -> Result<(Manifest, Vec<String>), ImageError> {
    let manifest = Manifest::load(dir)?;
    let lines = manifest.verify(dir)?;
    Ok((manifest, lines))
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

/// Runs `probe` with a run directory of its own (a server may hold the real one), removed after.
async fn in_probe_dir<F, Fut>(probe: F) -> Result<String, CheckError>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = Result<String, CheckError>>,
{
    let run_dir = std::env::temp_dir().join(format!(
        "voltrun-vm-probe-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ));
    let result = probe(run_dir.clone()).await;
    let _ = std::fs::remove_dir_all(&run_dir);
    result
}

/// Boots `reset_kernel`: proves KVM executes guest code under this Firecracker.
async fn guest_code(firecracker: &Path, deadline: Duration) -> Result<String, CheckError> {
    in_probe_dir(|run_dir| async move {
        let kernel = run_dir.join("reset-kernel.elf");
        std::fs::create_dir_all(&run_dir)?;
        std::fs::write(&kernel, guest_probe::reset_kernel())?;
        let rootfs = run_dir.join("empty.img");
        std::fs::write(&rootfs, vec![0u8; 4096])?;
        let (manager, _) =
            VmManager::new(ManagerConfig::new(run_dir.join("run"), firecracker)).await?;
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
            .await?;
        vm.configure().await?;
        let started = Instant::now();
        // The reset may end the VMM before InstanceStart is answered.
        if let Err(e) = vm.start().await
            && !matches!(e, VmError::Exited { .. })
        {
            return Err(e.into());
        }
        match tokio::time::timeout(deadline, vm.wait_exit()).await {
            Ok(exit) if exit.status == "exit status: 0" => Ok(format!(
                "KVM ran a 3-instruction guest under Firecracker; its i8042 reset ended the VMM {:.1} ms after InstanceStart",
                started.elapsed().as_secs_f64() * 1e3
            )),
            Ok(exit) => Err(CheckError::GuestExited {
                status: exit.status,
                log: exit.log_tail,
            }),
            Err(_) => {
                let _ = vm.stop().await;
                Err(CheckError::GuestTimeout(deadline))
            }
        }
    })
    .await
}

/// Boots the smallest root image with the agent and waits for its hello.
async fn boot(
    firecracker: &Path,
    images_dir: &Path,
    manifest: &Manifest,
    deadline: Duration,
) -> Result<String, CheckError> {
    let kernel = manifest.kernel.as_ref().ok_or(CheckError::NoKernel)?;
    let root = manifest.smallest_rootfs().ok_or(CheckError::NoRootImage)?;
    in_probe_dir(|run_dir| async move {
        let (manager, _) =
            VmManager::new(ManagerConfig::new(run_dir.join("run"), firecracker)).await?;
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
            .await?;
        vm.configure().await?;
        let started = Instant::now();
        vm.start().await?;
        let vsock = vm.vsock_path();
        let hello = tokio::select! {
            session = AgentSession::connect(&vsock, AGENT_PORT, deadline) => session.map_err(HelloFailure::from),
            exit = vm.wait_exit() => Err(HelloFailure::Exited { status: exit.status, log_tail: exit.log_tail }),
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
            Err(why) => Err(CheckError::NoHello {
                elapsed,
                deadline,
                why,
                console,
            }),
        }
    })
    .await
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
    let firecracker_path = firecracker.as_ref().ok().map(|b| b.path.clone());
    report.push("firecracker", firecracker.map(|b| b.detail));
    let jailer = binary(config.search.jailer()).await.map(|b| {
        if is_root() {
            b.detail
        } else {
            format!(
                "{}; note: the jailer needs root to chroot, switch uid and create cgroups",
                b.detail
            )
        }
    });
    report.push("jailer", jailer);
    let (images, manifest) = match verified_images(&config.images_dir) {
        Ok((manifest, lines)) => (
            Ok(format!(
                "{} in {}",
                lines.join("; "),
                config.images_dir.display()
            )),
            Some(manifest),
        ),
        Err(e) => (Err(e.into()), None),
    };
    report.push("images", images);
    let guest = match (&firecracker_path, kvm_ok) {
        (Some(fc), true) => guest_code(fc, config.boot_deadline).await,
        (None, _) => Err(CheckError::Skipped("no Firecracker binary")),
        (_, false) => Err(CheckError::Skipped("/dev/kvm is not usable")),
    };
    report.push("guest-code", guest);
    let boot = match (&firecracker_path, kvm_ok, &manifest) {
        (Some(fc), true, Some(manifest)) => {
            boot(
                fc,
                &absolute(&config.images_dir),
                manifest,
                config.boot_deadline,
            )
            .await
        }
        (None, _, _) => Err(CheckError::NotAttempted("no Firecracker binary")),
        (_, false, _) => Err(CheckError::NotAttempted("/dev/kvm is not usable")),
        _ => Err(CheckError::NotAttempted("no verified guest images")),
    };
    report.push("boot", boot);
    report
}

/// For `ENGINE_BACKEND=auto`: usable only when a real guest boots and its agent answers. Runs only
/// what that needs (KVM, the Firecracker binary, the images, the boot), in that order, and stops at
/// the first failure: a boot (bounded by the deadline) is attempted only when the rest passed.
pub async fn capability(config: &DoctorConfig) -> Capability {
    let unusable = |check: &str, why: CheckError| Capability {
        usable: false,
        reason: format!("{check}: {why}"),
        manifest: None,
    };
    if let Err(why) = kvm() {
        return unusable("kvm", why);
    }
    let firecracker = match binary(config.search.firecracker()).await {
        Ok(binary) => binary.path,
        Err(why) => return unusable("firecracker", why),
    };
    let manifest = match verified_images(&config.images_dir) {
        Ok((manifest, _)) => manifest,
        Err(e) => return unusable("images", e.into()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_the_report_prints_them() {
        let cases = [
            (
                CheckError::NoKvm,
                "/dev/kvm does not exist: no hardware virtualisation (enable VT-x/AMD-V, or nested virtualisation on a VM)",
            ),
            (
                CheckError::KvmDenied(std::io::Error::other("Permission denied")),
                "/dev/kvm cannot be opened read-write: Permission denied (add the user to the kvm group or run as root)",
            ),
            (
                CheckError::GuestTimeout(Duration::from_secs(10)),
                "the tiny guest did not reset within 10s",
            ),
            (
                CheckError::GuestExited {
                    status: "signal: 9 (SIGKILL)".into(),
                    log: "oops".into(),
                },
                "the tiny guest's VMM ended with signal: 9 (SIGKILL): oops",
            ),
            (
                CheckError::Skipped("no Firecracker binary"),
                "skipped: no Firecracker binary",
            ),
            (
                CheckError::NotAttempted("no verified guest images"),
                "not attempted: no verified guest images",
            ),
            (
                CheckError::NoHello {
                    elapsed: Duration::from_millis(1500),
                    deadline: Duration::from_secs(10),
                    why: HelloFailure::Exited {
                        status: "exit status: 1".into(),
                        log_tail: "a\nb".into(),
                    },
                    console: "one\ntwo\n".into(),
                },
                "no agent hello 1.5 s after InstanceStart (deadline 10s): the guest's VMM exited \
                 (exit status: 1) before the agent said hello; console: a | b; last console lines: \
                 one | two",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn a_failed_check_is_reported_with_why() {
        let mut report = Report::default();
        assert!(report.push("kvm", Ok("fine".into())));
        assert!(!report.push(
            "boot",
            Err(CheckError::NotAttempted("no Firecracker binary"))
        ));
        assert_eq!(
            report.render(),
            "PASS kvm          fine\nFAIL boot         not attempted: no Firecracker binary\n"
        );
    }
}
