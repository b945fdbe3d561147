//! Function code bundles: zip archives a tenant uploads. This crate owns the one validator that the
//! upload check and the extractor both run, and the extractor itself.
//!
//! Threat: the archive is hostile, and extraction runs on the host. A bundle may try to place files
//! outside its directory with absolute paths, `..`, or links that a later entry walks through (a
//! chain `a/l1 -> ..`, `a/l1/l2 -> ..`, … climbs one directory per link on disk even though each
//! target looks inside the bundle as text). So:
//!
//! - [`inspect`] refuses, before anything is written: unreadable archives, too many entries, paths
//!   that are absolute, climb with `..`, or hold control characters; duplicate paths; any entry below
//!   a link or below a file; links whose target, resolved through the bundle's own links the way the
//!   kernel would, leaves the bundle; and archives that inflate past the unzipped budget (measured
//!   by inflating, not by what the archive declares).
//! - [`extract`] runs [`inspect`] itself, then writes through directory descriptors only: every
//!   component is opened with `O_NOFOLLOW | O_DIRECTORY` relative to its parent, files are created
//!   `O_EXCL | O_NOFOLLOW`, and links are made last with `symlinkat` on such a descriptor. No path is
//!   ever resolved through a link, whatever the validator missed.
//! - [`unprivileged`] runs the writing with no more privilege than it needs: on a thread of its own
//!   whose uid, gid and groups are an unprivileged user's (which also empties its capabilities), given
//!   only a descriptor of the directory it fills ([`extract_at`], [`write_file_at`]). Whatever a bug
//!   in the walk let an archive name, the kernel refuses it outside that directory.
//!
//! One file on purpose (past 500 lines): the extractor relies on every property the validator proves,
//! so both are read together.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

pub const MAX_ZIPPED_BYTES: usize = 50 * 1024 * 1024;
pub const MAX_UNZIPPED_BYTES: u64 = 250 * 1024 * 1024;
pub const MAX_ENTRIES: usize = 10_000;
pub const MAX_PATH_BYTES: usize = 1024;
/// Links followed while resolving one link's target (the kernel's limit is 40).
const MAX_LINK_HOPS: u32 = 40;
/// Components in one path: deep enough for any real tree (`node_modules` nesting included), and it
/// bounds the work each entry's checks take.
pub const MAX_PATH_DEPTH: usize = 48;
/// Path components walked while resolving all of an archive's links together: a hostile archive of
/// thousands of long links cannot make a check (which runs at upload and again before extraction)
/// take more than a fraction of a second.
const MAX_RESOLVE_STEPS: usize = 200_000;

const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("is not a readable zip archive: {0}")]
    NotZip(String),
    #[error("has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("entry {0}")]
    BadPath(String),
    #[error("entry {0:?} appears more than once")]
    Duplicate(String),
    #[error("entry {entry:?} lies below {parent:?}, which is not a directory")]
    BelowNonDirectory { entry: String, parent: String },
    #[error("entry {entry:?} is corrupt: {reason}")]
    Corrupt { entry: String, reason: String },
    #[error("symbolic link {0:?} points outside the archive")]
    LinkEscapes(String),
    #[error("its links are too many or too deep to resolve (more than {MAX_RESOLVE_STEPS} steps)")]
    TooComplex,
    #[error("code unzips to more than {} MiB", MAX_UNZIPPED_BYTES >> 20)]
    TooLarge,
    #[error("writing {path:?}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// What an entry is, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File { executable: bool },
    Link { target: String },
}

#[derive(Debug, Clone)]
pub struct Entry {
    /// Normalised relative path: `Normal` components joined with `/`.
    pub path: String,
    pub kind: EntryKind,
    /// The entry's index in the archive.
    index: usize,
}

/// A bundle that passed every check.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub entries: Vec<Entry>,
    pub unzipped_bytes: u64,
}

impl Manifest {
    /// Regular files, as relative paths.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .map(|e| e.path.as_str())
    }
}

