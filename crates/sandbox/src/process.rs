//! Signalling processes the platform started but no longer holds a handle to (a microVM's VMM left
//! running by a crashed server, found by the VM manager's start-up sweep).

use std::io;

/// Sends SIGKILL to `pid`. `Ok` also when the process is already gone (ESRCH).
pub fn kill(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    if pid <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to signal a process group",
        ));
    }
    // SAFETY: kill has no memory-safety preconditions; pid > 0 names exactly one process.
    if unsafe { libc::kill(pid, libc::SIGKILL) } < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ESRCH) {
            return Err(error);
        }
    }
    Ok(())
}
