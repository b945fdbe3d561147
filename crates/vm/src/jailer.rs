//! Running Firecracker through its jailer: a chroot of its own, an unprivileged uid/gid, a cgroup
//! with the VM's memory limit, its own (empty) network namespace and resource limits. The argument
//! list and every path the jailer creates are computed here by pure functions, so they can be
//! tested without running anything and cleaned up after a crash.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where cgroups are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The jailed Firecracker's API socket, inside its chroot.
pub const API_SOCKET_IN_CHROOT: &str = "/run/firecracker.socket";
/// Memory the VMM itself may use beyond the guest's RAM before its cgroup limit bites.
pub const VMM_OVERHEAD_MIB: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// v2 when the unified hierarchy is mounted at the cgroup root, else v1.
    pub fn detect() -> Self {
        if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        }
    }

    fn arg(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "1",
            CgroupVersion::V2 => "2",
        }
    }

    /// The memory limit file of this version.
    fn memory_file(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "memory.limit_in_bytes",
            CgroupVersion::V2 => "memory.max",
        }
    }
}

/// How VMs are jailed (from the server's configuration).
#[derive(Debug, Clone)]
pub struct JailerConfig {
    pub jailer: PathBuf,
    /// The jails live in `<chroot_base>/<exec file name>/<vm id>/root`.
    pub chroot_base: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_version: CgroupVersion,
    /// The cgroup the VMs' cgroups are created under.
    pub parent_cgroup: String,
    /// Give each VM a network namespace of its own (created with `ip netns add`): with no network
    /// interface configured, the VMM then has no network at all.
    pub own_netns: bool,
    /// The jailed process's open-file limit.
    pub max_open_files: u64,
}

impl JailerConfig {
    pub fn new(jailer: PathBuf, chroot_base: PathBuf, uid: u32, gid: u32) -> Self {
        Self {
            jailer,
            chroot_base,
            uid,
            gid,
            cgroup_version: CgroupVersion::detect(),
            parent_cgroup: "voltrun-vm".into(),
            own_netns: true,
            max_open_files: 2048,
        }
    }
}

/// Everything one jailed VM uses on the host, derived from the configuration and the VM's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPaths {
    /// `<chroot_base>/<exec name>/<id>`: removed whole at cleanup.
    pub jail_dir: PathBuf,
    /// `<jail_dir>/root`: the VMM's `/`.
    pub root: PathBuf,
    /// The API socket as seen from the host.
    pub api_socket: PathBuf,
    /// The cgroup directories the jailer creates (removed after the VMM exits).
    pub cgroups: Vec<PathBuf>,
    /// The network namespace's name (for `ip netns`) and path, when it has its own.
    pub netns: Option<(String, PathBuf)>,
}

/// The name of a VM's network namespace.
pub fn netns_name(vm_id: &str) -> String {
    format!("voltrun-{vm_id}")
}

/// The cgroup files and values the jailer sets for a VM with `mem_mib` of guest memory.
pub fn cgroup_settings(config: &JailerConfig, mem_mib: u32) -> Vec<(String, String)> {
    let bytes = (u64::from(mem_mib) + VMM_OVERHEAD_MIB) << 20;
    vec![(
        config.cgroup_version.memory_file().to_string(),
        bytes.to_string(),
    )]
}

/// The paths the jailer will create for VM `vm_id` running `firecracker`.
pub fn jail_paths(
    config: &JailerConfig,
    vm_id: &str,
    firecracker: &Path,
    mem_mib: u32,
) -> JailPaths {
    let exec_name = firecracker
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("firecracker"));
    let jail_dir = config.chroot_base.join(exec_name).join(vm_id);
    let root = jail_dir.join("root");
    let api_socket = root.join(API_SOCKET_IN_CHROOT.trim_start_matches('/'));
    let cgroup_root = Path::new(CGROUP_ROOT);
    let cgroups = match config.cgroup_version {
        // v1: one directory per controller named in the settings (`memory.max` → `memory`).
        CgroupVersion::V1 => {
            let mut controllers: Vec<String> = cgroup_settings(config, mem_mib)
                .into_iter()
                .filter_map(|(file, _)| file.split('.').next().map(str::to_string))
                .collect();
            controllers.dedup();
            controllers
                .into_iter()
                .map(|c| cgroup_root.join(c).join(&config.parent_cgroup).join(vm_id))
                .collect()
        }
        CgroupVersion::V2 => vec![cgroup_root.join(&config.parent_cgroup).join(vm_id)],
    };
    let netns = config.own_netns.then(|| {
        let name = netns_name(vm_id);
        let path = Path::new("/var/run/netns").join(&name);
        (name, path)
    });
    JailPaths {
        jail_dir,
        root,
        api_socket,
        cgroups,
        netns,
    }
}

