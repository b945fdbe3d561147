//! Uploaded code: one source file or a zip archive. Archives are checked before anything is stored by
//! `voltrun_bundle::inspect`, the same validator the engine's extractor runs (size limits, Lambda's:
//! 50 MiB zipped, 250 MiB unzipped; no absolute paths or `..`; no entry below a link; no link that
//! resolves outside the archive; zip bombs caught by inflating).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use voltrun_domain::ValidationError;
use voltrun_domain::function::{CodeKind, Handler, RuntimeFamily};

use voltrun_bundle::{BundleError, MAX_UNZIPPED_BYTES, MAX_ZIPPED_BYTES};

use crate::error::ApiError;

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
    /// What the code takes unpacked (with its layers, it must fit the unzipped limit).
    pub unzipped_bytes: u64,
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
                let filename = voltrun_bundle::normalise_path(&filename)
                    .map_err(|m| invalid("code.filename", m))?;
                if source.is_empty() {
                    return Err(invalid("code.source", "must not be empty".into()));
                }
                // A single file is capped as an upload, like an archive.
                if source.len() > MAX_ZIPPED_BYTES {
                    return Err(ApiError::PayloadTooLarge(format!(
                        "code.source is larger than {} MiB",
                        MAX_ZIPPED_BYTES >> 20
                    )));
                }
                let bytes = source.into_bytes();
                Self {
                    kind: CodeKind::Source,
                    sha256: sha256_hex(&bytes),
                    unzipped_bytes: bytes.len() as u64,
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
                let (bytes, manifest) = decode_zip(&encoded)?;
                Self {
                    kind: CodeKind::Zip,
                    sha256: sha256_hex(&bytes),
                    unzipped_bytes: manifest.unzipped_bytes,
                    files: manifest.files().map(str::to_string).collect(),
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
        let (files, unzipped_bytes) = match kind {
            CodeKind::Source => (filename.iter().cloned().collect(), bytes.len() as u64),
            CodeKind::Zip => {
                let manifest = check_archive(&bytes)?;
                let files = manifest.files().map(str::to_string).collect();
                (files, manifest.unzipped_bytes)
            }
        };
        Ok(Self {
            kind,
            sha256: sha256_hex(&bytes),
            unzipped_bytes,
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

/// A base64 zip archive (`code.zip_base64`), decoded and checked: its bytes and what it holds.
/// CPU-bound: call on a blocking thread.
pub fn decode_zip(encoded: &str) -> Result<(Vec<u8>, voltrun_bundle::Manifest), ApiError> {
    if encoded.len() > MAX_ZIPPED_BYTES / 3 * 4 + 4 {
        return Err(too_large());
    }
    let bytes = STANDARD
        .decode(encoded.trim())
        .map_err(|_| invalid("code.zip_base64", "is not valid base64".into()))?;
    if bytes.len() > MAX_ZIPPED_BYTES {
        return Err(too_large());
    }
    let manifest = check_archive(&bytes)?;
    Ok((bytes, manifest))
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Runs a code check (inflating and walking an archive: CPU-bound, up to a fraction of a second for
/// a hostile one) on a blocking thread, at most one per CPU at a time: requests that would check
/// more wait their turn instead of taking every core.
pub async fn checking<T: Send + 'static>(
    check: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    static CHECKS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    });
    let _turn = CHECKS.acquire().await.map_err(ApiError::internal)?;
    crate::routes::blocking(check).await
}

/// Checks an archive with the shared validator.
fn check_archive(bytes: &[u8]) -> Result<voltrun_bundle::Manifest, ApiError> {
    match voltrun_bundle::inspect(bytes) {
        Ok(manifest) => Ok(manifest),
        Err(BundleError::TooLarge) => Err(ApiError::PayloadTooLarge(format!(
            "code unzips to more than {} MiB",
            MAX_UNZIPPED_BYTES >> 20
        ))),
        Err(e) => Err(invalid("code.zip_base64", e.to_string())),
    }
}
