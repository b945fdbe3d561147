//! Where one VM's files are, as the host sees them and as Firecracker sees them. Unjailed, the VMM
//! runs in the VM's directory under the run directory and names its own files relative to it;
//! jailed, it is chrooted into the jail and everything it opens must be placed inside.

use std::path::{Path, PathBuf};

use crate::error::{Step, VmError};
use crate::jailer::{JailPaths, jail_paths};

use super::ManagerConfig;

/// VM directories start with this; nothing else in the run directory is touched by the sweep.
pub(super) const VM_PREFIX: &str = "vm-";
pub(super) const RECORD_FILE: &str = "vm.json";
pub(super) const LOG_FILE: &str = "firecracker.log";
/// A non-jailed VMM's API socket, in the VM's directory.
pub(super) const API_SOCKET: &str = "api.sock";
/// The VM's own files, named relative to the VMM's working directory (see [`Layout::own_inner`]).
pub(super) const SCRATCH: &str = "scratch.ext4";
pub(super) const VSOCK: &str = "vsock.sock";

/// What Firecracker sees inside a jail.
pub(super) const KERNEL_IN_JAIL: &str = "/kernel";
pub(super) const INITRD_IN_JAIL: &str = "/initrd";
pub(super) const ROOTFS_IN_JAIL: &str = "/rootfs.ext4";
pub(super) const CODE_IN_JAIL: &str = "/code.ext4";
pub(super) const LAYERS_IN_JAIL: &str = "/layers.ext4";

/// Where one VM's files are, as the host sees them and as Firecracker sees them (they differ in a
/// jail).
#[derive(Debug, Clone)]
pub(super) struct Layout {
    pub(super) dir: PathBuf,
    pub(super) api_socket: PathBuf,
    /// The directory Firecracker's paths are relative to (`/` unless jailed).
    pub(super) root: PathBuf,
    pub(super) jailed: bool,
}

impl Layout {
    /// The layout of VM `id` under `config`, with the jail's paths when the VMM runs jailed.
    pub(super) fn new(config: &ManagerConfig, id: &str, mem_mib: u32) -> (Self, Option<JailPaths>) {
        let dir = config.run_dir.join(id);
        match &config.jailer {
            Some(jailer) => {
                let paths = jail_paths(jailer, id, &config.firecracker, mem_mib);
                let layout = Self {
                    dir,
                    api_socket: paths.api_socket.clone(),
                    root: paths.root.clone(),
                    jailed: true,
                };
                (layout, Some(paths))
            }
            None => {
                let layout = Self {
                    api_socket: dir.join(API_SOCKET),
                    root: PathBuf::from("/"),
                    dir,
                    jailed: false,
                };
                (layout, None)
            }
        }
    }

    /// A host path for something Firecracker will see at `inner` (absolute, in its root).
    pub(super) fn host(&self, inner: &str) -> PathBuf {
        if self.jailed {
            self.root.join(inner.trim_start_matches('/'))
        } else {
            PathBuf::from(inner)
        }
    }

    /// A file of the VM's own (its scratch disk, its vsock socket) as the VMM names it: relative
    /// to its working directory (the VM's directory), or at the jail's root. A snapshot records
    /// these names, so it restores into another VM's directory rather than onto the files of the
    /// VM it was taken from.
    pub(super) fn own_inner(&self, name: &str) -> String {
        if self.jailed {
            format!("/{name}")
        } else {
            name.to_string()
        }
    }

    /// The same file as [`Self::own_inner`] names, on the host.
    pub(super) fn own_host(&self, name: &str) -> PathBuf {
        if self.jailed {
            self.host(&self.own_inner(name))
        } else {
            self.dir.join(name)
        }
    }

    /// How Firecracker names a host image that [`Self::place`] puts at `in_jail` when jailed.
    pub(super) fn image_inner(&self, host: &Path, in_jail: &str) -> String {
        if self.jailed {
            in_jail.to_string()
        } else {
            host.display().to_string()
        }
    }

    /// Makes a host file visible to Firecracker and returns the path it uses: the file itself when
    /// not jailed; a hard link inside the jail otherwise (a copy across file systems).
    pub(super) fn place(&self, source: &Path, inner: &str, step: Step) -> Result<String, VmError> {
        if !self.jailed {
            return Ok(source.display().to_string());
        }
        let target = self.host(inner);
        if std::fs::hard_link(source, &target).is_err() {
            std::fs::copy(source, &target)
                .map_err(|e| VmError::io(step, "copying into the jail", source, e))?;
        }
        Ok(inner.to_string())
    }

    /// Gives the scratch disk at `disk` to the jail's user, which the VMM runs as and which must be
    /// able to write it. Nothing to do unjailed: the VMM runs as this process's user.
    pub(super) fn hand_scratch_to_jail(&self, disk: &Path, step: Step) -> Result<(), VmError> {
        if let (true, Some((uid, gid))) = (self.jailed, self.jail_owner()) {
            std::os::unix::fs::chown(disk, Some(uid), Some(gid)).map_err(|e| {
                VmError::io(step, "handing the scratch disk to the jail user", disk, e)
            })?;
        }
        Ok(())
    }

    /// The jail's uid and gid, read from the jail root the jailer created and handed over.
    fn jail_owner(&self) -> Option<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.root)
            .ok()
            .map(|m| (m.uid(), m.gid()))
    }
}
