//! Function code on disk, where sandboxes mount it read-only at `/var/task`, and layers, merged
//! where they mount them at `/opt`. This module owns the code directory: one directory per code
//! sha256 (`<sha256>/`), shared by every version and instance with that code, and one per ordered
//! set of layers (`opt-<sha256 of their code>/`), each written once (extracted to a temporary
//! directory, then renamed into place) and never modified; the images the guest backend makes
//! beside them (`<entry>.ext4`); which entries live instances are using; and the removal of entries
//! no function references any more (a layer set's is removed once unused: it is made again from
//! storage when needed).
//!
//! Collection is safe against instances because each instance holds a [`CodeLease`] on its entry
//! from before the entry is looked up until the instance has stopped, and an entry is only
//! removed, under the same lock that takes leases, while nobody holds one. (A sandbox bind-mounts
//! the directory: removing the files under a running one would remove them inside it too.)
//!
//! One file on purpose (about 500 lines): making an entry, leasing it and collecting it share one lock
//! and must be read together.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use sha2::Digest as _;
use voltrun_domain::function::{CodeKind, FunctionRecord};
use voltrun_domain::layer::FunctionLayer;

use crate::EngineError;

/// Staging directories and images older than this were left by a server that stopped mid-unpack
/// (an unpack in progress takes seconds).
const ABANDONED_STAGING: Duration = Duration::from_secs(3600);

/// Per sha256: how many leases are out, and when the last one ended.
type Uses = Arc<Mutex<HashMap<String, Use>>>;

#[derive(Debug)]
struct Use {
    holders: usize,
    last_used: SystemTime,
}

fn lock(uses: &Uses) -> MutexGuard<'_, HashMap<String, Use>> {
    uses.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Per entry being made: the turn its makers take, so that concurrent cold starts of the same code
/// make it once (see [`CodeCache::make_once`]).
type Making = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

#[derive(Debug, Clone)]
pub struct CodeCache {
    root: PathBuf,
    uses: Uses,
    making: Making,
    /// Who unpacks archives: an unprivileged user where the server runs as root, else the server's
    /// own (already unprivileged) user.
    extractor: Option<voltrun_bundle::Unprivileged>,
}

/// An instance's hold on its code entry: while one is out, the entry is not collected.
#[derive(Debug)]
pub struct CodeLease {
    sha256: String,
    uses: Uses,
}

impl Drop for CodeLease {
    fn drop(&mut self) {
        if let Some(entry) = lock(&self.uses).get_mut(&self.sha256) {
            entry.holders = entry.holders.saturating_sub(1);
            entry.last_used = SystemTime::now();
        }
    }
}

