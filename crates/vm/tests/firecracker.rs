//! The VM manager against the real Firecracker binary (installed by scripts/install-firecracker.sh;
//! without it these tests fail and say so). No mock of Firecracker's API: the binary answers.
//!
//! Tests whose names start with `kvm_` need a usable /dev/kvm, those starting with `root_` need
//! root (the jailer); where that is missing they print `SKIPPED <test>: <why>` on the real stderr
//! and return — they never pass silently. A full Linux boot is not attempted here: on hosts that are
//! themselves VMs the guest does not finish booting (see docs/firecracker.md); the tiny guests of
//! `voltrun_vm::guest_probe` prove what can be proved: configuration, `InstanceStart`, guest code
//! running, and clean-up on every path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use voltrun_test_support::{skip, skip_without_hardware_kvm};
use voltrun_vm::binaries::BinarySearch;
use voltrun_vm::jailer::{CgroupVersion, JailerConfig};
use voltrun_vm::{ManagerConfig, Step, VmError, VmManager, VmSpec, guest_probe};

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn search() -> BinarySearch {
    let mut search = BinarySearch::from_env();
    search.install_dir = Some(repo_root().join("target/firecracker/bin"));
    search
}

/// The real Firecracker binary; a test without it fails, naming the script that installs it.
fn firecracker() -> PathBuf {
    match search().firecracker() {
        Ok(found) => found.path,
        Err(e) => panic!("the real Firecracker binary is needed: {e}"),
    }
}

fn jailer_binary() -> PathBuf {
    match search().jailer() {
        Ok(found) => found.path,
        Err(e) => panic!("the real jailer binary is needed: {e}"),
    }
}

/// Why guests cannot run here, if they cannot.
fn kvm_unusable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm is not usable: {e}")),
    }
}

fn not_root() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    (std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0)
        .then(|| "the jailer needs root".to_string())
}

/// A scratch directory of the test's own.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "vt-{name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spec(dir: &TempDir, kernel: &[u8]) -> VmSpec {
    VmSpec {
        vcpu_count: 1,
        mem_mib: 128,
        kernel: dir.file("vmlinux", kernel),
        boot_args: "console=ttyS0 reboot=k panic=1 pci=off".into(),
        initrd: None,
        rootfs: dir.file("rootfs.ext4", &vec![0u8; 1 << 20]),
        scratch_mib: 16,
        code: None,
        layers: None,
    }
}

async fn manager(dir: &TempDir) -> VmManager {
    let config = ManagerConfig::new(dir.0.join("run"), firecracker());
    VmManager::new(config).await.unwrap().0
}