/// A path inside the bundle: relative, 1 to [`MAX_PATH_BYTES`] bytes, no `..`, no control characters
/// or backslashes. Returns it normalised (`./a//b` is `a/b`). Also checks a single-file upload's name.
pub fn normalise_path(path: &str) -> Result<String, String> {
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return Err(format!("path must be 1 to {MAX_PATH_BYTES} bytes"));
    }
    if path.chars().any(char::is_control) || path.contains('\\') {
        return Err(format!(
            "{path:?} contains control characters or backslashes"
        ));
    }
    if path.starts_with('/') {
        return Err(format!("{path:?} is absolute"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("{path:?} climbs out with '..'")),
            name => parts.push(name),
        }
    }
    if parts.is_empty() {
        return Err(format!("{path:?} names no file"));
    }
    if parts.len() > MAX_PATH_DEPTH {
        return Err(format!(
            "{path:?} is more than {MAX_PATH_DEPTH} directories deep"
        ));
    }
    Ok(parts.join("/"))
}

fn open_archive(bytes: &[u8]) -> Result<zip::ZipArchive<std::io::Cursor<&[u8]>>, BundleError> {
    let archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| BundleError::NotZip(e.to_string()))?;
    if archive.len() > MAX_ENTRIES {
        return Err(BundleError::TooManyEntries);
    }
    Ok(archive)
}

/// Reads an entry to its end against the remaining budget, handing each chunk to `sink`.
fn inflate(
    entry: &mut impl Read,
    name: &str,
    budget: &mut u64,
    mut sink: impl FnMut(&[u8]) -> Result<(), BundleError>,
) -> Result<(), BundleError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = entry.read(&mut buf).map_err(|e| BundleError::Corrupt {
            entry: name.to_string(),
            reason: e.to_string(),
        })?;
        if n == 0 {
            return Ok(());
        }
        // A bomb is caught by what it produces, not by the sizes it declares.
        *budget = budget.checked_sub(n as u64).ok_or(BundleError::TooLarge)?;
        sink(&buf[..n])?;
    }
}

/// Checks every entry of an archive (see the crate docs) and lists them.
pub fn inspect(bytes: &[u8]) -> Result<Manifest, BundleError> {
    let mut archive = open_archive(bytes)?;
    let mut budget = MAX_UNZIPPED_BYTES;
    let mut entries = Vec::with_capacity(archive.len());
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| BundleError::Corrupt {
            entry: format!("#{index}"),
            reason: e.to_string(),
        })?;
        let name = entry.name().to_string();
        let is_dir = entry.is_dir();
        let path = if is_dir && name.trim_matches(['/', '.']).is_empty() {
            // "./" and the like: the root itself.
            None
        } else {
            Some(normalise_path(name.trim_end_matches('/')).map_err(BundleError::BadPath)?)
        };
        let mode = entry.unix_mode().unwrap_or(0o644);
        let is_link = !is_dir && mode & S_IFMT == S_IFLNK;
        let mut target = Vec::new();
        inflate(&mut entry, &name, &mut budget, |chunk| {
            if is_link {
                if target.len() + chunk.len() > MAX_PATH_BYTES {
                    return Err(BundleError::BadPath(format!(
                        "{name:?}: link target is longer than {MAX_PATH_BYTES} bytes"
                    )));
                }
                target.extend_from_slice(chunk);
            }
            Ok(())
        })?;
        let Some(path) = path else { continue };
        let kind = if is_dir {
            EntryKind::Directory
        } else if is_link {
            let target = String::from_utf8(target)
                .map_err(|_| BundleError::BadPath(format!("{name:?}: link target is not UTF-8")))?;
            EntryKind::Link { target }
        } else {
            EntryKind::File {
                executable: mode & 0o111 != 0,
            }
        };
        entries.push(Entry { path, kind, index });
    }
    check_tree(&entries)?;
    Ok(Manifest {
        entries,
        unzipped_bytes: MAX_UNZIPPED_BYTES - budget,
    })
}

