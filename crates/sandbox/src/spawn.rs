//! Starting sandboxes: the bubblewrap command line, the fork-time setup, and the spawner thread.

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use crate::cgroup::{Cgroup, CgroupSupport, Limits};
use crate::netns::{self, NetNs};
use crate::sys::{self, ChildSetup};
use crate::{SandboxError, seccomp};

/// A host path mounted read-only at `dest` inside the sandbox.
#[derive(Debug, Clone)]
pub struct BindMount {
    pub source: PathBuf,
    pub dest: PathBuf,
}

/// Everything that differs between sandboxes.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Unique per sandbox (names its cgroup).
    pub name: String,
    /// argv of the process to run inside; `argv[0]` is a path inside the sandbox.
    pub command: Vec<String>,
    /// The complete environment of that process. Set inside the sandbox only (bubblewrap's
    /// `--clearenv`/`--setenv`, passed through a pipe): bubblewrap itself runs on the host before any
    /// namespace exists, so it gets [`LAUNCHER_ENV`], never these.
    pub env: Vec<(String, String)>,
    /// Read-only mounts on top of the base root (system directories).
    pub binds: Vec<BindMount>,
    pub workdir: PathBuf,
    pub tmp_size_bytes: u64,
    pub limits: Limits,
    /// The unprivileged host uid (and gid) the sandbox runs as.
    pub host_uid: u32,
    /// Port of the Runtime API listener on the sandbox's own loopback.
    pub listen_port: u16,
}

/// A running sandbox. Dropping it kills every process in it and removes its cgroup.
#[derive(Debug)]
pub struct Sandbox {
    pub child: Child,
    /// Bound on the sandbox's loopback, in its network namespace; the platform serves on it.
    pub listener: Option<TcpListener>,
    cgroup: Option<Cgroup>,
    _netns: NetNs,
    killed: bool,
}

impl Sandbox {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A descriptor that becomes readable when the sandbox's top process exits (for async waiting).
    pub fn exit_fd(&self) -> std::io::Result<OwnedFd> {
        sys::pidfd_open(self.child.id() as i32)
    }

    /// The exit status, once the process has exited (non-blocking).
    pub fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn memory_peak_bytes(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(Cgroup::memory_peak_bytes)
    }

    pub fn reset_memory_peak(&self) {
        if let Some(cg) = &self.cgroup {
            cg.reset_peak();
        }
    }

    /// Stops every process of the sandbox until [`thaw`](Self::thaw); `false` when this host has no
    /// freezer (the processes keep running).
    pub fn freeze(&self) -> Result<bool, SandboxError> {
        match &self.cgroup {
            Some(cg) if cg.can_freeze() => cg.freeze().map(|()| true),
            _ => Ok(false),
        }
    }

    pub fn thaw(&self) -> Result<(), SandboxError> {
        self.cgroup.as_ref().map_or(Ok(()), Cgroup::thaw)
    }

    pub fn oom_kills(&self) -> u64 {
        self.cgroup.as_ref().map(Cgroup::oom_kills).unwrap_or(0)
    }