impl CodeCache {
    pub fn new(
        root: PathBuf,
        extractor: Option<voltrun_bundle::Unprivileged>,
    ) -> std::io::Result<Self> {
        fs::create_dir_all(&root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            root,
            uses: Uses::default(),
            making: Making::default(),
            extractor,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lease(&self, sha256: &str) -> CodeLease {
        let mut uses = lock(&self.uses);
        let entry = uses.entry(sha256.to_string()).or_insert(Use {
            holders: 0,
            last_used: SystemTime::now(),
        });
        entry.holders += 1;
        entry.last_used = SystemTime::now();
        CodeLease {
            sha256: sha256.to_string(),
            uses: self.uses.clone(),
        }
    }

    /// The directory holding `function`'s code, materialised from storage on first use, and a
    /// lease that keeps it there until dropped.
    pub async fn ensure(
        &self,
        source: &dyn CodeSource,
        function: &FunctionRecord,
    ) -> Result<(PathBuf, CodeLease), EngineError> {
        // Leased before looking: a collection that has not removed the entry yet now skips it, and
        // one that already has makes this unpack it again.
        let key = entry_name(function);
        let lease = self.lease(&key);
        let dir = self.root.join(&key);
        self.make_once(&key, &dir, || async {
            let bytes = read_code(source, &function.code_sha256).await?;
            let (root, kind, filename, target, extractor) = (
                self.root.clone(),
                function.code_kind,
                function.code_filename.clone(),
                dir.clone(),
                self.extractor,
            );
            tokio::task::spawn_blocking(move || {
                materialise(&root, kind, &bytes, filename.as_deref(), &target, extractor)
            })
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?
            .map_err(|e| unpack_error("unpacking code", &e))
        })
        .await?;
        Ok((dir, lease))
    }

    /// Runs `make` unless `dir` exists, one maker at a time per entry: a cold start that finds
    /// another making the same entry waits for it and uses what it made, instead of reading and
    /// unpacking a copy of its own (ten concurrent cold starts of one function on five 48 MiB
    /// layers each held their archives: 2.5 GB of server memory, in review).
    async fn make_once<F>(
        &self,
        key: &str,
        dir: &Path,
        make: impl FnOnce() -> F,
    ) -> Result<(), EngineError>
    where
        F: Future<Output = Result<(), EngineError>>,
    {
        if dir.is_dir() {
            return Ok(());
        }
        let turn = {
            let mut making = self.making.lock().unwrap_or_else(PoisonError::into_inner);
            making.entry(key.to_string()).or_default().clone()
        };
        let made = {
            let _held = turn.lock().await;
            if dir.is_dir() { Ok(()) } else { make().await }
        };
        let mut making = self.making.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the map's and this maker's: nobody else waits for this entry.
        if Arc::strong_count(&turn) == 2 {
            making.remove(key);
        }
        made
    }

    /// The directory where `layers` are merged, materialised from storage on first use, and a lease
    /// that keeps it there until dropped; `None` for a function without layers. Layers are
    /// extracted last first, each under the ones after it, so that a later layer's file hides an
    /// earlier one's of the same path (see `voltrun_bundle::extract_under_at`).
    pub async fn ensure_layers(
        &self,
        source: &dyn CodeSource,
        layers: &[FunctionLayer],
    ) -> Result<Option<(PathBuf, CodeLease)>, EngineError> {
        if layers.is_empty() {
            return Ok(None);
        }
        let key = layers_entry_name(layers);
        let lease = self.lease(&key);
        let dir = self.root.join(&key);
        self.make_once(&key, &dir, || async {
            let mut archives = Vec::with_capacity(layers.len());
            for layer in layers.iter().rev() {
                archives.push(read_code(source, &layer.code_sha256).await?);
            }
            let (root, target, extractor) = (self.root.clone(), dir.clone(), self.extractor);
            tokio::task::spawn_blocking(move || {
                materialise_with(&root, &target, extractor, |staging| {
                    for (i, archive) in archives.iter().enumerate() {
                        if i == 0 {
                            voltrun_bundle::extract_at(archive, staging).map(drop)?;
                        } else {
                            voltrun_bundle::extract_under_at(archive, staging).map(drop)?;
                        }
                    }
                    Ok(())
                })
            })
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?
            .map_err(|e| unpack_error("unpacking layers", &e))
        })
        .await?;
        Ok(Some((dir, lease)))
    }

    /// Removes the entries (directory and code image) that no function in `source` references and
    /// that no instance has used for `unused_for`, and staging leftovers of unpacks a stopped server
    /// abandoned. Returns the sha256 of each entry removed.
    pub async fn collect(&self, source: &dyn CodeSource, unused_for: Duration) -> Vec<String> {
        let root = self.root.clone();
        let listing = tokio::task::spawn_blocking(move || list_entries(&root))
            .await
            .unwrap_or_default();
        let now = SystemTime::now();
        let idle =
            |sha: &str, modified: SystemTime, uses: &HashMap<String, Use>| match uses.get(sha) {
                Some(u) => u.holders == 0 && older_than(u.last_used, now, unused_for),
                // Not used since this server started: the entry's own age stands for its last use.
                None => older_than(modified, now, unused_for),
            };
        let candidates: Vec<String> = {
            let uses = lock(&self.uses);
            listing
                .entries
                .iter()
                .filter(|(sha, modified)| idle(sha, **modified, &uses))
                .map(|(sha, _)| sha.clone())
                .collect()
        };
        let mut unreferenced = Vec::new();
        for sha in candidates {
            // A layer set's entry is made again from storage whenever a function needs it.
            if sha.starts_with(LAYERS_PREFIX) {
                unreferenced.push(sha);
                continue;
            }
            // Conservative for single files: kept while any function has this code, whatever its name.
            match source.referenced(code_of(&sha)).await {
                Ok(false) => unreferenced.push(sha),
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "code cache collection: cannot read which code is in use");
                    return Vec::new();
                }
            }
        }
        let mut trash = listing.abandoned;
        let mut removed = Vec::new();
        {
            let mut uses = lock(&self.uses);
            for sha in unreferenced {
                let modified = listing
                    .entries
                    .get(&sha)
                    .copied()
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                // Checked again under the lock that leases take: an instance may have started since.
                if !idle(&sha, modified, &uses) {
                    continue;
                }
                for path in [self.root.join(&sha), self.root.join(format!("{sha}.ext4"))] {
                    let away = self
                        .root
                        .join(format!(".trash-{}", uuid::Uuid::new_v4().simple()));
                    // Renamed away under the lock (a rename is atomic), deleted after it.
                    if fs::rename(&path, &away).is_ok() {
                        trash.push(away);
                    }
                }
                uses.remove(&sha);
                removed.push(sha);
            }
        }
        let _ = tokio::task::spawn_blocking(move || {
            for path in trash {
                let gone = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                if let Err(e) = gone {
                    tracing::warn!(path = %path.display(), error = %e, "removing unused code failed");
                }
            }
        })
        .await;
        removed
    }
}