/// The checks across entries: no duplicates, nothing below a file or a link, links stay inside.
fn check_tree(entries: &[Entry]) -> Result<(), BundleError> {
    let mut kinds: HashMap<&str, &EntryKind> = HashMap::with_capacity(entries.len());
    for entry in entries {
        if let Some(previous) = kinds.insert(&entry.path, &entry.kind) {
            let both_dirs = *previous == EntryKind::Directory && entry.kind == EntryKind::Directory;
            if !both_dirs {
                return Err(BundleError::Duplicate(entry.path.clone()));
            }
        }
    }
    let mut links: HashMap<&str, &str> = HashMap::new();
    for entry in entries {
        for (at, _) in entry.path.match_indices('/') {
            let parent = &entry.path[..at];
            if kinds
                .get(parent)
                .is_some_and(|kind| **kind != EntryKind::Directory)
            {
                return Err(BundleError::BelowNonDirectory {
                    entry: entry.path.clone(),
                    parent: parent.to_string(),
                });
            }
        }
        if let EntryKind::Link { target } = &entry.kind {
            links.insert(&entry.path, target);
        }
    }
    let mut walk = Walk {
        links: &links,
        steps: 0,
    };
    for entry in entries {
        if let EntryKind::Link { target } = &entry.kind {
            let mut at = CurrentPath::default();
            let (parent, _) = split(&entry.path);
            for name in parent.split('/').filter(|p| !p.is_empty()) {
                at.push(name);
            }
            match walk.resolve(&mut at, target, 0) {
                Ok(()) => {}
                Err(Stop::TooComplex) => return Err(BundleError::TooComplex),
                Err(Stop::Escapes) => return Err(BundleError::LinkEscapes(entry.path.clone())),
            }
        }
    }
    Ok(())
}

/// Why a resolution stopped.
enum Stop {
    Escapes,
    TooComplex,
}

/// A path being walked, kept as one string (and the lengths to pop back to), so that looking up
/// each step costs one hash of the path rather than joining its components again.
#[derive(Default)]
struct CurrentPath {
    text: String,
    lengths: Vec<usize>,
}

impl CurrentPath {
    fn push(&mut self, name: &str) {
        self.lengths.push(self.text.len());
        if !self.text.is_empty() {
            self.text.push('/');
        }
        self.text.push_str(name);
    }

    fn pop(&mut self) -> bool {
        match self.lengths.pop() {
            Some(length) => {
                self.text.truncate(length);
                true
            }
            None => false,
        }
    }
}

struct Walk<'a> {
    links: &'a HashMap<&'a str, &'a str>,
    /// Components walked so far, for all links together (see [`MAX_RESOLVE_STEPS`]).
    steps: usize,
}