    /// Kills the whole process tree: bubblewrap's death takes its PID namespace with it, and the cgroup
    /// sweep catches anything that slipped out. Blocking (milliseconds).
    pub fn kill(&mut self) {
        if self.killed {
            return;
        }
        self.killed = true;
        // Not by pid number: once the launcher has been reaped (its exit seen through `try_wait`),
        // the number may belong to another process. `Child::kill` signals only a child not yet
        // reaped, whose pid cannot have been reused.
        let _ = self.child.kill();
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
        let _ = self.child.wait();
        if let Some(cg) = &self.cgroup {
            cg.remove();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Bytes waiting in a pipe (used to drain a runtime's output before closing an invocation's logs).
pub fn pending_bytes(fd: &impl AsRawFd) -> usize {
    sys::bytes_readable(fd.as_raw_fd()).unwrap_or(0)
}

type Reply = mpsc::Sender<Result<Sandbox, SandboxError>>;

/// Starts sandboxes from one dedicated, long-lived thread (see the crate docs for why).
#[derive(Debug)]
pub struct Spawner {
    requests: mpsc::Sender<(SandboxSpec, Reply)>,
    cgroups: CgroupSupport,
}

/// Where the spawner thread sees the engine's shared directory (code, runtime files). bubblewrap runs
/// as the sandbox's unprivileged uid and resolves its mount sources as that uid, so a source below a
/// private data directory (0700, as systemd's `StateDirectory=` makes it) cannot be reached by path,
/// and bubblewrap 0.8 resolves even `--ro-bind-fd` descriptors back to their path. So the spawner
/// thread has a mount namespace of its own in which the shared directory is bind-mounted here; the
/// host's `/tmp` is hidden from that thread only (sandboxes get a tmpfs of their own there anyway).
pub const SHARED_MOUNT: &str = "/tmp";

/// A bind source as the spawner thread sees it: below [`SHARED_MOUNT`] if it lies in the shared
/// directory.
fn visible_source(shared: &Path, source: &Path) -> PathBuf {
    match source.strip_prefix(shared) {
        Ok(relative) => Path::new(SHARED_MOUNT).join(relative),
        Err(_) => source.to_path_buf(),
    }
}

/// The whole environment bubblewrap is started with. Whatever a function sets (`LD_AUDIT`,
/// `LD_PRELOAD`, `GCONV_PATH`, …) would otherwise steer the host's loader and libc in a process that
/// runs outside every namespace and filter.
pub const LAUNCHER_ENV: &[(&str, &str)] = &[("PATH", "/usr/bin:/bin")];

/// The size of a sandbox's `/dev/shm` (POSIX shared memory, semaphores), or of its `/tmp` if smaller.
const SHM_SIZE_BYTES: u64 = 64 << 20;

/// bubblewrap reads its options from a pipe filled before it starts; more would block the spawner.
const MAX_ARGS_BYTES: usize = 60 * 1024;

const BWRAP_CANDIDATES: &[&str] = &["/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap"];

impl Spawner {
    /// `shared`: the directory whose contents sandboxes mount (see [`SHARED_MOUNT`]); it must exist.
    pub fn new(shared: &Path) -> Result<Self, SandboxError> {
        let bwrap = BWRAP_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or(SandboxError::NoBubblewrap)?;
        let cgroups = CgroupSupport::detect();
        cgroups.sweep_stale();
        let programs = seccomp::programs()?;
        let (requests, inbox) = mpsc::channel::<(SandboxSpec, Reply)>();
        let thread_cgroups = cgroups.clone();
        let shared = shared.to_path_buf();
        let (ready, started) = mpsc::channel();
        std::thread::Builder::new()
            .name("voltrun-spawner".into())
            .spawn(move || {
                let mounts = sys::private_mount_namespace()
                    .and_then(|()| sys::bind_mount(&shared, Path::new(SHARED_MOUNT)))
                    .map_err(|e| SandboxError::Mounts {
                        shared: shared.display().to_string(),
                        source: e,
                    });
                let failed = mounts.is_err();
                let _ = ready.send(mounts);
                if failed {
                    return;
                }
                // The next instance's cgroup, made while nobody waits for it.
                let mut spare: Option<Cgroup> = None;
                for (spec, reply) in inbox {
                    let result = spawn_one(
                        &bwrap,
                        &thread_cgroups,
                        &programs,
                        &shared,
                        &spec,
                        spare.take(),
                    );
                    let _ = reply.send(result);
                    spare = thread_cgroups.make(&spare_name()).ok().flatten();
                }
                if let Some(unused) = spare {
                    unused.remove();
                }
            })
            .map_err(SandboxError::Spawn)?;
        started.recv().map_err(|_| SandboxError::SpawnerGone)??;
        Ok(Self { requests, cgroups })
    }

    pub fn cgroups(&self) -> &CgroupSupport {
        &self.cgroups
    }

    /// Starts a sandbox. Blocks for the few milliseconds that takes: call from a blocking context.
    pub fn spawn(&self, spec: SandboxSpec) -> Result<Sandbox, SandboxError> {
        let (reply, answer) = mpsc::channel();
        self.requests
            .send((spec, reply))
            .map_err(|_| SandboxError::SpawnerGone)?;
        answer.recv().map_err(|_| SandboxError::SpawnerGone)?
    }
}

/// A name for a cgroup made ahead of need, unique in this process: every spawner of the process
/// (tests run several servers in one) makes its cgroups under the same per-process base.
fn spare_name() -> String {
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("spare-{n}")
}

/// The top-level entries of `/` that hold system files: bound read-only, or recreated as the same
/// symlinks on merged-/usr systems.
const SYSTEM_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// bubblewrap's options, read from a pipe (`--args`) so that the environment's values never show in
/// the host's process list.
fn bwrap_options(spec: &SandboxSpec, shared: &Path, seccomp_fds: &[i32]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--unshare-user",
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "voltrun",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for dir in SYSTEM_DIRS {
        let host = Path::new("/").join(dir);
        match std::fs::read_link(&host) {
            Ok(target) => args.extend([
                "--symlink".into(),
                target.display().to_string(),
                host.display().to_string(),
            ]),
            Err(_) if host.is_dir() => args.extend([
                "--ro-bind".into(),
                host.display().to_string(),
                host.display().to_string(),
            ]),
            Err(_) => {}
        }
    }
    for etc in [
        "/etc/ssl",
        "/etc/ca-certificates",
        "/etc/alternatives",
        "/etc/localtime",
    ] {
        args.extend(["--ro-bind-try".into(), etc.into(), etc.into()]);
    }
    for bind in &spec.binds {
        args.extend([
            "--ro-bind".into(),
            visible_source(shared, &bind.source).display().to_string(),
            bind.dest.display().to_string(),
        ]);
    }
    args.extend([
        "--size".into(),
        spec.tmp_size_bytes.to_string(),
        "--tmpfs".into(),
        "/tmp".into(),
        "--proc".into(),
        "/proc".into(),
        "--dev".into(),
        "/dev".into(),
        // bubblewrap's /dev is a tmpfs without a size, and `--remount-ro /` leaves it writable:
        // /dev/shm gets a size-limited tmpfs of its own and the rest of /dev is read-only (device
        // nodes stay usable: writing to /dev/null modifies no file system).
        "--size".into(),
        SHM_SIZE_BYTES.min(spec.tmp_size_bytes).to_string(),
        "--tmpfs".into(),
        "/dev/shm".into(),
        "--remount-ro".into(),
        "/dev".into(),
        "--remount-ro".into(),
        "/".into(),
        "--chdir".into(),
        spec.workdir.display().to_string(),
    ]);
    for fd in seccomp_fds {
        args.extend(["--add-seccomp-fd".into(), fd.to_string()]);
    }
    args.push("--clearenv".into());
    for (key, value) in &spec.env {
        args.extend(["--setenv".into(), key.clone(), value.clone()]);
    }
    args
}

/// The options as bubblewrap's `--args` reads them: NUL-terminated strings.
fn nul_separated(options: &[String]) -> Result<Vec<u8>, SandboxError> {
    let mut data = Vec::new();
    for option in options {
        if option.contains('\0') {
            return Err(SandboxError::Spawn(std::io::Error::other(format!(
                "sandbox option {option:?} contains a NUL byte"
            ))));
        }
        data.extend_from_slice(option.as_bytes());
        data.push(0);
    }
    if data.len() > MAX_ARGS_BYTES {
        return Err(SandboxError::Spawn(std::io::Error::other(format!(
            "sandbox options take {} bytes; at most {MAX_ARGS_BYTES} fit",
            data.len()
        ))));
    }
    Ok(data)
}

fn spawn_one(
    bwrap: &Path,
    cgroups: &CgroupSupport,
    programs: &[Vec<u8>],
    shared: &Path,
    spec: &SandboxSpec,
    spare: Option<Cgroup>,
) -> Result<Sandbox, SandboxError> {
    let cgroup = match spare {
        Some(cgroup) => {
            cgroup.limit(&spec.limits)?;
            Some(cgroup)
        }
        None => cgroups.create(&spec.name, &spec.limits)?,
    };
    let procs = match &cgroup {
        Some(cg) => cg.procs_files()?,
        None => Vec::new(),
    };
    // Each filter goes to bubblewrap through a pipe it reads at start.
    let mut seccomp_reads: Vec<OwnedFd> = Vec::new();
    for program in programs {
        let (read, write) = sys::pipe().map_err(SandboxError::Spawn)?;
        std::fs::File::from(write)
            .write_all(program)
            .map_err(SandboxError::Spawn)?;
        seccomp_reads.push(read);
    }
    let seccomp_fds: Vec<i32> = seccomp_reads.iter().map(AsRawFd::as_raw_fd).collect();
    let options = nul_separated(&bwrap_options(spec, shared, &seccomp_fds))?;
    let (options_read, options_write) = sys::pipe().map_err(SandboxError::Spawn)?;
    std::fs::File::from(options_write)
        .write_all(&options)
        .map_err(SandboxError::Spawn)?;

    let mut rlimits = vec![(libc::RLIMIT_CORE, 0), (libc::RLIMIT_NOFILE, 1024)];
    if cgroup.is_none() {
        // Without cgroups: the weaker per-process caps (reported as degraded in /health).
        rlimits.push((libc::RLIMIT_DATA, spec.limits.memory_bytes + (64 << 20)));
        rlimits.push((libc::RLIMIT_NPROC, spec.limits.max_processes));
    }
    let setup = ChildSetup {
        cgroup_procs: procs.iter().map(AsRawFd::as_raw_fd).collect(),
        inherit: seccomp_fds
            .iter()
            .copied()
            .chain([options_read.as_raw_fd()])
            .collect(),
        rlimits,
    };

    let mut command = Command::new(bwrap);
    command
        .arg("--args")
        .arg(options_read.as_raw_fd().to_string())
        .arg("--")
        .args(&spec.command)
        .env_clear()
        .envs(LAUNCHER_ENV.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .uid(spec.host_uid)
        .gid(spec.host_uid);
    // SAFETY: `ChildSetup::apply` only makes async-signal-safe system calls (write, fcntl, setrlimit)
    // on descriptors and values prepared by the parent; it allocates nothing and takes no locks, so it
    // is sound to run between fork and exec in a multi-threaded process.
    unsafe {
        command.pre_exec(move || setup.apply());
    }
    let (netns, (listener, child)) = netns::with_new_namespace(|| {
        let listener = TcpListener::bind(("127.0.0.1", spec.listen_port))?;
        let child = command.spawn()?;
        Ok((listener, child))
    })
    .map_err(|e| {
        if let Some(cg) = &cgroup {
            cg.remove();
        }
        SandboxError::Spawn(e)
    })?;
    drop(procs);
    drop(seccomp_reads);
    drop(options_read);
    Ok(Sandbox {
        child,
        listener: Some(listener),
        cgroup,
        _netns: netns,
        killed: false,
    })
}
