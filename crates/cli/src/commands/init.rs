//! `voltrun functions init NAME --runtime RUNTIME`: scaffolds a function directory that deploys and
//! runs as it is. The template follows the runtime's family: `python*` (main.py), `nodejs*`
//! (index.js) or `provided*` (an executable `bootstrap` that speaks the Lambda Runtime API).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::Context;
use crate::archive::IGNORE_FILE;
use crate::error::{CliError, CliResult, Exit};
use crate::project::{MANIFEST, check_function_name};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Python,
    Node,
    Provided,
}

impl Family {
    fn of(runtime: &str) -> Option<Self> {
        if runtime.starts_with("python") {
            Some(Self::Python)
        } else if runtime.starts_with("nodejs") {
            Some(Self::Node)
        } else if runtime.starts_with("provided") {
            Some(Self::Provided)
        } else {
            None
        }
    }

    /// The handler file, its template, its mode, and the handler setting that names it.
    fn handler(self) -> (&'static str, &'static str, u32, &'static str) {
        match self {
            Self::Python => (
                "main.py",
                include_str!("../../templates/python/main.py"),
                0o644,
                "main.handler",
            ),
            Self::Node => (
                "index.js",
                include_str!("../../templates/nodejs/index.js"),
                0o644,
                "index.handler",
            ),
            // `provided` functions read the handler setting themselves ($_HANDLER); the template's
            // bootstrap does not need it, but the API requires one.
            Self::Provided => (
                "bootstrap",
                include_str!("../../templates/provided/bootstrap"),
                0o755,
                "function.handler",
            ),
        }
    }

    fn ignored(self) -> &'static str {
        match self {
            Self::Python => "__pycache__/\n*.pyc\n.venv/\n",
            Self::Node => "npm-debug.log*\n",
            Self::Provided => "",
        }
    }
}

fn manifest(name: &str, runtime: &str, handler: &str) -> String {
    format!(
        "# The function's configuration: `voltrun deploy` reads this file.\n\
         name = \"{name}\"\n\
         runtime = \"{runtime}\"\n\
         handler = \"{handler}\"\n\
         # description = \"What the function does\"\n\
         memory_mb = 128\n\
         timeout_s = 30\n\
         \n\
         # Environment variables of the function, encrypted at rest on the server. Every deploy\n\
         # replaces the function's environment with this table.\n\
         [env]\n\
         GREETING = \"hello\"\n"
    )
}

fn write_file(path: &Path, contents: &str, mode: u32) -> CliResult<()> {
    std::fs::write(path, contents)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
        .map_err(|e| CliError::Config(format!("cannot write {}: {e}", path.display())))
}

pub fn run(context: &Context, name: &str, runtime: &str, dir: Option<PathBuf>) -> CliResult<Exit> {
    check_function_name(name).map_err(CliError::Usage)?;
    let runtime_ok = !runtime.is_empty()
        && runtime
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    let family = Family::of(runtime).filter(|_| runtime_ok).ok_or_else(|| {
        CliError::Usage(format!(
            "runtime {runtime:?} is not one voltrun has a template for: use python3.x, nodejs20 (or another nodejsNN) or provided"
        ))
    })?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let not_empty = std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some());
    if not_empty {
        return Err(CliError::Usage(format!(
            "{} already exists and is not empty: choose another --dir",
            dir.display()
        )));
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::Config(format!("cannot create {}: {e}", dir.display())))?;

    let (file, template, mode, handler) = family.handler();
    let mut written = Vec::new();
    let mut put = |file: &str, contents: &str, mode: u32| -> CliResult<()> {
        write_file(&dir.join(file), contents, mode)?;
        written.push(file.to_string());
        Ok(())
    };
    put(file, &template.replace("{{name}}", name), mode)?;
    put(
        "event.json",
        &format!(
            "{}\n",
            serde_json::to_string_pretty(&json!({ "name": "VoltRun" })).unwrap_or_default()
        ),
        0o644,
    )?;
    put(MANIFEST, &manifest(name, runtime, handler), 0o644)?;
    put(
        IGNORE_FILE,
        &format!(
            "# Files `voltrun deploy` leaves out of the upload (gitignore syntax).\n\
             # The sample event is for `voltrun invoke {name} --data @event.json`.\n\
             event.json\n{}",
            family.ignored()
        ),
        0o644,
    )?;

    if context.out.json_mode() {
        context.out.json(&json!({
            "name": name, "runtime": runtime, "handler": handler,
            "directory": dir.display().to_string(), "files": written,
        }));
    } else {
        context.out.line(&format!(
            "Created {} with {} (function {name}, runtime {runtime})",
            dir.display(),
            written.join(", ")
        ));
        context.out.line(&format!(
            "Next: voltrun deploy {} && voltrun invoke {name} --data @{}",
            dir.display(),
            dir.join("event.json").display()
        ));
    }
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::Manifest;

    #[test]
    fn families_follow_the_runtime_prefix() {
        assert_eq!(Family::of("python3.12"), Some(Family::Python));
        assert_eq!(Family::of("nodejs22"), Some(Family::Node));
        assert_eq!(Family::of("provided"), Some(Family::Provided));
        assert_eq!(Family::of("provided.al2023"), Some(Family::Provided));
        assert_eq!(Family::of("ruby3.3"), None);
    }

    #[test]
    fn the_scaffolded_manifest_parses() {
        for family in [Family::Python, Family::Node, Family::Provided] {
            let (_, template, _, handler) = family.handler();
            assert!(template.contains("{{name}}"));
            let m = Manifest::parse(&manifest("hello", "python3.12", handler)).unwrap();
            assert_eq!(m.handler, handler);
            assert_eq!(m.memory_mb, Some(128));
        }
    }
}
