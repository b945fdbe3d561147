//! Snapshots: pausing a running VM to write a full snapshot (device state, memory and a copy of its
//! scratch disk) and restoring one into a fresh VMM, jailed or not.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Step, VmError};

use super::drives::planned_drives;
use super::host::sparse_copy;
use super::layout::SCRATCH;
use super::{Vm, VmManager, VmSpec};

const SNAPSHOT_STATE: &str = "snapshot.state";
const SNAPSHOT_MEMORY: &str = "snapshot.mem";

/// A full snapshot of a VM, on the host: its device state, its memory and, when it has one, a copy
/// of its scratch disk as it was (the guest's page cache in the memory file refers to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub state: PathBuf,
    pub memory: PathBuf,
    pub scratch: Option<PathBuf>,
}

impl Snapshot {
    /// The snapshot [`Vm::snapshot`] wrote into `dir`, if its state and memory files are there.
    pub fn in_dir(dir: &Path) -> Option<Self> {
        let state = dir.join(SNAPSHOT_STATE);
        let memory = dir.join(SNAPSHOT_MEMORY);
        if !state.is_file() || !memory.is_file() {
            return None;
        }
        let scratch = Some(dir.join(SCRATCH)).filter(|s| s.is_file());
        Some(Self {
            state,
            memory,
            scratch,
        })
    }
}

impl Vm {
    /// Pauses the guest, writes a full snapshot into `dir` (which must exist), and resumes the guest.
    pub async fn snapshot(&mut self, dir: &Path) -> Result<Snapshot, VmError> {
        let step = Step::Snapshot;
        self.api.set_paused(true).await?;
        let (state_inner, memory_inner) = if self.layout.jailed {
            (format!("/{SNAPSHOT_STATE}"), format!("/{SNAPSHOT_MEMORY}"))
        } else {
            let at = |name: &str| dir.join(name).display().to_string();
            (at(SNAPSHOT_STATE), at(SNAPSHOT_MEMORY))
        };
        let created = self.api.create_snapshot(&state_inner, &memory_inner).await;
        // The disk is copied while the guest is still paused: it matches the memory image.
        let scratch = match (&created, self.spec.scratch_mib > 0) {
            (Ok(()), true) => {
                let copy = dir.join(SCRATCH);
                sparse_copy(&self.layout.own_host(SCRATCH), &copy, step).await?;
                Some(copy)
            }
            _ => None,
        };
        let resumed = self.api.set_paused(false).await;
        created?;
        resumed?;
        let snapshot = Snapshot {
            state: dir.join(SNAPSHOT_STATE),
            memory: dir.join(SNAPSHOT_MEMORY),
            scratch,
        };
        if self.layout.jailed {
            // Written inside the jail: moved out to where the caller asked.
            for (inner, target) in [
                (&state_inner, &snapshot.state),
                (&memory_inner, &snapshot.memory),
            ] {
                let source = self.layout.host(inner);
                if std::fs::rename(&source, target).is_err() {
                    std::fs::copy(&source, target)
                        .and_then(|_| std::fs::remove_file(&source))
                        .map_err(|e| VmError::io(step, "moving out of the jail", &source, e))?;
                }
            }
        }
        Ok(snapshot)
    }
}

impl VmManager {
    /// Starts a VMM and loads `snapshot` into it, resumed: the guest carries on where the snapshot
    /// was taken, with no boot. `spec` is the spec of the VM it was taken from (the root image and
    /// code drive are where they were; the scratch disk is this VM's copy of the snapshot's).
    pub async fn restore(&self, spec: VmSpec, snapshot: &Snapshot) -> Result<Vm, VmError> {
        let mut vm = self.spawn(spec).await?;
        match load(&mut vm, snapshot).await {
            Ok(()) => Ok(vm),
            Err(e) => {
                // Gone, files and all, before the caller hears of it.
                vm.stop().await;
                Err(e)
            }
        }
    }
}

async fn load(vm: &mut Vm, snapshot: &Snapshot) -> Result<(), VmError> {
    let started = Instant::now();
    let step = Step::Restore;
    let layout = &vm.layout;
    if let Some(disk) = &snapshot.scratch {
        let target = layout.own_host(SCRATCH);
        sparse_copy(disk, &target, step).await?;
        layout.hand_scratch_to_jail(&target, step)?;
    }
    if layout.jailed {
        // The snapshot's drives name the jail-relative paths the first VM used: the same images
        // must be there in this jail. (Unjailed, they are the host paths themselves.)
        for drive in planned_drives(&vm.spec) {
            if let Some((host, in_jail)) = drive.image {
                layout.place(host, in_jail, step)?;
            }
        }
    }
    let state = layout.place(&snapshot.state, &format!("/{SNAPSHOT_STATE}"), step)?;
    let memory = layout.place(&snapshot.memory, &format!("/{SNAPSHOT_MEMORY}"), step)?;
    let loaded = vm.api.load_snapshot(&state, &memory).await;
    vm.unless_exited(loaded).await?;
    vm.timings.restore = Some(started.elapsed());
    Ok(())
}
