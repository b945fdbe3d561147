//! Packing a function directory into the zip archive `voltrun deploy` uploads.
//!
//! What goes in: every file under the directory, hidden files included, except
//! - version-control directories: `.git`, `.hg`, `.svn`;
//! - `voltrun.toml` at the top (it is sent as the function's configuration instead) and every
//!   `.voltrunignore`;
//! - whatever a `.voltrunignore` excludes, with gitignore syntax (`!` re-includes, a trailing `/`
//!   matches directories only, a leading `/` anchors to that file's directory). A `.voltrunignore`
//!   applies to its own directory and those below it; `.gitignore` files are not read.
//!
//! Files keep their Unix permissions (a `provided` function's `bootstrap` must stay executable);
//! symbolic links are stored as links (the server refuses ones that leave the archive). Entries
//! are sorted and carry a fixed timestamp, so the same files always make the same archive and an
//! unchanged redeploy does not create a new version.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;

use crate::error::{CliError, CliResult};
use crate::project::MANIFEST;

pub const IGNORE_FILE: &str = ".voltrunignore";
const VCS_DIRS: [&str; 3] = [".git", ".hg", ".svn"];
/// The server's limits (Lambda's): 50 MiB zipped, 250 MiB unzipped.
pub const MAX_ZIPPED_BYTES: u64 = 50 * 1024 * 1024;
pub const MAX_UNZIPPED_BYTES: u64 = 250 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File { mode: u32 },
    Symlink { target: String },
}

/// One entry of the archive: its path inside it (with `/`), where it is on disk, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub source: PathBuf,
    pub size: u64,
    pub kind: EntryKind,
}

/// Lists what would be packed from `dir`, sorted by path.
pub fn collect(dir: &Path) -> CliResult<Vec<Entry>> {
    let local = |what: String| CliError::Config(what);
    if !dir.is_dir() {
        return Err(local(format!("{} is not a directory", dir.display())));
    }
    let mut walker = ignore::WalkBuilder::new(dir);
    walker
        .standard_filters(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .follow_links(false)
        .filter_entry(|entry| {
            let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
            let name = entry.file_name().to_string_lossy();
            !(is_dir && VCS_DIRS.contains(&name.as_ref()))
        });
    let mut entries = Vec::new();
    for item in walker.build() {
        let entry = item.map_err(|e| local(format!("cannot read {}: {e}", dir.display())))?;
        let Some(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_dir() {
            continue;
        }
        let relative = entry.path().strip_prefix(dir).map_err(|_| {
            local(format!(
                "{} is outside {}",
                entry.path().display(),
                dir.display()
            ))
        })?;
        let Some(path) = relative.to_str().map(str::to_string) else {
            return Err(local(format!(
                "{} has a name that is not UTF-8; rename it or add it to {IGNORE_FILE}",
                entry.path().display()
            )));
        };
        if path == MANIFEST || entry.file_name() == IGNORE_FILE {
            continue;
        }
        let metadata = std::fs::symlink_metadata(entry.path())
            .map_err(|e| local(format!("cannot read {}: {e}", entry.path().display())))?;
        let kind = if file_type.is_symlink() {
            let target = std::fs::read_link(entry.path())
                .map_err(|e| local(format!("cannot read {}: {e}", entry.path().display())))?;
            let Some(target) = target.to_str().map(str::to_string) else {
                return Err(local(format!(
                    "the link {} points at a path that is not UTF-8",
                    entry.path().display()
                )));
            };
            EntryKind::Symlink { target }
        } else if file_type.is_file() {
            EntryKind::File {
                mode: metadata.permissions().mode() & 0o777,
            }
        } else {
            // Sockets, pipes and devices have no place in a code bundle.
            continue;
        };
        entries.push(Entry {
            path,
            source: entry.path().to_path_buf(),
            size: if file_type.is_file() {
                metadata.len()
            } else {
                0
            },
            kind,
        });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let total: u64 = entries.iter().map(|e| e.size).sum();
    if total > MAX_UNZIPPED_BYTES {
        return Err(local(format!(
            "{} holds {} MiB of files; a function may have at most {} MiB unzipped (exclude files with {IGNORE_FILE})",
            dir.display(),
            total >> 20,
            MAX_UNZIPPED_BYTES >> 20
        )));
    }
    Ok(entries)
}

/// Packs the entries into a zip archive in memory.
pub fn pack(entries: &[Entry]) -> CliResult<Vec<u8>> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        CliError::Config(format!("cannot pack {what}: {e}"))
    };
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for entry in entries {
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip::DateTime::default());
        match &entry.kind {
            EntryKind::Symlink { target } => zip
                .add_symlink(&entry.path, target, options.unix_permissions(0o777))
                .map_err(|e| fail(&entry.path, &e))?,
            EntryKind::File { mode } => {
                let contents = std::fs::read(&entry.source)
                    .map_err(|e| fail(&entry.source.display().to_string(), &e))?;
                zip.start_file(&entry.path, options.unix_permissions(*mode))
                    .map_err(|e| fail(&entry.path, &e))?;
                zip.write_all(&contents)
                    .map_err(|e| fail(&entry.path, &e))?;
            }
        }
    }
    let bytes = zip
        .finish()
        .map_err(|e| fail("the archive", &e))?
        .into_inner();
    if bytes.len() as u64 > MAX_ZIPPED_BYTES {
        return Err(CliError::Config(format!(
            "the archive is {} MiB; the server takes at most {} MiB zipped (exclude files with {IGNORE_FILE})",
            bytes.len() >> 20,
            MAX_ZIPPED_BYTES >> 20
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("voltrun-archive-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(dir: &Path, path: &str, contents: &str) {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    #[test]
    fn ignores_vcs_manifest_and_voltrunignore_patterns() {
        let dir = scratch();
        write(&dir, "main.py", "x");
        write(&dir, "voltrun.toml", "x");
        write(
            &dir,
            ".voltrunignore",
            "*.log\nbuild/\n!keep.log\n/event.json\n",
        );
        write(&dir, "event.json", "{}");
        write(&dir, "lib/event.json", "{}");
        write(&dir, "debug.log", "x");
        write(&dir, "keep.log", "x");
        write(&dir, "build/out.bin", "x");
        write(&dir, ".git/config", "x");
        write(&dir, ".env", "A=1");
        write(&dir, "sub/.voltrunignore", "secret.txt\n");
        write(&dir, "sub/secret.txt", "x");
        write(&dir, "sub/ok.txt", "x");
        let paths: Vec<String> = collect(&dir).unwrap().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                ".env",
                "keep.log",
                "lib/event.json",
                "main.py",
                "sub/ok.txt"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn packing_is_deterministic_and_keeps_modes_and_links() {
        let dir = scratch();
        write(&dir, "bootstrap", "#!/bin/sh\n");
        std::fs::set_permissions(
            dir.join("bootstrap"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("bootstrap", dir.join("link")).unwrap();
        let entries = collect(&dir).unwrap();
        let first = pack(&entries).unwrap();
        assert_eq!(first, pack(&collect(&dir).unwrap()).unwrap());
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(first)).unwrap();
        assert_eq!(
            archive.by_name("bootstrap").unwrap().unix_mode().unwrap() & 0o777,
            0o755
        );
        let link_mode = archive.by_name("link").unwrap().unix_mode().unwrap();
        assert_eq!(link_mode & 0o170000, 0o120000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