fn older_than(t: SystemTime, now: SystemTime, age: Duration) -> bool {
    now.duration_since(t).is_ok_and(|d| d >= age)
}

/// What the code directory holds.
#[derive(Debug, Default)]
struct Listing {
    /// Each code entry (a directory, an image or both) and its newest modification time.
    entries: HashMap<String, SystemTime>,
    /// Staging leftovers and trash a stopped server left behind.
    abandoned: Vec<PathBuf>,
}

fn list_entries(root: &Path) -> Listing {
    let mut listing = Listing::default();
    let now = SystemTime::now();
    for entry in fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(modified) = entry.metadata().and_then(|m| m.modified()).ok() else {
            continue;
        };
        if name.starts_with(".trash-") {
            listing.abandoned.push(entry.path());
            continue;
        }
        let sha = name.strip_suffix(".ext4").unwrap_or(&name);
        if is_entry_name(sha) {
            let newest = listing.entries.entry(sha.to_string()).or_insert(modified);
            *newest = (*newest).max(modified);
        } else if (name.starts_with(".staging-") || name.contains(".ext4."))
            && older_than(modified, now, ABANDONED_STAGING)
        {
            listing.abandoned.push(entry.path());
        }
    }
    listing
}

/// The entry a function's code unpacks to. An archive's bytes fix every name in it, so its entry is
/// its sha256. A single source file's name is not in its bytes: its entry also carries a hash of the
/// name, or two tenants uploading the same text under different names would share one directory and
/// whoever ran first would decide which name it holds.
pub(crate) fn entry_name(function: &FunctionRecord) -> String {
    match function.code_kind {
        CodeKind::Zip => function.code_sha256.clone(),
        CodeKind::Source => {
            let name = function.code_filename.as_deref().unwrap_or("main");
            let named = hex::encode(sha2::Sha256::digest(name.as_bytes()));
            format!("{}-{}", function.code_sha256, &named[..16])
        }
    }
}

/// What a layer set's entry name starts with.
const LAYERS_PREFIX: &str = "opt-";

/// The entry an ordered set of layers merges into: a hash of their code in order (the same code in
/// another order merges differently).
fn layers_entry_name(layers: &[FunctionLayer]) -> String {
    let mut hash = sha2::Sha256::new();
    for layer in layers {
        hash.update(layer.code_sha256.as_bytes());
        hash.update(b"\n");
    }
    format!("{LAYERS_PREFIX}{}", hex::encode(hash.finalize()))
}

/// `<sha256>`, `<sha256>-<16 hex digits>` (see [`entry_name`]) or `opt-<sha256>` (see
/// [`layers_entry_name`]).
fn is_entry_name(name: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(sha) = name.strip_prefix(LAYERS_PREFIX) {
        return sha.len() == 64 && hex(sha);
    }
    match name.split_once('-') {
        None => name.len() == 64 && hex(name),
        Some((sha, named)) => sha.len() == 64 && hex(sha) && named.len() == 16 && hex(named),
    }
}

/// The code sha256 an entry holds (what functions reference).
fn code_of(entry: &str) -> &str {
    entry.split_once('-').map_or(entry, |(sha, _)| sha)
}

/// The stored code `sha256`.
async fn read_code(source: &dyn CodeSource, sha256: &str) -> Result<Vec<u8>, EngineError> {
    source
        .code(sha256)
        .await
        .map_err(|e| match e {
            CodeSourceError::StorageFull(cause) => {
                EngineError::StorageFull(format!("reading code: {cause}"))
            }
            CodeSourceError::Failed(cause) => {
                EngineError::Internal(format!("reading code: {cause}"))
            }
        })?
        .ok_or_else(|| EngineError::Internal(format!("code {sha256} is missing from storage")))
}