impl Walk<'_> {
    /// Walks `target` from the directory `at` the way the kernel resolves a path, following the
    /// bundle's own links; fails if any step leaves the root (absolute, `..` above it, or a loop).
    /// Conservative: a name that does not exist is walked as if it were a directory.
    fn resolve(&mut self, at: &mut CurrentPath, target: &str, hops: u32) -> Result<(), Stop> {
        if target.is_empty() || target.starts_with('/') {
            return Err(Stop::Escapes);
        }
        for part in target.split('/') {
            self.steps += 1;
            if self.steps > MAX_RESOLVE_STEPS {
                return Err(Stop::TooComplex);
            }
            match part {
                "" | "." => {}
                ".." => {
                    if !at.pop() {
                        return Err(Stop::Escapes);
                    }
                }
                name => {
                    at.push(name);
                    if at.lengths.len() > MAX_PATH_DEPTH * 2 {
                        return Err(Stop::TooComplex);
                    }
                    if let Some(next) = self.links.get(at.text.as_str()) {
                        if hops >= MAX_LINK_HOPS {
                            return Err(Stop::Escapes);
                        }
                        at.pop();
                        self.resolve(at, next, hops + 1)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks `bytes` with [`inspect`] and writes the bundle into `dest`, an existing directory the
/// caller made for it (empty). Directories get mode 0755, files 0644 or 0755, never other bits.
pub fn extract(bytes: &[u8], dest: &Path) -> Result<Manifest, BundleError> {
    extract_at(bytes, open_destination(dest)?.as_fd())
}

/// [`extract`] into the directory `root` is open on: no path above it is ever looked up, so the
/// caller may hand it to a thread that could not reach the directory by its path
/// (see [`unprivileged`]).
pub fn extract_at(bytes: &[u8], root: BorrowedFd<'_>) -> Result<Manifest, BundleError> {
    extract_into(bytes, root, Existing::Refuse)
}

/// [`extract_at`] for a layer that later layers, already extracted into `root`, sit over (layers
/// are extracted last first, so that the last one's files win, as Lambda merges layers at `/opt`):
/// an entry whose place a later layer already took (a file or link of the same path, or a file or
/// link where this layer has a directory) is left out, as an overlay's upper entry hides a lower
/// one. Everything else is as [`extract_at`]: the same checks, the same descriptor walk.
pub fn extract_under_at(bytes: &[u8], root: BorrowedFd<'_>) -> Result<Manifest, BundleError> {
    extract_into(bytes, root, Existing::Keep)
}

/// What to do where an entry's place is already taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    /// Fail: a bundle never names one place twice, so something else is there.
    Refuse,
    /// Leave the entry out: a later layer's entry hides it.
    Keep,
}

impl Existing {
    /// Whether `error` from writing an entry means its place is taken and the entry is to be left
    /// out. Within one bundle the validator rules these out (no duplicates, nothing below a file or
    /// link), so in [`Existing::Keep`] they come only from a later layer.
    fn hides(self, error: &std::io::Error) -> bool {
        self == Self::Keep
            && [
                rustix::io::Errno::EXIST,
                rustix::io::Errno::NOTDIR,
                rustix::io::Errno::LOOP,
            ]
            .iter()
            .any(|errno| error.raw_os_error() == Some(errno.raw_os_error()))
    }
}

fn extract_into(
    bytes: &[u8],
    root: BorrowedFd<'_>,
    existing: Existing,
) -> Result<Manifest, BundleError> {
    let manifest = inspect(bytes)?;
    let write_error = |path: &str| {
        let path = path.to_string();
        move |source: std::io::Error| BundleError::Write { path, source }
    };
    let root = rustix::fs::openat(root, ".", DIR_FLAGS, Mode::empty()).map_err(|e| {
        BundleError::Write {
            path: ".".into(),
            source: e.into(),
        }
    })?;
    let mut archive = open_archive(bytes)?;
    let mut budget = MAX_UNZIPPED_BYTES;
    let mut made_dirs: HashSet<String> = HashSet::new();
    for entry in &manifest.entries {
        match &entry.kind {
            EntryKind::Directory => match open_dir(&root, &entry.path, &mut made_dirs) {
                Err(e) if !existing.hides(&e) => return Err(write_error(&entry.path)(e)),
                _ => {}
            },
            EntryKind::File { executable } => {
                let mut zipped =
                    archive
                        .by_index(entry.index)
                        .map_err(|e| BundleError::Corrupt {
                            entry: entry.path.clone(),
                            reason: e.to_string(),
                        })?;
                let mut file = match create_file(&root, &entry.path, *executable, &mut made_dirs) {
                    Err(BundleError::Write { source, .. }) if existing.hides(&source) => continue,
                    other => other?,
                };
                inflate(&mut zipped, &entry.path, &mut budget, |chunk| {
                    file.write_all(chunk).map_err(write_error(&entry.path))
                })?;
            }
            EntryKind::Link { .. } => {}
        }
    }
    // Links last: nothing above is ever written through one.
    for entry in &manifest.entries {
        if let EntryKind::Link { target } = &entry.kind {
            let (parent, name) = split(&entry.path);
            let dir = match open_dir(&root, parent, &mut made_dirs) {
                Err(e) if existing.hides(&e) => continue,
                other => other.map_err(write_error(parent))?,
            };
            match rustix::fs::symlinkat(target.as_str(), &dir, name) {
                Err(e) if existing.hides(&e.into()) => {}
                other => other.map_err(|e| write_error(&entry.path)(e.into()))?,
            }
        }
    }
    Ok(manifest)
}

/// Writes a single-file bundle (a `source` upload) named `path` into `dest`, through the same
/// descriptor walk as [`extract`].
pub fn write_file(
    dest: &Path,
    path: &str,
    contents: &[u8],
    executable: bool,
) -> Result<(), BundleError> {
    write_file_at(open_destination(dest)?.as_fd(), path, contents, executable)
}

/// [`write_file`] into the directory `root` is open on (see [`extract_at`]).
pub fn write_file_at(
    root: BorrowedFd<'_>,
    path: &str,
    contents: &[u8],
    executable: bool,
) -> Result<(), BundleError> {
    let path = normalise_path(path).map_err(BundleError::BadPath)?;
    let root = rustix::fs::openat(root, ".", DIR_FLAGS, Mode::empty()).map_err(|e| {
        BundleError::Write {
            path: ".".into(),
            source: e.into(),
        }
    })?;
    let mut file = create_file(&root, &path, executable, &mut HashSet::new())?;
    file.write_all(contents)
        .map_err(|source| BundleError::Write { path, source })
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens the directory a bundle is unpacked into (itself not a link).
pub fn open_destination(dest: &Path) -> Result<OwnedFd, BundleError> {
    rustix::fs::open(dest, DIR_FLAGS, Mode::empty()).map_err(|e| BundleError::Write {
        path: ".".into(),
        source: e.into(),
    })
}

/// Whether this process's (this thread's) effective uid is root's, as [`unprivileged`] needs.
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// An unprivileged user to unpack code as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unprivileged {
    pub uid: u32,
    pub gid: u32,
}

/// Hands the tree below `root`, which `user` has just written (see [`unprivileged`]), to root: every
/// entry must be `user`'s (an entry that is not was not written by the extractor, and is refused),
/// and each one's owner becomes root, so that no uid, the extractor's included, can change unpacked
/// code afterwards. The walk goes through directory descriptors opened `O_NOFOLLOW` and changes
/// links themselves, never what they point at.
pub fn hand_to_root(root: BorrowedFd<'_>, user: Unprivileged) -> Result<(), BundleError> {
    use rustix::fs::{AtFlags, FileType};
    let error = |path: &str| {
        let path = path.to_string();
        move |e: rustix::io::Errno| BundleError::Write {
            path,
            source: e.into(),
        }
    };
    let root_id = (
        Some(rustix::process::Uid::ROOT),
        Some(rustix::process::Gid::ROOT),
    );
    let not_written = |path: &str| BundleError::Write {
        path: path.to_string(),
        source: std::io::Error::other("not written by the unprivileged extractor"),
    };
    let dir = rustix::fs::openat(root, ".", DIR_FLAGS, Mode::empty()).map_err(error("."))?;
    if rustix::fs::fstat(&dir).map_err(error("."))?.st_uid != user.uid {
        return Err(not_written("."));
    }
    // (directory, its path, depth): depth-first, bounded as the validator bounds paths.
    let mut pending = vec![(dir, String::new(), 0usize)];
    while let Some((dir, path, depth)) = pending.pop() {
        if depth > MAX_PATH_DEPTH {
            return Err(BundleError::BadPath(format!("{path:?} is nested too deep")));
        }
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&dir).map_err(error(&path))? {
            let entry = entry.map_err(error(&path))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(entry.file_name().to_owned());
            }
        }
        for name in names {
            let child = format!("{path}/{}", name.to_string_lossy());
            let stat = rustix::fs::statat(&dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(error(&child))?;
            if stat.st_uid != user.uid {
                return Err(not_written(&child));
            }
            rustix::fs::chownat(
                &dir,
                name.as_c_str(),
                root_id.0,
                root_id.1,
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(error(&child))?;
            // From the entry's own mode: some file systems give no type in the listing.
            if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                let sub = rustix::fs::openat(&dir, name.as_c_str(), DIR_FLAGS, Mode::empty())
                    .map_err(error(&child))?;
                pending.push((sub, child, depth + 1));
            }
        }
        rustix::fs::fchown(&dir, root_id.0, root_id.1).map_err(error(&path))?;
    }
    Ok(())
}

/// Runs `work` on a thread of its own that first becomes `user`: no supplementary groups, then real,
/// effective and saved gid and uid all set. These are the kernel's per-thread system calls (libc's
/// wrappers would change every thread of the server), and leaving uid 0 on all three empties the
/// thread's capability sets, so `work` has exactly that user's rights and no way back. The thread,
/// and its credentials with it, end with `work`. Needs the privilege to change them (root).
pub fn unprivileged<T: Send>(
    user: Unprivileged,
    work: impl FnOnce() -> T + Send,
) -> std::io::Result<T> {
    use rustix::process::{Gid, Uid};
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| -> std::io::Result<T> {
            let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
            // Groups and gid first: changing them needs the capabilities the uid change drops.
            rustix::thread::set_thread_groups(&[])?;
            rustix::thread::set_thread_res_gid(gid, gid, gid)?;
            rustix::thread::set_thread_res_uid(uid, uid, uid)?;
            Ok(work())
        });
        thread
            .join()
            .map_err(|_| std::io::Error::other("the unprivileged thread panicked"))?
    })
}

