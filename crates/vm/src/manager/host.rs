//! The host tools the manager runs: `mkfs.ext4` for scratch disks, `ip` for a jail's network
//! namespace, and `cp` for sparse copies of disks. A tool that fails is an error quoting its output.

use std::path::Path;
use std::process::Stdio;

use crate::error::{Step, VmError};

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

pub(super) async fn run_ip(args: &[&str]) -> Result<(), VmError> {
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

/// Copies a (sparse) disk image keeping its holes: a mostly empty scratch disk stays small.
pub(super) async fn sparse_copy(source: &Path, target: &Path, step: Step) -> Result<(), VmError> {
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
