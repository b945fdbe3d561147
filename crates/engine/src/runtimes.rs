//! The runtimes a host offers: the host's own Python 3 and Node.js, and `provided` (the function
//! ships its own executable `bootstrap`), named as Lambda names them. Each runtime knows the command
//! that starts it inside a sandbox and which host directories it needs mounted.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RuntimeInfo {
    /// The identifier a function names, e.g. `python3.11`, `nodejs20`, `provided`.
    pub id: String,
    /// `python`, `nodejs` or `provided`.
    pub family: String,
    /// The interpreter's full version, or `null` for `provided`.
    pub version: Option<String>,
    /// The interpreter inside the sandbox (`None` for `provided`).
    #[serde(skip)]
    pub interpreter: Option<PathBuf>,
    /// Host directories the interpreter needs besides `/usr` (mounted read-only at the same path).
    #[serde(skip)]
    pub binds: Vec<PathBuf>,
}

/// Probes Python and Node.js once (a few milliseconds each); call at start-up. Distribution
/// interpreters under /usr come first: they need no extra mounts.
pub fn detect_runtimes() -> Vec<RuntimeInfo> {
    let mut found = Vec::new();
    let python_probe = "import sys, platform; print(platform.python_version()); print(sys.base_prefix); print(sys.executable)";
    for candidate in ["/usr/bin/python3", "python3"] {
        if let Some(lines) = probe(candidate, &["-c", python_probe]) {
            let [version, prefix, executable] =
                <[String; 3]>::try_from(lines).ok().unwrap_or_default();
            let minor: Vec<&str> = version.split('.').take(2).collect();
            if minor.len() == 2 && !executable.is_empty() {
                found.push(RuntimeInfo {
                    id: format!("python{}.{}", minor[0], minor[1]),
                    family: "python".into(),
                    version: Some(version.clone()),
                    interpreter: Some(PathBuf::from(&executable)),
                    binds: outside_usr(Path::new(&prefix)),
                });
                break;
            }
        }
    }
    for candidate in ["/usr/bin/node", "node"] {
        if let Some(lines) = probe(
            candidate,
            &["-p", "process.versions.node + '\\n' + process.execPath"],
        ) {
            let [version, executable] = <[String; 2]>::try_from(lines).ok().unwrap_or_default();
            if let Some(major) = version
                .split('.')
                .next()
                .filter(|m| m.parse::<u32>().is_ok())
            {
                let prefix = Path::new(&executable)
                    .parent()
                    .and_then(Path::parent)
                    .unwrap_or(Path::new("/usr"));
                found.push(RuntimeInfo {
                    id: format!("nodejs{major}"),
                    family: "nodejs".into(),
                    version: Some(version.clone()),
                    interpreter: Some(PathBuf::from(&executable)),
                    binds: outside_usr(prefix),
                });
                break;
            }
        }
    }
    found.push(RuntimeInfo {
        id: "provided".into(),
        family: "provided".into(),
        version: None,
        interpreter: None,
        binds: vec![],
    });
    found
}

fn outside_usr(prefix: &Path) -> Vec<PathBuf> {
    if prefix.starts_with("/usr") {
        vec![]
    } else {
        vec![prefix.to_path_buf()]
    }
}

fn probe(program: &str, args: &[&str]) -> Option<Vec<String>> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provided_is_always_offered() {
        let runtimes = detect_runtimes();
        assert!(runtimes.iter().any(|r| r.id == "provided"));
        for r in &runtimes {
            assert!(
                voltrun_domain::function::RuntimeFamily::of(&r.id).is_some(),
                "{} has no family",
                r.id
            );
        }
    }
}