fn process_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// The run directory holds nothing but the manager's lock file.
fn run_dir_is_empty(dir: &TempDir) -> Vec<String> {
    std::fs::read_dir(dir.0.join("run"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "manager.lock")
        .collect()
}

#[tokio::test]
async fn configure_then_read_back_the_same_configuration() {
    let dir = TempDir::new("config");
    let manager = manager(&dir).await;

    let mut spec = spec(&dir, &guest_probe::spin_kernel());
    spec.code = Some(dir.file("code.ext4", &vec![0u8; 1 << 20]));
    spec.layers = Some(dir.file("layers.ext4", &vec![0u8; 1 << 20]));
    let mut vm = manager.spawn(spec).await.unwrap();
    vm.configure().await.unwrap();
    let held = vm.read_config().await.unwrap();

    assert_eq!(held, vm.expected_config());
    let ids: Vec<&str> = held.drives.iter().map(|d| d.drive_id.as_str()).collect();
    assert_eq!(
        ids,
        ["rootfs", "scratch", "code", "layers"],
        "the guest letters drives in this order"
    );
    assert!(
        held.network_interfaces.is_empty(),
        "no network interface is configured"
    );
    // The scratch disk and the vsock socket are named relative to the VMM's working directory, the
    // VM's own (so that snapshots restore into another VM's directory).
    let scratch = &held.drives[1].path_on_host;
    assert_eq!(scratch, "scratch.ext4");
    assert!(vm.dir().join(scratch).is_file());
    assert!(vm.vsock_path().starts_with(vm.dir()));
    let info = vm.api().instance_info().await.unwrap();
    assert_eq!(info.state, "Not started");
    assert_eq!(info.vmm_version, "1.12.1");
    let t = vm.timings();
    say(&format!(
        "MEASURED firecracker v{}: process start to API ready {:.2} ms; configuration (machine, boot source, 4 drives incl. a 16 MiB scratch mkfs.ext4, vsock) {:.2} ms",
        info.vmm_version,
        t.api_ready.unwrap().as_secs_f64() * 1e3,
        t.configure.unwrap().as_secs_f64() * 1e3,
    ));

    let (pid, vm_dir) = (vm.pid(), vm.dir().to_path_buf());
    let exit = vm.stop().await;
    assert!(exit.requested);
    assert!(exit.cleanup_errors.is_empty(), "{:?}", exit.cleanup_errors);
    assert!(process_gone(pid), "the VMM is still running");
    assert!(!vm_dir.exists(), "{} was left behind", vm_dir.display());
    assert!(
        run_dir_is_empty(&dir).is_empty(),
        "{:?}",
        run_dir_is_empty(&dir)
    );
}

#[tokio::test]
async fn every_refusal_names_its_step() {
    let dir = TempDir::new("refusals");
    let manager = manager(&dir).await;

    let mut bad_machine = spec(&dir, &guest_probe::spin_kernel());
    bad_machine.vcpu_count = 0;
    let mut vm = manager.spawn(bad_machine).await.unwrap();
    let error = vm.configure().await.unwrap_err();
    assert_eq!(error.step(), Some(Step::ConfigureMachine), "{error}");
    assert!(
        error
            .to_string()
            .starts_with("vm.configure.machine: Firecracker answered 400:"),
        "{error}"
    );
    assert!(error.to_string().contains("vCPUs"), "{error}");
    vm.stop().await;

    let mut no_kernel = spec(&dir, &guest_probe::spin_kernel());
    no_kernel.kernel = dir.0.join("no-such-kernel");
    let mut vm = manager.spawn(no_kernel).await.unwrap();
    let error = vm.configure().await.unwrap_err();
    assert_eq!(error.step(), Some(Step::ConfigureBootSource), "{error}");
    assert!(
        error.to_string().contains("kernel file cannot be opened"),
        "{error}"
    );
    vm.stop().await;

    let mut no_rootfs = spec(&dir, &guest_probe::spin_kernel());
    no_rootfs.rootfs = dir.0.join("no-such-image");
    let mut vm = manager.spawn(no_rootfs).await.unwrap();
    let error = vm.configure().await.unwrap_err();
    assert_eq!(error.step(), Some(Step::ConfigureDrive), "{error}");
    assert!(error.to_string().contains("drive rootfs"), "{error}");
    vm.stop().await;

    assert!(
        run_dir_is_empty(&dir).is_empty(),
        "{:?}",
        run_dir_is_empty(&dir)
    );
}

#[tokio::test]
async fn a_binary_that_is_not_firecracker_fails_at_api_ready() {
    let dir = TempDir::new("notfc");
    let mut config = ManagerConfig::new(dir.0.join("run"), "/bin/false");
    config.api_timeout = Duration::from_secs(2);
    let (manager, _) = VmManager::new(config).await.unwrap();

    let error = manager
        .spawn(spec(&dir, &guest_probe::spin_kernel()))
        .await
        .unwrap_err();

    assert!(
        matches!(
            error,
            VmError::Exited {
                step: Step::ApiReady,
                ..
            }
        ),
        "{error}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        run_dir_is_empty(&dir).is_empty(),
        "{:?}",
        run_dir_is_empty(&dir)
    );
}

#[tokio::test]
async fn kvm_instance_start_runs_a_tiny_guest_and_stop_removes_everything() {
    let test = "kvm_instance_start_runs_a_tiny_guest_and_stop_removes_everything";
    if let Some(why) = kvm_unusable() {
        return skip_without_hardware_kvm(test, &why);
    }
    let dir = TempDir::new("start");
    let manager = manager(&dir).await;
    let mut vm = manager
        .spawn(spec(&dir, &guest_probe::spin_kernel()))
        .await
        .unwrap();
    vm.configure().await.unwrap();

    vm.start().await.unwrap();

    assert_eq!(vm.api().instance_info().await.unwrap().state, "Running");
    assert!(
        vm.vsock_path().exists(),
        "Firecracker listens on the vsock's host socket"
    );
    say(&format!(
        "MEASURED firecracker: InstanceStart of a 2-instruction guest {:.2} ms",
        vm.timings().start.unwrap().as_secs_f64() * 1e3
    ));
    // The guest touches one page of its memory, so the VMM's resident memory is its own overhead.
    let status = std::fs::read_to_string(format!("/proc/{}/status", vm.pid())).unwrap();
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    say(&format!(
        "MEASURED firecracker: VMM resident memory with a {} MiB guest that touched one page: {:.1} MiB ({:.1} MiB anonymous, {:.1} MiB of its mapped binary)",
        spec(&dir, &guest_probe::spin_kernel()).mem_mib,
        kib("VmRSS:") / 1024.0,
        kib("RssAnon:") / 1024.0,
        kib("RssFile:") / 1024.0,
    ));
    let (pid, vm_dir) = (vm.pid(), vm.dir().to_path_buf());
    let exit = vm.stop().await;
    assert!(exit.requested && exit.cleanup_errors.is_empty(), "{exit:?}");
    assert!(process_gone(pid));
    assert!(!vm_dir.exists());
}

#[tokio::test]
async fn kvm_snapshot_of_a_running_guest_restores_into_a_new_vmm_after_the_first_is_gone() {
    let test = "kvm_snapshot_of_a_running_guest_restores_into_a_new_vmm_after_the_first_is_gone";
    if let Some(why) = kvm_unusable() {
        return skip_without_hardware_kvm(test, &why);
    }
    let dir = TempDir::new("snapshot");
    let manager = manager(&dir).await;
    let spec = spec(&dir, &guest_probe::spin_kernel());
    let mut source = manager.spawn(spec.clone()).await.unwrap();
    source.configure().await.unwrap();
    source.start().await.unwrap();
    let snapshots = dir.0.join("snapshot");
    std::fs::create_dir_all(&snapshots).unwrap();
    let taken = std::time::Instant::now();
    let snapshot = source.snapshot(&snapshots).await.unwrap();
    let took = taken.elapsed();
    // The source runs on, resumed.
    assert_eq!(source.api().instance_info().await.unwrap().state, "Running");
    let memory = std::fs::metadata(&snapshot.memory).unwrap().len();
    assert_eq!(
        memory,
        128 << 20,
        "the memory file holds the guest's 128 MiB"
    );
    assert!(snapshot.state.is_file() && snapshot.scratch.as_ref().is_some_and(|s| s.is_file()));
    // The snapshot must not depend on the VM it came from: its directory, sockets and scratch
    // disk go first.
    let exit = source.stop().await;
    assert!(exit.cleanup_errors.is_empty(), "{exit:?}");

    let mut restored = manager.restore(spec, &snapshot).await.unwrap();
    assert_eq!(
        restored.api().instance_info().await.unwrap().state,
        "Running"
    );
    assert!(
        restored.vsock_path().exists(),
        "the restored VMM listens on its own vsock socket"
    );
    assert!(restored.vsock_path().starts_with(restored.dir()));
    let config = restored.read_config().await.unwrap();
    assert_eq!(config.machine_config.mem_size_mib, 128);
    let timings = restored.timings();
    say(&format!(
        "MEASURED firecracker: snapshot of a running 128 MiB guest {:.1} ms; restore (VMM start to API ready {:.1} ms, then load + resume {:.1} ms)",
        took.as_secs_f64() * 1e3,
        timings.api_ready.unwrap().as_secs_f64() * 1e3,
        timings.restore.unwrap().as_secs_f64() * 1e3
    ));
    // A second snapshot, of the restored VM, works the same way.
    let again = dir.0.join("again");
    std::fs::create_dir_all(&again).unwrap();
    restored.snapshot(&again).await.unwrap();
    let pid = restored.pid();
    let exit = restored.stop().await;
    assert!(exit.requested && exit.cleanup_errors.is_empty(), "{exit:?}");
    assert!(process_gone(pid));
    assert_eq!(run_dir_is_empty(&dir), Vec::<String>::new());
}

#[tokio::test]
async fn restoring_a_missing_snapshot_names_the_restore_step() {
    let dir = TempDir::new("no-snapshot");
    let manager = manager(&dir).await;
    let missing = voltrun_vm::Snapshot {
        state: dir.0.join("nothing.state"),
        memory: dir.0.join("nothing.mem"),
        scratch: None,
    };
    let error = manager
        .restore(spec(&dir, &guest_probe::spin_kernel()), &missing)
        .await
        .unwrap_err();
    assert!(error.to_string().starts_with("vm.restore"), "{error}");
    assert_eq!(run_dir_is_empty(&dir), Vec::<String>::new());
}

#[tokio::test]
async fn kvm_guest_code_runs_and_its_reset_ends_the_vmm() {
    let test = "kvm_guest_code_runs_and_its_reset_ends_the_vmm";
    if let Some(why) = kvm_unusable() {
        return skip_without_hardware_kvm(test, &why);
    }
    let dir = TempDir::new("reset");
    let manager = manager(&dir).await;
    let mut vm = manager
        .spawn(spec(&dir, &guest_probe::reset_kernel()))
        .await
        .unwrap();
    vm.configure().await.unwrap();

    // The guest may reset before Firecracker has answered: either way it was accepted and ran.
    let started = vm.start().await;
    let exit = tokio::time::timeout(Duration::from_secs(10), vm.wait_exit())
        .await
        .expect("the guest's reset did not end the VMM");

    assert!(
        started.is_ok() || matches!(started, Err(VmError::Exited { .. })),
        "{started:?}"
    );
    assert!(!exit.requested);
    assert_eq!(exit.status, "exit status: 0", "{}", exit.log_tail);
    assert!(!vm.dir().exists());
}

#[tokio::test]
async fn kvm_instance_start_with_a_non_elf_kernel_is_a_start_error() {
    let test = "kvm_instance_start_with_a_non_elf_kernel_is_a_start_error";
    if let Some(why) = kvm_unusable() {
        return skip_without_hardware_kvm(test, &why);
    }
    let dir = TempDir::new("badelf");
    let manager = manager(&dir).await;
    let mut vm = manager.spawn(spec(&dir, &[0u8; 4096])).await.unwrap();
    vm.configure().await.unwrap();

    let error = vm.start().await.unwrap_err();

    assert_eq!(error.step(), Some(Step::Start), "{error}");
    assert!(error.to_string().contains("Elf"), "{error}");
    vm.stop().await;
}

#[tokio::test]
async fn a_vmm_killed_from_outside_leaves_nothing_behind() {
    let dir = TempDir::new("crash");
    let manager = manager(&dir).await;
    let mut vm = manager
        .spawn(spec(&dir, &guest_probe::spin_kernel()))
        .await
        .unwrap();
    vm.configure().await.unwrap();
    let (pid, vm_dir, api, vsock) = (
        vm.pid(),
        vm.dir().to_path_buf(),
        vm.api().socket().to_path_buf(),
        vm.vsock_path(),
    );
    assert!(api.exists() && vsock.exists());

    voltrun_sandbox::process::kill(pid).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(5), vm.wait_exit())
        .await
        .unwrap();

    assert!(!exit.requested);
    assert!(exit.status.contains("signal: 9"), "{}", exit.status);
    assert!(process_gone(pid));
    for path in [&vm_dir, &api, &vsock] {
        assert!(!path.exists(), "{} was left behind", path.display());
    }
    // The manager reports the death on the next call, naming the step.
    let error = vm.start().await.unwrap_err();
    assert!(
        matches!(
            error,
            VmError::Exited {
                step: Step::Start,
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn a_new_manager_sweeps_what_a_crashed_one_left() {
    let dir = TempDir::new("sweep");
    let config = ManagerConfig::new(dir.0.join("run"), firecracker());
    let (first, _) = VmManager::new(config.clone()).await.unwrap();
    let mut vm = first
        .spawn(spec(&dir, &guest_probe::spin_kernel()))
        .await
        .unwrap();
    vm.configure().await.unwrap();
    let (pid, id, vm_dir) = (vm.pid(), vm.id().to_string(), vm.dir().to_path_buf());
    // A second manager cannot take a run directory in use.
    assert!(matches!(
        VmManager::new(config.clone()).await,
        Err(VmError::RunDirInUse(_))
    ));
    // Simulate the server dying: the VM is never stopped (its VMM keeps running) and the lock goes.
    std::mem::forget(vm);
    drop(first);
    let orphan = dir.0.join("run/vm-0123456789abcdef");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("firecracker.log"), "left by a crash").unwrap();
    assert!(!process_gone(pid));

    let (_second, report) = VmManager::new(config).await.unwrap();

    assert_eq!(report.killed, [pid]);
    let mut vms = report.vms.clone();
    vms.sort();
    let mut expected = vec![id, "vm-0123456789abcdef".to_string()];
    expected.sort();
    assert_eq!(vms, expected);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(process_gone(pid), "the orphaned VMM still runs");
    assert!(!vm_dir.exists() && !orphan.exists());
}

fn cgroup_memory_limit(path: &Path) -> Option<u64> {
    ["memory.max", "memory.limit_in_bytes"]
        .iter()
        .find_map(|f| std::fs::read_to_string(path.join(f)).ok())
        .and_then(|s| s.trim().parse().ok())
}

fn proc_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap()
}

/// Undoes what a jailed test VM created on the host if the test fails midway (the manager's
/// watcher does it on the normal path; a panicking test may end before the watcher runs).
struct JailLeftovers {
    pid: u32,
    paths: voltrun_vm::jailer::JailPaths,
}

impl Drop for JailLeftovers {
    fn drop(&mut self) {
        // Only if that pid is still this VM's VMM (never a reused pid).
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        let id = self.paths.jail_dir.file_name().unwrap().as_encoded_bytes();
        if cmdline.windows(id.len()).any(|w| w == id) {
            let _ = voltrun_sandbox::process::kill(self.pid);
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.paths.jail_dir);
        for cgroup in &self.paths.cgroups {
            let _ = std::fs::remove_dir(cgroup);
            if let Some(parent) = cgroup.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        if let Some((name, path)) = &self.paths.netns
            && path.exists()
        {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", name])
                .status();
        }
    }
}

#[tokio::test]
async fn root_jailed_vm_runs_chrooted_unprivileged_in_its_cgroup_and_netns() {
    let test = "root_jailed_vm_runs_chrooted_unprivileged_in_its_cgroup_and_netns";
    if let Some(why) = not_root() {
        return skip(test, &why);
    }
    let dir = TempDir::new("jail");
    let mut config = ManagerConfig::new(dir.0.join("run"), firecracker());
    let mut jailer = JailerConfig::new(jailer_binary(), dir.0.join("jail"), 64123, 64124);
    jailer.parent_cgroup = format!(
        "voltrun-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    config.jailer = Some(jailer.clone());
    let (manager, _) = VmManager::new(config).await.unwrap();
    let mut vm = manager
        .spawn(spec(&dir, &guest_probe::spin_kernel()))
        .await
        .unwrap();
    vm.configure().await.unwrap();

    let pid = vm.pid();
    let paths = voltrun_vm::jailer::jail_paths(&jailer, vm.id(), &firecracker(), 128);
    let _leftovers = JailLeftovers {
        pid,
        paths: paths.clone(),
    };
    // Configured with paths inside the jail, and Firecracker agrees.
    let held = vm.read_config().await.unwrap();
    assert_eq!(held, vm.expected_config());
    assert_eq!(held.boot_source.kernel_image_path, "/kernel");
    assert_eq!(held.drives[0].path_on_host, "/rootfs.ext4");
    // Chrooted, as the jail user, in its own network namespace and cgroup.
    // (The jailer pivots into the chroot in a mount namespace of its own, so compare inodes.)
    let inode = |p: PathBuf| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    assert_eq!(
        inode(PathBuf::from(format!("/proc/{pid}/root/kernel"))),
        inode(paths.root.join("kernel"))
    );
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
        std::fs::read_link("/proc/self/ns/mnt").unwrap()
    );
    assert!(
        proc_field(pid, "Uid:").starts_with("64123"),
        "{}",
        proc_field(pid, "Uid:")
    );
    assert!(proc_field(pid, "Gid:").starts_with("64124"));
    let own_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        own_ns
    );
    let (netns, netns_path) = paths.netns.clone().unwrap();
    assert!(netns_path.exists(), "{netns} missing");
    assert_eq!(paths.cgroups.len(), 1);
    assert_eq!(
        cgroup_memory_limit(&paths.cgroups[0]),
        Some((128 + 64) << 20)
    );
    let version = match jailer.cgroup_version {
        CgroupVersion::V1 => "v1",
        CgroupVersion::V2 => "v2",
    };
    say(&format!(
        "MEASURED jailed firecracker (cgroup {version}): process start to API ready {:.2} ms; configuration {:.2} ms",
        vm.timings().api_ready.unwrap().as_secs_f64() * 1e3,
        vm.timings().configure.unwrap().as_secs_f64() * 1e3,
    ));

    let exit = vm.stop().await;

    assert!(exit.cleanup_errors.is_empty(), "{:?}", exit.cleanup_errors);
    assert!(process_gone(pid));
    assert!(!paths.jail_dir.exists(), "the jail was left behind");
    assert!(!paths.cgroups[0].exists(), "the cgroup was left behind");
    assert!(
        !netns_path.exists(),
        "the network namespace was left behind"
    );
    assert!(run_dir_is_empty(&dir).is_empty());
}
