//! Function code on disk, where sandboxes mount it read-only at `/var/task`. One directory per code
//! sha256, shared by every version and instance with that code; written once (extracted to a
//! temporary directory, then renamed into place) and never modified.

use std::fs;
use std::os::unix::fs::PermissionsExt;
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
    // The same validator and descriptor-walking writer as the upload check: a bundle that reached
    // storage by other means is still refused, and nothing is written through a link.
    let result = match kind {
        CodeKind::Source => {
            let name = filename.unwrap_or("main");
            // A provided runtime's bootstrap must be executable; other single files need not be.
            voltrun_bundle::write_file(&staging, name, bytes, name == "bootstrap")
        }
        CodeKind::Zip => voltrun_bundle::extract(bytes, &staging).map(drop),
    }
    .map_err(std::io::Error::other);
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
