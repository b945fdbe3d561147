//! A VM's drives, planned once from its spec: configuring the VM attaches them, `GET /vm/config`
//! should then report them, and restoring a snapshot into a jail places their images again.

use std::path::Path;

use crate::api::Drive;
use crate::error::{Step, VmError};

use super::VmSpec;
use super::host::make_ext4_disk;
use super::layout::{CODE_IN_JAIL, LAYERS_IN_JAIL, Layout, ROOTFS_IN_JAIL, SCRATCH};

/// One of a VM's drives, in the order the guest letters them (`vda`, `vdb`, …): what configuring
/// the VM attaches and what `GET /vm/config` should then report.
#[derive(Debug)]
pub(super) struct PlannedDrive<'a> {
    id: &'static str,
    /// The host image and its path inside a jail; `None` for the VM's own scratch disk.
    pub(super) image: Option<(&'a Path, &'static str)>,
    root: bool,
    read_only: bool,
}

pub(super) fn planned_drives<'a>(spec: &'a VmSpec) -> Vec<PlannedDrive<'a>> {
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

impl PlannedDrive<'_> {
    /// The drive as Firecracker's API takes and reports it, backed by `path_on_host` as the VMM
    /// names it.
    pub(super) fn drive(&self, path_on_host: String) -> Drive {
        Drive {
            drive_id: self.id.into(),
            path_on_host,
            is_root_device: self.root,
            is_read_only: self.read_only,
        }
    }

    /// Makes the drive's backing file and returns the path the VMM names it by: an image placed
    /// where the VMM sees it, or a fresh scratch disk of `scratch_mib` MiB.
    pub(super) async fn prepare(
        &self,
        layout: &Layout,
        scratch_mib: u32,
    ) -> Result<String, VmError> {
        match self.image {
            Some((host, in_jail)) => layout.place(host, in_jail, Step::ConfigureDrive),
            None => make_scratch(layout, scratch_mib).await,
        }
    }

    /// The path the VMM names the drive by once [`Self::prepare`] made it, without making anything.
    pub(super) fn expected_path(&self, layout: &Layout) -> String {
        match self.image {
            Some((host, in_jail)) => layout.image_inner(host, in_jail),
            None => layout.own_inner(SCRATCH),
        }
    }
}

/// Creates the VM's scratch disk: a sparse file with an empty ext4 file system. It is named
/// relative to the VMM's working directory, as the vsock socket is: a snapshot restored into
/// another VM's directory then finds that VM's copy of the disk.
async fn make_scratch(layout: &Layout, mib: u32) -> Result<String, VmError> {
    let host = layout.own_host(SCRATCH);
    make_ext4_disk(&host, mib).await?;
    layout.hand_scratch_to_jail(&host, Step::ConfigureDrive)?;
    Ok(layout.own_inner(SCRATCH))
}
