//! VoltRun's Linux-namespace sandbox. One sandbox runs one runtime process tree:
//!
//! - **bubblewrap** (`bwrap`, from the distribution) builds the mount, PID, IPC, UTS and user
//!   namespaces and the minimal root: runtime directories and the function's code read-only, a
//!   size-limited tmpfs at `/tmp`, a private `/proc` and `/dev`, no capabilities, `no_new_privs`;
//! - a **network namespace** of our own ([`netns`]) holding only a loopback interface, on which the
//!   platform listens for the instance's Lambda Runtime API before the runtime starts;
//! - **cgroups** ([`cgroup`]) cap memory, process count and CPU share (v1 or v2, whichever the host
//!   has; rlimits as a last resort, reported as degraded);
//! - a **seccomp** filter ([`seccomp`]) refuses system calls a function never needs.
//!
//! Processes are started from one long-lived spawner thread ([`spawn`]): network-namespace switches
//! and the parent-death signal are per thread, so they must not happen on a pooled worker.
//!
//! This is the only crate of the workspace with `unsafe` code; each block says why it is sound.

pub mod cgroup;
pub mod guest;
pub mod netns;
pub mod process;
pub mod seccomp;
pub mod spawn;
mod sys;

pub use cgroup::{CgroupSupport, Limits};
pub use spawn::{BindMount, Sandbox, SandboxSpec, Spawner};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("bubblewrap (bwrap) is not installed: install the `bubblewrap` package")]
    NoBubblewrap,
    #[error("the spawner's mount namespace (showing {shared} to sandboxes) failed: {source}")]
    Mounts {
        shared: String,
        source: std::io::Error,
    },
    #[error("network namespace setup failed: {0}")]
    Network(std::io::Error),
    #[error("cgroup setup failed at {path}: {source}")]
    Cgroup {
        path: String,
        source: std::io::Error,
    },
    #[error("seccomp filter could not be built: {0}")]
    Seccomp(String),
    #[error("starting the sandbox failed: {0}")]
    Spawn(std::io::Error),
    #[error("the sandbox spawner thread is gone")]
    SpawnerGone,
}
