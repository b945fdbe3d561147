//! Resource limits through cgroups. Each instance gets its own cgroup below this process's own (never
//! the root): `memory` caps memory at the function's `memory_mb` (the kernel OOM-kills at the limit),
//! `pids` caps the process count (a fork bomb stops there), `cpu` gives a share proportional to
//! memory, as Lambda does, and the freezer stops every process of an idle instance between
//! invocations, as Lambda freezes its sandboxes (a process a function leaves running gets no CPU
//! while nobody is invoking it).
//!
//! Hosts differ: cgroup v1 (separate hierarchies per controller), v2 (one unified tree), or neither
//! writable (inside some containers). [`CgroupSupport::detect`] finds what works; with neither, the
//! caller falls back to rlimits and reports the sandbox as degraded.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{SandboxError, sys};

/// What one instance may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: u64,
    pub max_processes: u64,
    /// CPU weight relative to other instances; 1024 is "one share" (cgroup v1 units).
    pub cpu_shares: u64,
}

#[derive(Debug, Clone)]
pub enum CgroupSupport {
    /// Separate v1 hierarchies: one base directory per controller.
    V1 {
        memory: PathBuf,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
        freezer: Option<PathBuf>,
    },
    /// The unified v2 hierarchy: one base directory with memory, pids and cpu enabled below it.
    V2 { base: PathBuf },
    /// No writable cgroup controller; limits fall back to rlimits.
    Unavailable { reason: String },
}

fn cgroup_error(path: &Path, source: io::Error) -> SandboxError {
    SandboxError::Cgroup {
        path: path.display().to_string(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    fs::write(path, value).map_err(|e| cgroup_error(path, e))
}

/// This process's cgroup path in the hierarchy holding `controller` (v1), from /proc/self/cgroup.
fn own_v1_dir(controller: &str) -> Option<PathBuf> {
    let table = fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in table.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == controller) {
            let mount = [
                format!("/sys/fs/cgroup/{controllers}"),
                format!("/sys/fs/cgroup/{controller}"),
            ]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists())?;
            return Some(mount.join(path.trim_start_matches('/')));
        }
    }
    None
}

/// The per-process base directory name: instances of this server live below it, and a restarted
/// server can tell which bases belong to processes that are gone.
fn base_name() -> String {
    format!("voltrun-{}", std::process::id())
}

fn make_base(own: &Path) -> Result<PathBuf, SandboxError> {
    let base = own.join(base_name());
    fs::create_dir_all(&base).map_err(|e| cgroup_error(&base, e))?;
    Ok(base)
}

impl CgroupSupport {
    /// Finds a writable cgroup setup and creates this process's base directories in it.
    pub fn detect() -> Self {
        match Self::detect_v2().or_else(|_| Self::detect_v1()) {
            Ok(support) => support,
            Err(e) => Self::Unavailable {
                reason: e.to_string(),
            },
        }
    }

