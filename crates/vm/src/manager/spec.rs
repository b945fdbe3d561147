//! What one microVM is made of ([`VmSpec`]): its size, kernel and drives, and the checks that catch
//! a spec Firecracker or the guest could not use before any process is started.

use std::path::PathBuf;

use crate::api::MachineConfig;
use crate::error::{Step, VmError};

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

    pub(super) fn validate(&self) -> Result<(), VmError> {
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

    /// The machine configuration this spec asks for: what configuring the VM sends and what
    /// `GET /vm/config` should then report. No SMT, and no dirty-page tracking (snapshots are full).
    pub(super) fn machine_config(&self) -> MachineConfig {
        MachineConfig {
            vcpu_count: self.vcpu_count,
            mem_size_mib: self.mem_mib,
            smt: false,
            track_dirty_pages: false,
        }
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
