//! Uploaded code: one source file or a zip archive. Archives are checked before anything is stored:
//! size limits (Lambda's: 50 MiB zipped, 250 MiB unzipped), no absolute paths or `..`, no symbolic
//! links that point outside the archive, and no zip bombs (entries are actually inflated against the
//! unzipped budget; the sizes an archive declares are not trusted).

use std::io::Read;
use std::path::{Component, Path};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use voltrun_domain::ValidationError;
use voltrun_domain::function::{CodeKind, Handler, RuntimeFamily};

use crate::error::ApiError;

pub const MAX_ZIPPED_BYTES: usize = 50 * 1024 * 1024;
pub const MAX_UNZIPPED_BYTES: u64 = 250 * 1024 * 1024;
const MAX_ENTRIES: usize = 10_000;
const MAX_PATH_BYTES: usize = 1024;

/// The `code` object of a create or update request: either `source` (+ optional `filename`) or
/// `zip_base64`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeInput {
    /// The whole source of a single-file function.
    pub source: Option<String>,
    /// The file name of `source`, e.g. `main.py`; defaults to the handler's module file.
    pub filename: Option<String>,
    /// A zip archive of the code directory, base64-encoded.
    pub zip_base64: Option<String>,
}

/// Code that passed every check, ready to store.
#[derive(Debug, Clone)]
pub struct CodeBundle {
    pub kind: CodeKind,
    pub bytes: Vec<u8>,
    pub filename: Option<String>,
    pub sha256: String,
    /// Regular files in the bundle, as relative paths.
    files: Vec<String>,
}

impl CodeBundle {
    /// Parses and checks uploaded code. CPU-bound for archives: call on a blocking thread.
    pub fn parse(
        input: CodeInput,
        family: RuntimeFamily,
        handler: &Handler,
    ) -> Result<Self, ApiError> {
        let bundle = match (input.source, input.zip_base64) {
            (Some(source), None) => {
                let filename = match input.filename {
                    Some(name) => name,
                    None => family.module_candidates(handler).swap_remove(0),
                };
                check_relative_path(&filename).map_err(|m| invalid("code.filename", m))?;
                if source.is_empty() {
                    return Err(invalid("code.source", "must not be empty".into()));
                }
                let bytes = source.into_bytes();
                Self {
                    kind: CodeKind::Source,
                    sha256: sha256_hex(&bytes),
                    files: vec![filename.clone()],
                    filename: Some(filename),
                    bytes,
                }
            }
            (None, Some(encoded)) => {
                if input.filename.is_some() {
                    return Err(invalid(
                        "code.filename",
                        "applies only to `source` uploads".into(),
                    ));
                }
                if encoded.len() > MAX_ZIPPED_BYTES / 3 * 4 + 4 {
                    return Err(too_large());
                }
                let bytes = STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| invalid("code.zip_base64", "is not valid base64".into()))?;
                if bytes.len() > MAX_ZIPPED_BYTES {
                    return Err(too_large());
                }
                let files = check_archive(&bytes)?;
                Self {
                    kind: CodeKind::Zip,
                    sha256: sha256_hex(&bytes),
                    files,
                    filename: None,
                    bytes,
                }
            }
            _ => {
                return Err(invalid(
                    "code",
                    "give exactly one of `source` (with optional `filename`) or `zip_base64`"
                        .into(),
                ));
            }
        };
        bundle.check_handler(family, handler)?;
        Ok(bundle)
    }

    /// The handler's module (or a `provided` function's `bootstrap`) must be in the bundle.
    pub fn check_handler(&self, family: RuntimeFamily, handler: &Handler) -> Result<(), ApiError> {
        let candidates = family.module_candidates(handler);
        if candidates.iter().any(|c| self.files.iter().any(|f| f == c)) {
            return Ok(());
        }
        let field = if family == RuntimeFamily::Provided {
            "code"
        } else {
            "handler"
        };
        Err(invalid(
            field,
            format!("the code has no {}", candidates.join(" or ")),
        ))
    }

    /// Lists the files of stored code (for re-checking the handler on an update without new code).
    pub fn from_stored(
        kind: CodeKind,
        bytes: Vec<u8>,
        filename: Option<String>,
    ) -> Result<Self, ApiError> {
        let files = match kind {
            CodeKind::Source => filename.iter().cloned().collect(),
            CodeKind::Zip => check_archive(&bytes)?,
        };
        Ok(Self {
            kind,
            sha256: sha256_hex(&bytes),
            files,
            filename,
            bytes,
        })
    }
}

