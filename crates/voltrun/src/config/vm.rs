//! The Firecracker backend (and the emulated backend, which boots the same guests under QEMU): the
//! programs, the guest images, the boot deadline, the jailer and cold-start snapshots.

use std::path::{Path, PathBuf};

use super::Blankable;
use super::parse::{boolean, number, path, unless_blank};

#[derive(Debug, Clone, clap::Args)]
pub struct VmArgs {
    /// Guest kernel and root images for the firecracker backend (`voltrun vm images build`)
    /// [default: DATA_DIR/vm/images]
    #[arg(
        long = "vm-images-dir",
        env = "VM_IMAGES_DIR",
        default_value = "",
        hide_default_value = true,
        value_parser = unless_blank(path)
    )]
    pub images_dir: Blankable<PathBuf>,
    /// Milliseconds a microVM may take from InstanceStart to its guest agent's hello
    #[arg(
        long = "vm-boot-timeout-ms",
        env = "VM_BOOT_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = number::<u64>(100, 600_000)
    )]
    pub boot_timeout_ms: u64,
    /// The Firecracker binary [default: found on PATH or where scripts/install-firecracker.sh put
    /// it]
    #[arg(
        long = "firecracker-bin",
        env = "FIRECRACKER_BIN",
        default_value = "",
        hide_default_value = true,
        value_parser = unless_blank(path)
    )]
    pub firecracker_bin: Blankable<PathBuf>,
    /// QEMU for the emulated backend [default: qemu-system-x86_64 on PATH]
    #[arg(
        long = "qemu-bin",
        env = "QEMU_BIN",
        default_value = "",
        hide_default_value = true,
        value_parser = unless_blank(path)
    )]
    pub qemu_bin: Blankable<PathBuf>,
    /// vhost-device-vsock for the emulated backend [default: on PATH, or where
    /// scripts/install-emulator.sh put it]
    #[arg(
        long = "vhost-vsock-bin",
        env = "VHOST_VSOCK_BIN",
        default_value = "",
        hide_default_value = true,
        value_parser = unless_blank(path)
    )]
    pub vhost_vsock_bin: Blankable<PathBuf>,
    /// Run each Firecracker through its jailer (chroot, unprivileged uid, cgroup, own network
    /// namespace)
    #[arg(
        long = "vm-jailer",
        env = "VM_JAILER",
        action = clap::ArgAction::Set,
        default_value = "false",
        value_parser = boolean
    )]
    pub jailer: bool,
    /// Snapshots of initialised guests kept for the firecracker backend's cold starts (each as
    /// large as its function's memory); 0 boots every cold start
    #[arg(
        long = "vm-snapshots-max",
        env = "VM_SNAPSHOTS_MAX",
        default_value_t = 16,
        value_parser = number::<usize>(0, 10_000)
    )]
    pub snapshots_max: usize,
}

/// The Firecracker backend's settings.
#[derive(Debug, Clone)]
pub struct VmSettings {
    pub firecracker_bin: Option<PathBuf>,
    /// The emulated backend's programs, when not found on `PATH`.
    pub qemu_bin: Option<PathBuf>,
    pub vhost_vsock_bin: Option<PathBuf>,
    pub images_dir: PathBuf,
    pub boot_timeout_ms: u64,
    pub jailer: bool,
    /// Snapshots kept for cold starts; 0 turns them off.
    pub snapshots_max: usize,
}

impl VmArgs {
    /// The images' default place is computed here, and only here, from the data directory.
    pub(super) fn settings(self, data_dir: &Path) -> VmSettings {
        VmSettings {
            firecracker_bin: self.firecracker_bin,
            qemu_bin: self.qemu_bin,
            vhost_vsock_bin: self.vhost_vsock_bin,
            images_dir: self
                .images_dir
                .unwrap_or_else(|| data_dir.join("vm").join("images")),
            boot_timeout_ms: self.boot_timeout_ms,
            jailer: self.jailer,
            snapshots_max: self.snapshots_max,
        }
    }
}
