//! Private network namespaces. Each instance gets a namespace with only a loopback interface; the
//! platform binds the instance's Runtime API listener inside it before the runtime starts, so the
//! runtime can reach that API on 127.0.0.1 and nothing else: not the host's loopback services, not
//! the outside.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

use crate::sys;

/// A network namespace kept alive by an open descriptor; it disappears with its last process and
/// this descriptor.
#[derive(Debug)]
pub struct NetNs {
    _fd: OwnedFd,
}

fn current() -> io::Result<OwnedFd> {
    Ok(File::open("/proc/thread-self/ns/net")?.into())
}

/// Runs `inside` with the calling thread in a new network namespace whose loopback is up, then puts
/// the thread back where it was. Sockets created and processes spawned by `inside` stay in the new
/// namespace. Must be called on a thread that does nothing else meanwhile (the spawner thread).
pub fn with_new_namespace<T>(inside: impl FnOnce() -> io::Result<T>) -> io::Result<(NetNs, T)> {
    let original = current()?;
    sys::unshare_network()?;
    let result = (|| {
        sys::loopback_up()?;
        let value = inside()?;
        Ok((NetNs { _fd: current()? }, value))
    })();
    // Going back must succeed: a spawner thread stranded in an instance's namespace would start every
    // later sandbox there. If it cannot, abort rather than continue wrongly.
    if let Err(e) = sys::enter_network(&original) {
        tracing::error!(error = %e, "cannot return to the host network namespace; aborting");
        std::process::abort();
    }
    result
}