/// Where the engine reads the code it unpacks: the platform's storage, which the engine does not
/// know (the executions service gives it one over the database).
#[async_trait::async_trait]
pub trait CodeSource: Send + Sync + std::fmt::Debug {
    /// The stored bytes of code `sha256` (a function's file or archive, or a layer's archive);
    /// `None` when nothing has that code.
    async fn code(&self, sha256: &str) -> Result<Option<Vec<u8>>, CodeSourceError>;
    /// Whether any function or layer still uses code `sha256`.
    async fn referenced(&self, sha256: &str) -> Result<bool, CodeSourceError>;
}

/// Why code could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CodeSourceError {
    /// The storage under it is full (a read that needs space, as SQLite's can).
    #[error("{0}")]
    StorageFull(String),
    #[error("{0}")]
    Failed(String),
}

fn unpack_error(doing: &str, e: &std::io::Error) -> EngineError {
    if is_storage_full(e) {
        EngineError::StorageFull(format!("{doing}: {e}"))
    } else {
        EngineError::Internal(format!("{doing}: {e}"))
    }
}

/// Whether a write failed for want of space (or of the user's disk quota).
pub(crate) fn is_storage_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Fills the empty directory `staging` with `write`, given a descriptor of it, as `extractor` where
/// one is given: it owns the directory and is handed that descriptor, and nothing else (see
/// `voltrun_bundle::unprivileged`). The writers are the upload check's own validator and
/// descriptor-walking extractor: a bundle that reached storage by other means is still refused, and
/// nothing is written through a link.
fn unpack(
    staging: &Path,
    extractor: Option<voltrun_bundle::Unprivileged>,
    write: impl FnOnce(BorrowedFd<'_>) -> Result<(), voltrun_bundle::BundleError> + Send,
) -> std::io::Result<()> {
    let io_error = |e: voltrun_bundle::BundleError| match &e {
        // Keeps the kind of a failed write (a full disk) for the caller to report as such.
        voltrun_bundle::BundleError::Write { source, .. } => std::io::Error::new(source.kind(), e),
        _ => std::io::Error::other(e),
    };
    let dir = voltrun_bundle::open_destination(staging).map_err(io_error)?;
    match extractor {
        Some(user) => {
            std::os::unix::fs::chown(staging, Some(user.uid), Some(user.gid))?;
            voltrun_bundle::unprivileged(user, || write(dir.as_fd()))?.map_err(io_error)?;
            // Then root's, checked to be all the extractor's first: no uid may alter unpacked code
            // (every tenant's is unpacked as that one uid).
            voltrun_bundle::hand_to_root(dir.as_fd(), user).map_err(io_error)
        }
        None => write(dir.as_fd()).map_err(io_error),
    }
}

/// Unpacks a function's code into `target`.
fn materialise(
    root: &Path,
    kind: CodeKind,
    bytes: &[u8],
    filename: Option<&str>,
    target: &Path,
    extractor: Option<voltrun_bundle::Unprivileged>,
) -> std::io::Result<()> {
    materialise_with(root, target, extractor, |dir| match kind {
        CodeKind::Source => {
            let name = filename.unwrap_or("main");
            // A provided runtime's bootstrap must be executable; other single files need not be.
            voltrun_bundle::write_file_at(dir, name, bytes, name == "bootstrap")
        }
        CodeKind::Zip => voltrun_bundle::extract_at(bytes, dir).map(drop),
    })
}

/// Makes the entry `target` with `write` (see [`unpack`]): in a staging directory first, renamed
/// into place once whole.
fn materialise_with(
    root: &Path,
    target: &Path,
    extractor: Option<voltrun_bundle::Unprivileged>,
    write: impl FnOnce(BorrowedFd<'_>) -> Result<(), voltrun_bundle::BundleError> + Send,
) -> std::io::Result<()> {
    let staging = root.join(format!(".staging-{}", uuid::Uuid::new_v4().simple()));
    fs::create_dir_all(&staging)?;
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))?;
    let result = unpack(&staging, extractor, write);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    // Two cold starts may unpack the same code at once: the first rename wins, the other is discarded.
    if fs::rename(&staging, target).is_err() {
        let _ = fs::remove_dir_all(&staging);
        if !target.is_dir() {
            return Err(std::io::Error::other(
                "could not move unpacked code into place",
            ));
        }
    }
    Ok(())
}
