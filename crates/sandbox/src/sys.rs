//! Thin wrappers over the raw system calls the sandbox needs, each with its safety argument.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Moves the calling thread into a new network namespace.
pub fn unshare_network() -> io::Result<()> {
    // SAFETY: unshare takes a flag word and touches only the calling thread's namespace membership.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) }).map(drop)
}

/// Moves the calling thread into the network namespace `ns` refers to.
pub fn enter_network(ns: &OwnedFd) -> io::Result<()> {
    // SAFETY: `ns` is a valid, open namespace file descriptor for the duration of the call.
    check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }).map(drop)
}

/// Brings the loopback interface of the current network namespace up (a new namespace starts with
/// it down).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() has no memory-safety preconditions; the result is checked before use and owned.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let sock = check(sock)?;
    // SAFETY: `sock` was just returned by socket() and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req` into `req`, which is a valid,
    // writable ifreq for the duration of the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: after SIOCGIFFLAGS the union holds the flags member.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS reads `req`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
}

/// Gives the calling thread a mount namespace of its own, in which mounts made later stay (they never
/// propagate back to the host's) while the host's later mounts still arrive.
pub fn private_mount_namespace() -> io::Result<()> {
    // SAFETY: unshare takes a flag word and changes only the calling thread's namespace membership
    // (CLONE_NEWNS implies CLONE_FS, which a thread may unshare alone).
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    // SAFETY: `c"/"` is a static NUL-terminated string; a propagation change takes null for the
    // source, file system type and data.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// Bind-mounts `source` (with what is mounted below it) on `target`, in the calling thread's mount
/// namespace.
pub fn bind_mount(source: &std::path::Path, target: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let source = std::ffi::CString::new(source.as_os_str().as_bytes())?;
    let target = std::ffi::CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: both paths are NUL-terminated strings that outlive the call; a bind mount takes null
    // for the file system type and data.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// A pipe whose both ends are close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array it is given.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The number of bytes waiting to be read from a pipe or socket.
pub fn bytes_readable(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points at `n`.
    check(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) })?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// A descriptor that becomes readable when process `pid` exits (Linux 5.3+).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no pointers involved.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn kill(pid: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; a stale pid yields ESRCH, which is ignored.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// What the forked child does between fork and exec. Runs in the child of a multi-threaded parent,
/// so it may only make async-signal-safe calls: no allocation, no locks. Everything it needs was
/// prepared by the parent.
pub struct ChildSetup {
    /// Open `cgroup.procs` files to join (writing "0" moves the writer).
    pub cgroup_procs: Vec<RawFd>,
    /// Descriptors to pass through exec (close-on-exec cleared).
    pub inherit: Vec<RawFd>,
    /// rlimits to set: (resource, limit).
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
}

impl ChildSetup {
    /// # Safety
    /// Must only be called in a freshly forked child before exec (it is the body of a `pre_exec` hook).
    pub unsafe fn apply(&self) -> io::Result<()> {
        for &fd in &self.cgroup_procs {
            // SAFETY: write() is async-signal-safe; the buffer is a static one-byte slice.
            let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        for &fd in &self.inherit {
            // SAFETY: fcntl is async-signal-safe; clearing FD_CLOEXEC on a descriptor we own.
            check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
        }
        for &(resource, limit) in &self.rlimits {
            let rlim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit is async-signal-safe and reads the struct on our stack.
            check(unsafe { libc::setrlimit(resource, &rlim) })?;
        }
        Ok(())
    }
}
