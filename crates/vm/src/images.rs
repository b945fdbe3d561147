//! Guest images: the kernel and one read-only ext4 root image per runtime, shared by all VMs, listed
//! with their sha256 sums in `manifest.json` in the images directory. The manifest also records the
//! kernel command line the images were built for.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: u32 = 1;

/// One file of the image set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFile {
    /// Relative to the images directory.
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
}

/// A runtime's root image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootImage {
    /// `python3.11`, `nodejs20`, `provided`.
    pub runtime: String,
    #[serde(flatten)]
    pub image: ImageFile,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The guest kernel (uncompressed ELF `vmlinux`).
    pub kernel: Option<ImageFile>,
    /// The same kernel as a compressed `bzImage`, for QEMU's `microvm` machine (the emulated
    /// backend), which cannot load an ELF kernel without a PVH note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bzimage: Option<ImageFile>,
    /// An initramfs the kernel needs (module loading), if any.
    pub initrd: Option<ImageFile>,
    /// The kernel command line for these images.
    pub boot_args: String,
    pub rootfs: Vec<RootImage>,
    /// The agent binary placed in every root image.
    pub agent_sha256: String,
    /// A hash over every input of the build: images are rebuilt only when it changes.
    pub inputs_sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no image manifest at {}: build the images with `voltrun vm images build`", .0.display())]
    NoManifest(PathBuf),
    #[error("unreadable manifest {}: {detail}", path.display())]
    BadManifest { path: PathBuf, detail: String },
    #[error("{}: {detail}", path.display())]
    File { path: PathBuf, detail: String },
    #[error("{} has sha256 {actual}, the manifest says {expected}", path.display())]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// The sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

impl ImageFile {
    /// Describes `path` (relative name `file`) as it is now.
    pub fn describe(dir: &Path, file: &str) -> std::io::Result<Self> {
        let path = dir.join(file);
        Ok(Self {
            file: file.to_string(),
            sha256: sha256_file(&path)?,
            bytes: std::fs::metadata(&path)?.len(),
        })
    }

    fn verify(&self, dir: &Path) -> Result<PathBuf, ImageError> {
        let path = dir.join(&self.file);
        let actual = sha256_file(&path).map_err(|e| ImageError::File {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if actual != self.sha256 {
            return Err(ImageError::Checksum {
                path,
                expected: self.sha256.clone(),
                actual,
            });
        }
        Ok(path)
    }
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Self, ImageError> {
        let path = dir.join(MANIFEST);
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::NoManifest(path.clone()),
            _ => ImageError::BadManifest {
                path: path.clone(),
                detail: e.to_string(),
            },
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::BadManifest {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        if manifest.format != FORMAT {
            return Err(ImageError::BadManifest {
                path,
                detail: format!("format {} (this build reads {FORMAT})", manifest.format),
            });
        }
        Ok(manifest)
    }

    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!(".{MANIFEST}.tmp"));
        std::fs::write(&tmp, json)?;
        std::fs::rename(tmp, dir.join(MANIFEST))
    }

    /// Checks every file against its checksum; returns what was verified, one line each.
    pub fn verify(&self, dir: &Path) -> Result<Vec<String>, ImageError> {
        let mut verified = Vec::new();
        let files = self
            .kernel
            .iter()
            .map(|k| ("kernel", k))
            .chain(self.bzimage.iter().map(|k| ("bzImage", k)))
            .chain(self.initrd.iter().map(|i| ("initrd", i)))
            .chain(self.rootfs.iter().map(|r| (r.runtime.as_str(), &r.image)));
        for (role, file) in files {
            file.verify(dir)?;
            verified.push(format!(
                "{role}: {} ({} bytes) sha256 ok",
                file.file, file.bytes
            ));
        }
        Ok(verified)
    }

    /// The runtimes this set has root images for.
    pub fn runtimes(&self) -> Vec<String> {
        self.rootfs.iter().map(|r| r.runtime.clone()).collect()
    }

    /// The smallest root image (the boot probe's choice).
    pub fn smallest_rootfs(&self) -> Option<&RootImage> {
        self.rootfs.iter().min_by_key(|r| r.image.bytes)
    }
}
