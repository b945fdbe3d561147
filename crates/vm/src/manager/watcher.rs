//! The watcher: a task that owns a VMM process, waits for it to exit (or kills it on request),
//! removes what the VM created, and publishes how it ended ([`ExitInfo`]) for whoever waits.

use std::path::{Path, PathBuf};

use tokio::sync::{oneshot, watch};

use super::cleanup::{Record, remove_everything};
use super::layout::LOG_FILE;

/// The most of the VMM's output quoted in an error.
const LOG_TAIL_BYTES: usize = 2048;

/// How a VMM process ended.
#[derive(Debug, Clone)]
pub struct ExitInfo {
    /// As `std::process::ExitStatus` prints it (`exit status: 0`, `signal: 9 (SIGKILL)`).
    pub status: String,
    /// Whether the manager asked for it (stop or drop) rather than the process ending on its own.
    pub requested: bool,
    /// The last of the VMM's output.
    pub log_tail: String,
    /// Anything that could not be removed.
    pub cleanup_errors: Vec<String>,
}

/// Waits until a guest's watcher says how its process ended (and its files are removed).
pub(crate) async fn wait_for_exit(exit: &watch::Receiver<Option<ExitInfo>>) -> ExitInfo {
    let unknown = || ExitInfo {
        status: "unknown (the watcher stopped)".into(),
        requested: false,
        log_tail: String::new(),
        cleanup_errors: vec![],
    };
    let mut exit = exit.clone();
    match exit.wait_for(Option::is_some).await {
        Ok(info) => info.clone().unwrap_or_else(unknown),
        Err(_) => unknown(),
    }
}

/// Owns the VMM process: waits for it to exit (or kills it on request or when the [`super::Vm`]
/// is dropped), then removes what the VM created and publishes how it ended.
pub(super) async fn watch_process(
    mut child: tokio::process::Child,
    kill: oneshot::Receiver<()>,
    exit: watch::Sender<Option<ExitInfo>>,
    dir: PathBuf,
    record: Record,
) {
    let (status, requested) = tokio::select! {
        status = child.wait() => (status, false),
        _ = kill => {
            let _ = child.start_kill();
            (child.wait().await, true)
        }
    };
    let status = match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    let log_tail = tail(&dir.join(LOG_FILE));
    if !requested {
        tracing::warn!(vm = record.id, status, log = log_tail, "microVM exited");
    }
    let cleanup_errors = remove_everything(&dir, &record).await;
    for error in &cleanup_errors {
        tracing::warn!(vm = record.id, error, "microVM cleanup incomplete");
    }
    let _ = exit.send(Some(ExitInfo {
        status,
        requested,
        log_tail,
        cleanup_errors,
    }));
}

/// The last of a log file, for errors.
pub(crate) fn tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}