/// Creates the regular file `path` (which must not exist) below `root`, mode 0644 or 0755.
fn create_file(
    root: &OwnedFd,
    path: &str,
    executable: bool,
    made_dirs: &mut HashSet<String>,
) -> Result<File, BundleError> {
    let write_error = |source: std::io::Error| BundleError::Write {
        path: path.to_string(),
        source,
    };
    let (parent, name) = split(path);
    let dir = open_dir(root, parent, made_dirs).map_err(write_error)?;
    let mode = Mode::from_raw_mode(if executable { 0o755 } else { 0o644 });
    let fd = rustix::fs::openat(
        &dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        mode,
    )
    .map_err(|e| write_error(e.into()))?;
    // The creation mode passes through the umask; set it exactly.
    rustix::fs::fchmod(&fd, mode).map_err(|e| write_error(e.into()))?;
    Ok(File::from(fd))
}

/// `("a/b", "c")` for `"a/b/c"`; `("", "c")` for `"c"`.
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// Opens (making what is missing) the directory `relative` below `root`, one component at a time,
/// refusing to pass through a link at any step.
fn open_dir(
    root: &OwnedFd,
    relative: &str,
    made: &mut HashSet<String>,
) -> std::io::Result<OwnedFd> {
    let flags = DIR_FLAGS;
    let mut dir = rustix::fs::openat(root, ".", flags, Mode::empty())?;
    let mut walked = String::new();
    for name in relative.split('/').filter(|part| !part.is_empty()) {
        if !walked.is_empty() {
            walked.push('/');
        }
        walked.push_str(name);
        let next = match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755))?;
                rustix::fs::openat(&dir, name, flags, Mode::empty())?
            }
            Err(e) => return Err(e.into()),
        };
        if made.insert(walked.clone()) {
            // mkdir's mode passes through the umask; a directory the sandbox uid must enter is 0755.
            rustix::fs::fchmod(next.as_fd(), Mode::from_raw_mode(0o755))?;
        }
        dir = next;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_costly_archive_is_refused_quickly() {
        // Thousands of deep links with long targets: before the step budget, checking one took
        // 18 s in a release build.
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        let deep = "d/".repeat(MAX_PATH_DEPTH - 1);
        let target = format!("{}x", "e/".repeat(500));
        for i in 0..2_000 {
            writer
                .add_symlink(format!("{deep}l{i}"), target.as_str(), options)
                .unwrap();
        }
        let bytes = writer.finish().unwrap().into_inner();
        let started = std::time::Instant::now();
        assert!(matches!(inspect(&bytes), Err(BundleError::TooComplex)));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(normalise_path(&"d/".repeat(MAX_PATH_DEPTH + 1)).is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(normalise_path("./src//app.py").unwrap(), "src/app.py");
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a\\b",
            "a\0b",
            ".",
            "./",
        ] {
            assert!(normalise_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn resolves(link: &str, target: &str, others: &[(&str, &str)]) -> bool {
        let mut links: HashMap<&str, &str> = others.iter().copied().collect();
        links.insert(link, target);
        let mut at = CurrentPath::default();
        for name in split(link).0.split('/').filter(|p| !p.is_empty()) {
            at.push(name);
        }
        let mut walk = Walk {
            links: &links,
            steps: 0,
        };
        walk.resolve(&mut at, target, 0).is_ok()
    }

    #[test]
    fn links_resolve_through_the_bundles_own_links() {
        assert!(resolves("lib/a.py", "b.py", &[]));
        assert!(resolves("lib/a.py", "../b.py", &[]));
        assert!(!resolves("lib/a.py", "../../b.py", &[]));
        assert!(!resolves("a.py", "/etc/passwd", &[]));
        // `up -> ..` is inside as text, and so is `x -> a/up/..`, but on disk the second leaves.
        assert!(resolves("a/up", "..", &[]));
        assert!(!resolves("x", "a/up/..", &[("a/up", "..")]));
        assert!(!resolves("loop", "loop", &[]));
    }
}
