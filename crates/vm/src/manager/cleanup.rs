//! Removing what a VM left on the host: its directory, jail, cgroups and network namespace, as its
//! [`Record`] names them. The watcher does it when a VMM exits; [`Prepared`] when spawning fails
//! before there is a watcher; and the start-up [`sweep`] for VMs whose server died, finding their
//! VMMs still running by scanning `/proc`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::host::run_ip;
use super::layout::{RECORD_FILE, VM_PREFIX};

/// What a VM left on the host, written before its process starts so a later sweep can undo it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) id: String,
    pub(super) jail_dir: Option<PathBuf>,
    pub(super) cgroups: Vec<PathBuf>,
    pub(super) netns: Option<String>,
}

/// What the start-up sweep found and removed.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    /// Stale VM directories removed.
    pub vms: Vec<String>,
    /// VMM processes still running from them, killed.
    pub killed: Vec<u32>,
    pub errors: Vec<String>,
}

/// Everything under the run directory is stale once we hold the lock: kill the VMMs still running
/// and remove what their records name.
pub(super) async fn sweep(run_dir: &Path) -> SweepReport {
    let mut report = SweepReport::default();
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return report;
    };
    let stale: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.starts_with(VM_PREFIX).then(|| (name, e.path()))
        })
        .collect();
    if stale.is_empty() {
        return report;
    }
    let processes = vmm_processes();
    for (id, dir) in stale {
        for &(pid, _) in processes.iter().filter(|(_, vm)| *vm == id) {
            match voltrun_sandbox::process::kill(pid) {
                Ok(()) => report.killed.push(pid),
                Err(e) => report.errors.push(format!("killing {pid} ({id}): {e}")),
            }
            wait_gone(pid).await;
        }
        // A directory without a readable record still goes: only what the record names is lost.
        let record = std::fs::read(dir.join(RECORD_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
            .unwrap_or_else(|| Record {
                id: id.clone(),
                ..Record::default()
            });
        report.errors.extend(remove_everything(&dir, &record).await);
        report.vms.push(id);
    }
    report
}

/// A VM directory prepared but not yet handed to a watcher: removed (with what its record names)
/// if spawning fails.
pub(super) struct Prepared {
    dir: PathBuf,
    record: Option<Record>,
}

impl Prepared {
    pub(super) fn new(dir: PathBuf, record: Record) -> Self {
        Self {
            dir,
            record: Some(record),
        }
    }

    /// Hands the record over (to the watcher): nothing is removed on drop any more.
    pub(super) fn take(&mut self) -> Record {
        self.record.take().unwrap_or_default()
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            let dir = self.dir.clone();
            // Spawning failed before a process existed: only files and perhaps a netns to undo.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    remove_everything(&dir, &record).await;
                });
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

/// Removes a VM's directory, jail, cgroups and network namespace. Returns what could not be removed.
pub(super) async fn remove_everything(dir: &Path, record: &Record) -> Vec<String> {
    let mut errors = Vec::new();
    let mut remove_dir = |path: &Path| match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(format!("removing {}: {e}", path.display())),
    };
    if let Some(jail) = &record.jail_dir {
        remove_dir(jail);
    }
    remove_dir(dir);
    // A cgroup can be removed only once its last task is gone, which may lag the exit slightly.
    for cgroup in &record.cgroups {
        let mut last = None;
        for _ in 0..50 {
            match std::fs::remove_dir(cgroup) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(e) = last {
            errors.push(format!("removing cgroup {}: {e}", cgroup.display()));
        }
    }
    if let Some(name) = &record.netns
        && Path::new("/var/run/netns").join(name).exists()
        && let Err(e) = run_ip(&["netns", "delete", name]).await
    {
        errors.push(e.to_string());
    }
    errors
}

/// Running Firecracker processes started by a manager, with the VM id they were given (`--id`).
fn vmm_processes() -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let program = args.first()?;
            if !String::from_utf8_lossy(program).contains("firecracker") {
                return None;
            }
            let id = args
                .windows(2)
                .find(|w| w[0] == b"--id")
                .map(|w| String::from_utf8_lossy(w[1]).into_owned())?;
            id.starts_with(VM_PREFIX).then_some((pid, id))
        })
        .collect()
}

async fn wait_gone(pid: u32) {
    let path = PathBuf::from(format!("/proc/{pid}"));
    for _ in 0..200 {
        // A killed child of ours would linger as a zombie; those from a dead server were reparented
        // and are reaped by init. Either way, stop waiting once it no longer runs.
        let state = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !path.exists() || zombie {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