    fn detect_v1() -> Result<Self, SandboxError> {
        let memory_own = own_v1_dir("memory").ok_or_else(|| SandboxError::Cgroup {
            path: "/sys/fs/cgroup/memory".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "no v1 memory hierarchy"),
        })?;
        let memory = make_base(&memory_own)?;
        let pids = own_v1_dir("pids").and_then(|own| make_base(&own).ok());
        let cpu = own_v1_dir("cpu").and_then(|own| make_base(&own).ok());
        let freezer = own_v1_dir("freezer").and_then(|own| make_base(&own).ok());
        Ok(Self::V1 {
            memory,
            pids,
            cpu,
            freezer,
        })
    }

    fn detect_v2() -> Result<Self, SandboxError> {
        let root = Path::new("/sys/fs/cgroup");
        let controllers = fs::read_to_string(root.join("cgroup.controllers"))
            .map_err(|e| cgroup_error(root, e))?;
        for needed in ["memory", "pids"] {
            if !controllers.split_whitespace().any(|c| c == needed) {
                return Err(cgroup_error(
                    root,
                    io::Error::other(format!("v2 controller {needed} not available")),
                ));
            }
        }
        let table = fs::read_to_string("/proc/self/cgroup").map_err(|e| cgroup_error(root, e))?;
        let own_path = table
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/");
        let own = root.join(own_path.trim_start_matches('/'));
        // v2 forbids processes in a cgroup that delegates controllers to children, so this process
        // moves into a leaf of its own cgroup first, then enables the controllers below.
        let leaf = own.join("voltrun-server");
        fs::create_dir_all(&leaf).map_err(|e| cgroup_error(&leaf, e))?;
        write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
        let enable = "+memory +pids +cpu";
        write(&own.join("cgroup.subtree_control"), enable)
            .or_else(|_| write(&own.join("cgroup.subtree_control"), "+memory +pids"))?;
        let base = make_base(&own)?;
        write(&base.join("cgroup.subtree_control"), enable)
            .or_else(|_| write(&base.join("cgroup.subtree_control"), "+memory +pids"))?;
        Ok(Self::V2 { base })
    }

    pub fn is_available(&self) -> bool {
        !matches!(self, Self::Unavailable { .. })
    }

    /// Whether instances' cgroups can be frozen (the v1 freezer hierarchy, or v2's `cgroup.freeze`,
    /// Linux 5.2 and later).
    pub fn can_freeze(&self) -> bool {
        match self {
            Self::V1 { freezer, .. } => freezer.is_some(),
            Self::V2 { base } => base.join("cgroup.freeze").exists(),
            Self::Unavailable { .. } => false,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::V1 { memory, .. } => format!("cgroup v1 under {}", memory.display()),
            Self::V2 { base } => format!("cgroup v2 under {}", base.display()),
            Self::Unavailable { reason } => {
                format!("no writable cgroups ({reason}); limits fall back to rlimits")
            }
        }
    }

    /// Creates the cgroup(s) for one instance with its limits applied. `None` when unavailable.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Option<Cgroup>, SandboxError> {
        let Some(cgroup) = self.make(name)? else {
            return Ok(None);
        };
        cgroup.limit(limits)?;
        Ok(Some(cgroup))
    }

    /// Creates the cgroup directories for one instance, without limits yet (see [`Cgroup::limit`]):
    /// making directories is the slow part (several milliseconds per v1 hierarchy), so the spawner
    /// makes the next one ahead of need. `None` when unavailable.
    pub fn make(&self, name: &str) -> Result<Option<Cgroup>, SandboxError> {
        // `create_dir`, not `create_dir_all`: an existing directory is an error, never a cgroup
        // shared with another instance.
        let mkdir = |dir: PathBuf| {
            fs::create_dir(&dir)
                .map(|()| dir.clone())
                .map_err(|e| cgroup_error(&dir, e))
        };
        match self {
            Self::V1 {
                memory,
                pids,
                cpu,
                freezer,
            } => {
                let mut cgroup = Cgroup {
                    dirs: vec![],
                    memory: mkdir(memory.join(name))?,
                    pids: None,
                    cpu: None,
                    freezer: None,
                    v2: false,
                };
                cgroup.dirs.push(cgroup.memory.clone());
                // Pushed as made, so that a failure part-way removes what was made.
                let mut add = |base: &Option<PathBuf>| -> Result<Option<PathBuf>, SandboxError> {
                    let Some(base) = base else { return Ok(None) };
                    let dir = mkdir(base.join(name))?;
                    cgroup.dirs.push(dir.clone());
                    Ok(Some(dir))
                };
                let made = add(pids).and_then(|p| Ok((p, add(cpu)?, add(freezer)?)));
                match made {
                    Ok((pids, cpu, freezer)) => {
                        cgroup.pids = pids;
                        cgroup.cpu = cpu;
                        cgroup.freezer = freezer;
                        Ok(Some(cgroup))
                    }
                    Err(e) => {
                        cgroup.remove();
                        Err(e)
                    }
                }
            }
            Self::V2 { base } => {
                let dir = mkdir(base.join(name))?;
                Ok(Some(Cgroup {
                    dirs: vec![dir.clone()],
                    memory: dir.clone(),
                    pids: Some(dir.clone()),
                    cpu: Some(dir.clone()),
                    // `cgroup.freeze` exists in every non-root v2 cgroup since Linux 5.2.
                    freezer: dir.join("cgroup.freeze").exists().then_some(dir),
                    v2: true,
                }))
            }
            Self::Unavailable { .. } => Ok(None),
        }
    }

    /// Removes instance cgroups left by server processes that no longer exist (a crash).
    pub fn sweep_stale(&self) {
        let bases: Vec<&PathBuf> = match self {
            Self::V1 {
                memory,
                pids,
                cpu,
                freezer,
            } => freezer
                .iter()
                // The freezer first: a crashed server's idle instances are frozen, and a frozen
                // process dies of SIGKILL only once thawed, which sweeping it there does.
                .chain(std::iter::once(memory))
                .chain(pids)
                .chain(cpu)
                .collect(),
            Self::V2 { base } => vec![base],
            Self::Unavailable { .. } => vec![],
        };
        for base in bases {
            let Some(parent) = base.parent() else {
                continue;
            };
            let Ok(entries) = fs::read_dir(parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let Some(pid) = name
                    .strip_prefix("voltrun-")
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if Path::new(&format!("/proc/{pid}")).exists() {
                    continue;
                }
                let stale = entry.path();
                if let Ok(children) = fs::read_dir(&stale) {
                    for child in children.flatten().filter(|c| c.path().is_dir()) {
                        // Any of the hierarchies may hold it; a frozen one must be thawed for its
                        // processes to die, so each directory is also treated as a freezer.
                        let cg = Cgroup {
                            dirs: vec![child.path()],
                            memory: child.path(),
                            pids: None,
                            cpu: None,
                            freezer: Some(child.path()),
                            v2: matches!(self, Self::V2 { .. }),
                        };
                        cg.kill_all();
                        cg.remove();
                    }
                }
                let _ = fs::remove_dir(&stale);
                tracing::info!(path = %stale.display(), "removed cgroups left by a previous server process");
            }
        }
    }
}

