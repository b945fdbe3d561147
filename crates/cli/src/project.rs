//! `voltrun.toml`, a function directory's description: what `voltrun deploy` sends besides the code.
//! Unknown keys are errors (a typo must not be silently ignored), and every problem reads as one
//! line naming the file, the line and the key. Ranges the server enforces (memory, timeout, env
//! size) are left to it, so the client never disagrees with the server it talks to.
//!
//! ```toml
//! name = "hello"            # lower-case letters, digits and hyphens
//! runtime = "python3.12"    # see GET /api/runtimes
//! handler = "main.handler"  # module.function
//! description = "optional"
//! memory_mb = 128           # optional, server default 128
//! timeout_s = 30            # optional, server default 30
//! max_retries = 2           # optional: retries of a failed asynchronous invocation
//! max_concurrency = 10      # optional: invocations at once (0: the server's default)
//! min_instances = 0         # optional: instances kept warm
//! log_format = "json"       # optional: "text" (the default) or Lambda's JSON log lines
//! log_level = "info"        # optional, with log_format "json": trace, debug, info, warn, error, fatal
//! layers = ["deps:1"]       # optional: layer versions merged at /opt (see `voltrun layers`)
//!
//! [env]                     # optional; replaces the function's environment on every deploy
//! GREETING = "hello"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{CliError, CliResult};

pub const MANIFEST: &str = "voltrun.toml";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub runtime: String,
    pub handler: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub memory_mb: Option<i64>,
    #[serde(default)]
    pub timeout_s: Option<i64>,
    #[serde(default)]
    pub max_retries: Option<i64>,
    #[serde(default)]
    pub max_concurrency: Option<i64>,
    #[serde(default)]
    pub min_instances: Option<i64>,
    #[serde(default)]
    pub log_format: Option<String>,
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub layers: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Function names as the server accepts them: 1–64 lower-case letters, digits and hyphens, not
/// starting or ending with a hyphen. Checked locally because `init` makes a directory of it.
pub fn check_function_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("function name {name:?} must be 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "function name {name:?} may contain only lower-case letters, digits and hyphens"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "function name {name:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

impl Manifest {
    /// Reads `voltrun.toml` from a function directory.
    pub fn load(dir: &Path) -> CliResult<Self> {
        let path = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CliError::Config(format!(
                    "{} not found: is {} a function directory? (`voltrun functions init` makes one)",
                    path.display(),
                    dir.display()
                )));
            }
            Err(e) => {
                return Err(CliError::Config(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        Self::parse(&text)
            .map_err(|problem| CliError::Config(format!("{}: {problem}", path.display())))
    }

    /// Parses and checks manifest text; the error names the line and the problem.
    pub fn parse(text: &str) -> Result<Self, String> {
        let manifest: Self = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let message = crate::error::one_line(e.message());
            match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            }
        })?;
        check_function_name(&manifest.name).map_err(|m| format!("name: {m}"))?;
        if manifest.runtime.trim().is_empty() {
            return Err("runtime: must not be empty (e.g. python3.12, nodejs20, provided)".into());
        }
        if !manifest.handler.contains('.') {
            return Err(format!(
                "handler: {:?} must look like module.function, e.g. main.handler",
                manifest.handler
            ));
        }
        Ok(manifest)
    }

    /// The function's configuration as the API takes it (without `code`). `env` is always sent,
    /// so the deployed function's environment is exactly the manifest's.
    pub fn to_request(&self) -> Value {
        let mut body = json!({
            "name": self.name,
            "runtime": self.runtime,
            "handler": self.handler,
            "env": self.env,
        });
        if let Some(description) = &self.description {
            body["description"] = json!(description);
        }
        if let Some(memory_mb) = self.memory_mb {
            body["memory_mb"] = json!(memory_mb);
        }
        if let Some(timeout_s) = self.timeout_s {
            body["timeout_s"] = json!(timeout_s);
        }
        // Sent only when set, so servers that predate a setting keep accepting deploys (and a
        // setting left out of the manifest keeps its value on the server).
        let optional = [
            ("max_retries", self.max_retries.map(Value::from)),
            ("max_concurrency", self.max_concurrency.map(Value::from)),
            ("min_instances", self.min_instances.map(Value::from)),
            ("log_format", self.log_format.clone().map(Value::from)),
            ("log_level", self.log_level.clone().map(Value::from)),
            ("layers", self.layers.clone().map(Value::from)),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                body[key] = value;
            }
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_manifest_parses() {
        let m = Manifest::parse(
            "name = \"hello\"\nruntime = \"python3.12\"\nhandler = \"main.handler\"\nmemory_mb = 256\n\n[env]\nA = \"1\"\n",
        )
        .unwrap();
        assert_eq!(m.name, "hello");
        assert_eq!(m.memory_mb, Some(256));
        assert_eq!(m.env.get("A").map(String::as_str), Some("1"));
        let body = m.to_request();
        assert_eq!(body["env"]["A"], "1");
        assert!(body.get("timeout_s").is_none());
        for unset in [
            "max_retries",
            "max_concurrency",
            "min_instances",
            "log_format",
            "log_level",
            "layers",
        ] {
            assert!(body.get(unset).is_none(), "{unset}");
        }
        let logs = Manifest::parse(
            "name = \"hello\"\nruntime = \"provided\"\nhandler = \"f.h\"\nlog_format = \"json\"\nlog_level = \"warn\"\nmin_instances = 1\nmax_concurrency = 3\nlayers = [\"deps:1\"]\n",
        )
        .unwrap()
        .to_request();
        assert_eq!(
            (
                &logs["log_format"],
                &logs["log_level"],
                &logs["min_instances"],
                &logs["max_concurrency"]
            ),
            (&json!("json"), &json!("warn"), &json!(1), &json!(3))
        );
        assert_eq!(logs["layers"], json!(["deps:1"]));
    }

    #[test]
    fn problems_name_the_line_and_the_key() {
        let typo = Manifest::parse(
            "name = \"hello\"\nruntime = \"provided\"\nhandler = \"f.handler\"\nmemroy_mb = 1\n",
        )
        .unwrap_err();
        assert!(typo.starts_with("line 4:"), "{typo}");
        assert!(typo.contains("memroy_mb"), "{typo}");
        assert!(!typo.contains('\n'));

        let missing = Manifest::parse("name = \"hello\"\n").unwrap_err();
        assert!(missing.contains("runtime"), "{missing}");

        let wrong_type = Manifest::parse(
            "name = \"hello\"\nruntime = \"provided\"\nhandler = \"f.h\"\ntimeout_s = \"30\"\n",
        )
        .unwrap_err();
        assert!(wrong_type.starts_with("line 4:"), "{wrong_type}");

        let bad_name =
            Manifest::parse("name = \"Hello\"\nruntime = \"provided\"\nhandler = \"f.h\"\n")
                .unwrap_err();
        assert!(bad_name.starts_with("name:"), "{bad_name}");

        let syntax = Manifest::parse("name = \"hello\nruntime = 1").unwrap_err();
        assert!(syntax.starts_with("line 1:"), "{syntax}");
    }

    #[test]
    fn names_follow_the_servers_rule() {
        assert!(check_function_name("hello-world-2").is_ok());
        for bad in ["", "-a", "a-", "Hello", "a_b", "a/b", &"x".repeat(65)] {
            assert!(check_function_name(bad).is_err(), "{bad}");
        }
    }
}
