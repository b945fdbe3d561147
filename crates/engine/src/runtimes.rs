//! The runtimes a host offers: the host's own Python 3 and Node.js (found on `PATH`), and `provided`
//! (the function ships its own executable `bootstrap`), as Lambda names them.

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
}

/// Probes `python3` and `node` once (a few milliseconds each); call at start-up.
pub fn detect_runtimes() -> Vec<RuntimeInfo> {
    let mut found = Vec::new();
    if let Some(version) = probe("python3", &["--version"]) {
        // "Python 3.11.7" → python3.11
        let number = version.trim_start_matches("Python ").to_string();
        let minor: Vec<&str> = number.split('.').take(2).collect();
        if minor.len() == 2 {
            found.push(RuntimeInfo {
                id: format!("python{}.{}", minor[0], minor[1]),
                family: "python".into(),
                version: Some(number),
            });
        }
    }
    if let Some(version) = probe("node", &["--version"]) {
        // "v20.20.2" → nodejs20
        let number = version.trim_start_matches('v').to_string();
        if let Some(major) = number
            .split('.')
            .next()
            .filter(|m| m.parse::<u32>().is_ok())
        {
            found.push(RuntimeInfo {
                id: format!("nodejs{major}"),
                family: "nodejs".into(),
                version: Some(number),
            });
        }
    }
    found.push(RuntimeInfo {
        id: "provided".into(),
        family: "provided".into(),
        version: None,
    });
    found
}

fn probe(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    Some(String::from_utf8_lossy(&text).trim().to_string())
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
