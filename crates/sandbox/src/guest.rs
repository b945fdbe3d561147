//! What the microVM guest agent (PID 1 inside a Firecracker guest) needs from the kernel and cannot
//! get from the standard library: mounting the pseudo-filesystems, bringing loopback up, and a vsock
//! listener for the host's connections. Kept here so that the agent crate stays free of `unsafe`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::sys;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Mount flags the guest uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct MountFlags {
    pub read_only: bool,
    pub no_suid: bool,
    pub no_dev: bool,
    pub no_exec: bool,
}

impl MountFlags {
    fn bits(self) -> libc::c_ulong {
        let mut bits = 0;
        if self.read_only {
            bits |= libc::MS_RDONLY;
        }
        if self.no_suid {
            bits |= libc::MS_NOSUID;
        }
        if self.no_dev {
            bits |= libc::MS_NODEV;
        }
        if self.no_exec {
            bits |= libc::MS_NOEXEC;
        }
        bits
    }
}

/// `mount(2)`: mounts `source` (a device or a pseudo-filesystem name) of type `fstype` on `target`.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MountFlags,
    data: Option<&str>,
) -> io::Result<()> {
    let invalid = |_| io::Error::new(io::ErrorKind::InvalidInput, "argument contains a NUL byte");
    let source = CString::new(source).map_err(invalid)?;
    let target = c_path(target)?;
    let fstype = CString::new(fstype).map_err(invalid)?;
    let data = data.map(CString::new).transpose().map_err(invalid)?;
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: every pointer is a NUL-terminated string (or null for `data`) owned by this frame and
    // alive for the duration of the call; mount does not keep them.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags.bits(),
            data_ptr,
        )
    })
    .map(drop)
}

/// Brings the loopback interface up (a guest kernel starts with it down).
pub fn loopback_up() -> io::Result<()> {
    sys::loopback_up()
}

/// A vsock stream socket listening on `port` for any CID (the host connects through Firecracker).
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket() has no memory-safety preconditions; the result is checked before use.
    let fd =
        check(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes for the duration of the call.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    })?;
    // SAFETY: listen takes a descriptor we own and a backlog; no pointers.
    check(unsafe { libc::listen(fd.as_raw_fd(), 4) })?;
    Ok(fd)
}

/// Accepts one connection on a listener from [`vsock_listen`] (blocking). The connected socket is a
/// plain byte stream: callers may wrap it in `std::os::unix::net::UnixStream` for reading and
/// writing (never for address queries, which assume `AF_UNIX`).
pub fn vsock_accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: accept4 with null address pointers does not write any address; the descriptor is ours.
    let fd = check(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The children of this process that have exited and wait to be reaped (state `Z` in `/proc`): as a
/// guest's init, the agent inherits every orphaned process, and each one that exits stays a zombie
/// until init reaps it.
pub fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses, so parse after the
            // last `)`.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let mut fields = stat
                    .rsplit_once(')')
                    .map_or("", |(_, rest)| rest)
                    .split_whitespace();
                fields.next() == Some("Z")
                    && fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(me)
            })
        })
        .collect()
}

/// Reaps the exited child `pid` without blocking; returns whether there was one to reap.
pub fn reap(pid: u32) -> io::Result<bool> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes the exit status into a local we own; WNOHANG keeps it from blocking.
    let reaped = check(unsafe { libc::waitpid(pid, &raw mut status, libc::WNOHANG) })?;
    Ok(reaped == pid)
}

/// The user a guest's runtime runs as (`sbx_user` in the guest images' `/etc/passwd`).
pub const RUNTIME_UID: u32 = 1000;

/// Makes `command` start as [`RUNTIME_UID`] (no supplementary groups) with at most `max_processes`
/// processes and threads for that user (`RLIMIT_NPROC`; `0` for no limit): a guest's runtime is
/// unprivileged, and a fork bomb in it stops at the limit instead of exhausting the VM.
pub fn run_unprivileged(command: &mut std::process::Command, max_processes: u64) {
    use std::os::unix::process::CommandExt;
    // std drops supplementary groups (setgroups) when it switches uid as root.
    command.uid(RUNTIME_UID).gid(RUNTIME_UID);
    if max_processes > 0 {
        let limit = libc::rlimit {
            rlim_cur: max_processes,
            rlim_max: max_processes,
        };
        // SAFETY: between fork and exec the closure only calls setrlimit, which is async-signal-safe,
        // on a value it owns; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NPROC, &raw const limit) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
    }
}

/// Makes `path` world-writable with the sticky bit (`/tmp` on a freshly mounted scratch disk, whose
/// root directory belongs to root).
pub fn make_sticky_tmp(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o1777))
}

/// Sets the system's wall clock (`CLOCK_REALTIME`) to `unix_ms`: a guest restored from a snapshot
/// wakes with the time the snapshot was taken. Needs `CAP_SYS_TIME` (the guest's init has it).
pub fn set_realtime_clock(unix_ms: i64) -> io::Result<()> {
    let time = libc::timespec {
        tv_sec: unix_ms.div_euclid(1000),
        tv_nsec: unix_ms.rem_euclid(1000) * 1_000_000,
    };
    // SAFETY: clock_settime reads a timespec we own for the duration of the call and keeps nothing.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &raw const time) }).map(drop)
}