fn invalid(field: &'static str, message: String) -> ApiError {
    ApiError::Validation(ValidationError::new(field, message))
}

fn too_large() -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "code archive is larger than {} MiB zipped",
        MAX_ZIPPED_BYTES >> 20
    ))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A path inside the code root: relative, no `..`, no empty or odd components.
fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return Err(format!("path must be 1 to {MAX_PATH_BYTES} bytes"));
    }
    if path.chars().any(|c| c.is_control()) || path.contains('\\') {
        return Err(format!(
            "{path:?} contains control characters or backslashes"
        ));
    }
    if path.starts_with('/') {
        return Err(format!("{path:?} is absolute"));
    }
    for component in Path::new(path).components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(format!("{path:?} climbs out with '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{path:?} is absolute"));
            }
        }
    }
    Ok(())
}

/// Where a symlink stored at `link` pointing at `target` resolves, relative to the root; `None` when
/// it leaves the root.
fn resolve_link(link: &str, target: &str) -> Option<()> {
    if target.starts_with('/') || target.is_empty() {
        return None;
    }
    let mut depth: usize = 0;
    let parent = Path::new(link).parent().unwrap_or(Path::new(""));
    for component in parent.components().chain(Path::new(target).components()) {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth = depth.checked_sub(1)?,
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(())
}

const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;

/// Checks every entry of an archive and returns its regular files.
fn check_archive(bytes: &[u8]) -> Result<Vec<String>, ApiError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
        invalid(
            "code.zip_base64",
            format!("is not a readable zip archive: {e}"),
        )
    })?;
    if archive.len() > MAX_ENTRIES {
        return Err(invalid(
            "code.zip_base64",
            format!("has more than {MAX_ENTRIES} entries"),
        ));
    }
    let mut budget = MAX_UNZIPPED_BYTES;
    let mut files = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| {
            invalid(
                "code.zip_base64",
                format!("entry {index} is unreadable: {e}"),
            )
        })?;
        let name = entry.name().to_string();
        check_relative_path(name.trim_end_matches('/'))
            .map_err(|m| invalid("code.zip_base64", format!("entry {m}")))?;
        if entry.enclosed_name().is_none() {
            return Err(invalid(
                "code.zip_base64",
                format!("entry {name:?} escapes the archive root"),
            ));
        }
        if entry.is_dir() {
            continue;
        }
        let is_link = entry
            .unix_mode()
            .is_some_and(|mode| mode & S_IFMT == S_IFLNK);
        // Inflate against the remaining budget: a bomb is caught by what it produces, not what it claims.
        let mut produced: u64 = 0;
        let mut target = Vec::new();
        loop {
            let n = entry.read(&mut buf).map_err(|e| {
                invalid("code.zip_base64", format!("entry {name:?} is corrupt: {e}"))
            })?;
            if n == 0 {
                break;
            }
            produced += n as u64;
            if produced > budget {
                return Err(ApiError::PayloadTooLarge(format!(
                    "code unzips to more than {} MiB",
                    MAX_UNZIPPED_BYTES >> 20
                )));
            }
            if is_link && target.len() < MAX_PATH_BYTES {
                target.extend_from_slice(&buf[..n]);
            }
        }
        budget -= produced;
        if is_link {
            let target = String::from_utf8_lossy(&target).to_string();
            if resolve_link(&name, &target).is_none() {
                return Err(invalid(
                    "code.zip_base64",
                    format!("symbolic link {name:?} points outside the archive"),
                ));
            }
        }
        files.push(name);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(check_relative_path("src/app.py").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a\\b", "a\0b"] {
            assert!(check_relative_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn links() {
        assert!(resolve_link("lib/a.py", "b.py").is_some());
        assert!(resolve_link("lib/a.py", "../b.py").is_some());
        assert!(resolve_link("lib/a.py", "../../b.py").is_none());
        assert!(resolve_link("a.py", "/etc/passwd").is_none());
    }
}