/// One instance's cgroup (one directory per v1 hierarchy, or one v2 directory).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    memory: PathBuf,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
    /// The v1 freezer directory, or the v2 directory when it has `cgroup.freeze`.
    freezer: Option<PathBuf>,
    v2: bool,
}

impl Cgroup {
    /// Applies an instance's limits (before any process joins). On failure the directories are
    /// removed.
    pub fn limit(&self, limits: &Limits) -> Result<(), SandboxError> {
        let applied = if self.v2 {
            self.limit_v2(limits)
        } else {
            self.limit_v1(limits)
        };
        if applied.is_err() {
            self.remove();
        }
        applied
    }

    fn limit_v1(&self, limits: &Limits) -> Result<(), SandboxError> {
        let memory = limits.memory_bytes.to_string();
        write(&self.memory.join("memory.limit_in_bytes"), &memory)?;
        let memsw = self.memory.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write(&memsw, &memory)?;
        }
        if let Some(dir) = &self.pids {
            write(&dir.join("pids.max"), &limits.max_processes.to_string())?;
        }
        if let Some(dir) = &self.cpu {
            write(
                &dir.join("cpu.shares"),
                &limits.cpu_shares.max(2).to_string(),
            )?;
        }
        Ok(())
    }

    fn limit_v2(&self, limits: &Limits) -> Result<(), SandboxError> {
        let dir = &self.memory;
        write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
        let _ = write(&dir.join("memory.swap.max"), "0");
        write(&dir.join("pids.max"), &limits.max_processes.to_string())?;
        // v2 weight 1..10000 with 100 the default; v1 shares 1024 is the default.
        let weight = (limits.cpu_shares * 100 / 1024).clamp(1, 10_000);
        let _ = write(&dir.join("cpu.weight"), &weight.to_string());
        Ok(())
    }

    /// `cgroup.procs` of each directory, opened for the child to write itself into between fork and
    /// exec, so the sandbox is limited from its first instruction.
    pub fn procs_files(&self) -> Result<Vec<File>, SandboxError> {
        self.dirs
            .iter()
            .map(|d| {
                let path = d.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| cgroup_error(&path, e))
            })
            .collect()
    }

    fn read_u64(&self, file: &str) -> Option<u64> {
        fs::read_to_string(self.memory.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Peak memory use since the last [`reset_peak`](Self::reset_peak).
    pub fn memory_peak_bytes(&self) -> Option<u64> {
        if self.v2 {
            self.read_u64("memory.peak")
        } else {
            self.read_u64("memory.max_usage_in_bytes")
        }
    }

    pub fn reset_peak(&self) {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        let _ = fs::write(self.memory.join(file), "0");
    }

    /// How many processes the kernel OOM-killed in this cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        fs::read_to_string(self.memory.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.memory.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Whether [`freeze`](Self::freeze) can stop this cgroup's processes.
    pub fn can_freeze(&self) -> bool {
        self.freezer.is_some()
    }

    /// Stops every process in the cgroup where it stands (they get no CPU until
    /// [`thaw`](Self::thaw)). It does not wait for the last ones to stop: a process in the middle of
    /// a system call stops when it returns to user space.
    pub fn freeze(&self) -> Result<(), SandboxError> {
        self.set_frozen(true)
    }

    pub fn thaw(&self) -> Result<(), SandboxError> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), SandboxError> {
        let Some(dir) = &self.freezer else {
            return Ok(());
        };
        let (file, value) = match (self.v2, frozen) {
            (true, _) => ("cgroup.freeze", if frozen { "1" } else { "0" }),
            (false, true) => ("freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED"),
        };
        write(&dir.join(file), value)
    }

    /// SIGKILLs every process in the cgroup and waits (briefly) until it is empty.
    pub fn kill_all(&self) {
        if self.v2 && fs::write(self.memory.join("cgroup.kill"), "1").is_ok() {
            // cgroup.kill is atomic; the loop below only waits for the exits.
        }
        if self.freezer.is_some() {
            // A frozen process dies of SIGKILL only once thawed (v1), so the signal goes first and
            // the thaw after it: no process of the instance runs its own code in between.
            for pid in self.pids() {
                sys::kill(pid, libc::SIGKILL);
            }
            let _ = self.thaw();
        }
        for _ in 0..200 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                sys::kill(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::warn!(cgroup = %self.memory.display(), "processes survived SIGKILL for 1 s");
    }

    /// Removes the cgroup directories (they must be empty of processes).
    pub fn remove(&self) {
        for dir in &self.dirs {
            for _ in 0..50 {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }
}