/// The jailer's command line for VM `vm_id`: jailer options, then `--`, then Firecracker's own
/// arguments (`--api-sock` inside the chroot; the jailer passes `--id` itself).
pub fn jailer_args(
    config: &JailerConfig,
    vm_id: &str,
    firecracker: &Path,
    mem_mib: u32,
) -> Vec<OsString> {
    let paths = jail_paths(config, vm_id, firecracker, mem_mib);
    let mut args: Vec<OsString> = vec![
        "--id".into(),
        vm_id.into(),
        "--exec-file".into(),
        firecracker.into(),
        "--uid".into(),
        config.uid.to_string().into(),
        "--gid".into(),
        config.gid.to_string().into(),
        "--chroot-base-dir".into(),
        config.chroot_base.clone().into(),
        "--cgroup-version".into(),
        config.cgroup_version.arg().into(),
        "--parent-cgroup".into(),
        config.parent_cgroup.clone().into(),
    ];
    for (file, value) in cgroup_settings(config, mem_mib) {
        args.push("--cgroup".into());
        args.push(format!("{file}={value}").into());
    }
    if let Some((_, path)) = &paths.netns {
        args.push("--netns".into());
        args.push(path.clone().into());
    }
    args.push("--resource-limit".into());
    args.push(format!("no-file={}", config.max_open_files).into());
    args.push("--".into());
    args.extend(
        ["--api-sock", API_SOCKET_IN_CHROOT]
            .into_iter()
            .map(OsString::from),
    );
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(version: CgroupVersion) -> JailerConfig {
        JailerConfig {
            jailer: "/opt/fc/jailer".into(),
            chroot_base: "/srv/voltrun-jail".into(),
            uid: 64123,
            gid: 64124,
            cgroup_version: version,
            parent_cgroup: "voltrun-vm".into(),
            own_netns: true,
            max_open_files: 2048,
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn jailer_arguments_for_cgroup_v2() {
        let args = strings(jailer_args(
            &config(CgroupVersion::V2),
            "vm-abc",
            Path::new("/opt/fc/firecracker"),
            256,
        ));
        #[rustfmt::skip]
        let expected = [
            "--id", "vm-abc",
            "--exec-file", "/opt/fc/firecracker",
            "--uid", "64123",
            "--gid", "64124",
            "--chroot-base-dir", "/srv/voltrun-jail",
            "--cgroup-version", "2",
            "--parent-cgroup", "voltrun-vm",
            "--cgroup", "memory.max=335544320", // (256 + 64) MiB
            "--netns", "/var/run/netns/voltrun-vm-abc",
            "--resource-limit", "no-file=2048",
            "--",
            "--api-sock", "/run/firecracker.socket",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn cgroup_v1_uses_its_own_memory_file_and_no_netns_when_off() {
        let mut cfg = config(CgroupVersion::V1);
        cfg.own_netns = false;
        let args = strings(jailer_args(&cfg, "vm-1", Path::new("/x/firecracker"), 128));
        assert!(args.windows(2).any(|w| w == ["--cgroup-version", "1"]));
        assert!(
            args.windows(2)
                .any(|w| w == ["--cgroup", "memory.limit_in_bytes=201326592"])
        );
        assert!(!args.iter().any(|a| a == "--netns"));
        // Firecracker's own arguments come after the separator, and only there.
        let sep = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(&args[sep + 1..], ["--api-sock", "/run/firecracker.socket"]);
    }

    #[test]
    fn paths_follow_the_jailers_layout() {
        let v1 = jail_paths(
            &config(CgroupVersion::V1),
            "vm-7",
            Path::new("/a/firecracker"),
            128,
        );
        assert_eq!(v1.jail_dir, Path::new("/srv/voltrun-jail/firecracker/vm-7"));
        assert_eq!(
            v1.root,
            Path::new("/srv/voltrun-jail/firecracker/vm-7/root")
        );
        assert_eq!(
            v1.api_socket,
            Path::new("/srv/voltrun-jail/firecracker/vm-7/root/run/firecracker.socket")
        );
        assert_eq!(
            v1.cgroups,
            [Path::new("/sys/fs/cgroup/memory/voltrun-vm/vm-7")]
        );
        assert_eq!(
            v1.netns,
            Some((
                "voltrun-vm-7".into(),
                PathBuf::from("/var/run/netns/voltrun-vm-7")
            ))
        );
        let v2 = jail_paths(
            &config(CgroupVersion::V2),
            "vm-7",
            Path::new("/a/firecracker"),
            128,
        );
        assert_eq!(v2.cgroups, [Path::new("/sys/fs/cgroup/voltrun-vm/vm-7")]);
    }
}
