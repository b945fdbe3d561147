//! Finding the Firecracker and jailer binaries. A user's own choice wins: `FIRECRACKER_BIN` /
//! `JAILER_BIN`, then `firecracker` / `jailer` on `PATH`, then the directory
//! `scripts/install-firecracker.sh` installs the pinned release into.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::VmError;

/// Where `scripts/install-firecracker.sh` puts the binaries, relative to the repository root.
pub const DEFAULT_INSTALL_DIR: &str = "target/firecracker/bin";
/// The release the install script pins (and the tests were run against).
pub const PINNED_VERSION: &str = "1.12.1";
pub const INSTALL_HINT: &str = "run scripts/install-firecracker.sh (installs the pinned Firecracker v1.12.1 and jailer into target/firecracker/bin), put them on PATH, or set FIRECRACKER_BIN / JAILER_BIN";

/// What the search looks at; built once from the environment ([`BinarySearch::from_env`]) or
/// explicitly in tests.
#[derive(Debug, Clone, Default)]
pub struct BinarySearch {
    pub firecracker_bin: Option<PathBuf>,
    pub jailer_bin: Option<PathBuf>,
    /// The `PATH` value to search.
    pub path: Option<OsString>,
    pub install_dir: Option<PathBuf>,
}

/// Where a binary was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `FIRECRACKER_BIN` / `JAILER_BIN`.
    Variable,
    Path,
    InstallDir,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Variable => "from the environment variable",
            Origin::Path => "on PATH",
            Origin::InstallDir => "installed by scripts/install-firecracker.sh",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub path: PathBuf,
    pub origin: Origin,
}

impl BinarySearch {
    /// Reads `FIRECRACKER_BIN`, `JAILER_BIN`, `PATH` and `FIRECRACKER_INSTALL_DIR` (default
    /// [`DEFAULT_INSTALL_DIR`]). Call once at start-up.
    pub fn from_env() -> Self {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        Self {
            firecracker_bin: var("FIRECRACKER_BIN").map(PathBuf::from),
            jailer_bin: var("JAILER_BIN").map(PathBuf::from),
            path: var("PATH"),
            install_dir: Some(
                var("FIRECRACKER_INSTALL_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_INSTALL_DIR)),
            ),
        }
    }

    pub fn firecracker(&self) -> Result<Located, VmError> {
        self.find(
            "firecracker",
            self.firecracker_bin.as_deref(),
            "FIRECRACKER_BIN",
        )
    }

    pub fn jailer(&self) -> Result<Located, VmError> {
        self.find("jailer", self.jailer_bin.as_deref(), "JAILER_BIN")
    }

    fn find(
        &self,
        name: &'static str,
        explicit: Option<&Path>,
        variable: &str,
    ) -> Result<Located, VmError> {
        if let Some(path) = explicit {
            // An explicit choice that is wrong is an error, not a reason to pick something else.
            return if is_executable(path) {
                Ok(Located {
                    path: path.to_path_buf(),
                    origin: Origin::Variable,
                })
            } else {
                Err(VmError::Missing {
                    what: name,
                    hint: format!("{variable}={} is not an executable file", path.display()),
                })
            };
        }
        if let Some(path_var) = &self.path {
            for dir in std::env::split_paths(path_var) {
                let candidate = dir.join(name);
                if is_executable(&candidate) {
                    return Ok(Located {
                        path: candidate,
                        origin: Origin::Path,
                    });
                }
            }
        }
        if let Some(dir) = &self.install_dir {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Ok(Located {
                    path: candidate,
                    origin: Origin::InstallDir,
                });
            }
        }
        Err(VmError::Missing {
            what: name,
            hint: INSTALL_HINT.into(),
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `<binary> --version` and returns the version (`1.12.1`) from its first line
/// (`Firecracker v1.12.1` / `Jailer v1.12.1`).
pub async fn version(binary: &Path) -> Result<String, VmError> {
    let output = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| VmError::io(crate::Step::Prepare, "running", binary, e))?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_version(&text).ok_or_else(|| VmError::Missing {
        what: "a Firecracker version",
        hint: format!(
            "{} --version printed {:?}",
            binary.display(),
            text.lines().next().unwrap_or("")
        ),
    })
}

fn parse_version(text: &str) -> Option<String> {
    let first = text.lines().next()?;
    let (_, version) = first.trim().rsplit_once(" v")?;
    let ok = !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.');
    ok.then(|| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executable(dir: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("voltrun-vm-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn variable_then_path_then_install_dir() {
        let root = temp_dir("binaries");
        let (on_path, installed, chosen) = (root.join("p"), root.join("i"), root.join("c"));
        for d in [&on_path, &installed, &chosen] {
            std::fs::create_dir_all(d).unwrap();
        }
        executable(&installed, "firecracker");
        let mut search = BinarySearch {
            path: Some(on_path.clone().into_os_string()),
            install_dir: Some(installed.clone()),
            ..Default::default()
        };
        assert_eq!(search.firecracker().unwrap().origin, Origin::InstallDir);
        executable(&on_path, "firecracker");
        assert_eq!(
            search.firecracker().unwrap().path,
            on_path.join("firecracker")
        );
        search.firecracker_bin = Some(executable(&chosen, "my-firecracker"));
        assert_eq!(search.firecracker().unwrap().origin, Origin::Variable);
        search.firecracker_bin = Some(chosen.join("absent"));
        let error = search.firecracker().unwrap_err().to_string();
        assert!(error.contains("FIRECRACKER_BIN"), "{error}");
        // Nothing anywhere: the error names the install script.
        let error = BinarySearch::default().jailer().unwrap_err().to_string();
        assert!(error.contains("scripts/install-firecracker.sh"), "{error}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn versions_parse_from_the_first_line() {
        assert_eq!(
            parse_version("Firecracker v1.12.1\n\n2026 exiting").as_deref(),
            Some("1.12.1")
        );
        assert_eq!(parse_version("Jailer v1.12.1\n").as_deref(), Some("1.12.1"));
        assert_eq!(parse_version("something else"), None);
    }
}
