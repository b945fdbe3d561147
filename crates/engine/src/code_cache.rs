//! Function code on disk, where sandboxes mount it read-only at `/var/task`. One directory per code
//! sha256, shared by every version and instance with that code; written once (extracted to a
//! temporary directory, then renamed into place) and never modified.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use voltrun_domain::function::{CodeKind, FunctionRecord};
use voltrun_storage::Store;

use crate::EngineError;

#[derive(Debug, Clone)]
pub struct CodeCache {
    root: PathBuf,
}

impl CodeCache {
    pub fn new(root: PathBuf) -> std::io::Result<Self> {
        fs::create_dir_all(&root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
        Ok(Self { root })
    }

    /// The directory holding `function`'s code, materialised from storage on first use.
    pub async fn ensure(
        &self,
        store: &dyn Store,
        function: &FunctionRecord,
    ) -> Result<PathBuf, EngineError> {
        let dir = self.root.join(&function.code_sha256);
        if dir.is_dir() {
            return Ok(dir);
        }
        let bytes = store
            .get_code(&function.code_sha256)
            .await
            .map_err(|e| EngineError::Internal(format!("reading code: {e}")))?
            .ok_or_else(|| {
                EngineError::Internal(format!(
                    "code {} is missing from storage",
                    function.code_sha256
                ))
            })?;
        let (root, kind, filename, target) = (
            self.root.clone(),
            function.code_kind,
            function.code_filename.clone(),
            dir.clone(),
        );
        tokio::task::spawn_blocking(move || {
            materialise(&root, kind, &bytes, filename.as_deref(), &target)
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))?
        .map_err(|e| EngineError::Internal(format!("unpacking code: {e}")))?;
        Ok(dir)
    }
}

fn materialise(
    root: &Path,
    kind: CodeKind,
    bytes: &[u8],
    filename: Option<&str>,
    target: &Path,
) -> std::io::Result<()> {
    let staging = root.join(format!(".staging-{}", uuid::Uuid::new_v4().simple()));
    fs::create_dir_all(&staging)?;
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))?;
    let result = match kind {
        CodeKind::Source => {
            let name = filename.unwrap_or("main");
            // A provided runtime's bootstrap must be executable; other single files need not be.
            let mode = if name == "bootstrap" { 0o755 } else { 0o644 };
            write_file(&staging.join(name), bytes, mode)
        }
        CodeKind::Zip => extract(bytes, &staging),
    };
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

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        create_dirs(parent)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

fn create_dirs(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
}

/// Unpacks an archive that passed the upload checks. Paths are re-checked here (`enclosed_name`), so
/// even a bundle written to storage by other means cannot place files outside the directory.
fn extract(bytes: &[u8], dest: &Path) -> std::io::Result<()> {
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(std::io::Error::other)?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(std::io::Error::other)?;
        let Some(relative) = entry.enclosed_name() else {
            return Err(std::io::Error::other(format!(
                "entry {:?} escapes the code directory",
                entry.name()
            )));
        };
        let path = dest.join(relative);
        if entry.is_dir() {
            create_dirs(&path)?;
            continue;
        }
        let mode = entry.unix_mode().unwrap_or(0o644);
        let mut contents =
            Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0).min(1 << 26));
        entry.read_to_end(&mut contents)?;
        if mode & 0o170000 == 0o120000 {
            if let Some(parent) = path.parent() {
                create_dirs(parent)?;
            }
            std::os::unix::fs::symlink(String::from_utf8_lossy(&contents).as_ref(), &path)?;
            continue;
        }
        let executable = mode & 0o111 != 0;
        write_file(&path, &contents, if executable { 0o755 } else { 0o644 })?;
    }
    Ok(())
}
