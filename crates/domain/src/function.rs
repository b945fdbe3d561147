//! Functions: what a user deploys, and the rules each part of its configuration must meet.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ValidationError, is_forbidden_char};

/// A stored function, as the storage layer returns it. `env_ciphertext` is the sealed environment;
/// only the API (which holds the key) opens it.
#[derive(Debug, Clone)]
pub struct FunctionRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub description: String,
    pub runtime: String,
    pub handler: String,
    pub code_sha256: String,
    pub code_size_bytes: i64,
    pub code_kind: CodeKind,
    pub code_filename: Option<String>,
    pub memory_mb: i32,
    pub timeout_s: i32,
    pub env_ciphertext: Vec<u8>,
    /// How often a failed asynchronous invocation is retried (0–2, as Lambda).
    pub max_retries: i32,
    /// Reserved concurrency: invocations that may run at once (`None`: the engine's default).
    pub max_concurrency: Option<i32>,
    /// Instances kept warm (started after deploy and at server start, never reaped).
    pub min_instances: i32,
    /// How the runtime formats its log lines (Lambda's `LoggingConfig.LogFormat`).
    pub log_format: LogFormat,
    /// The lowest level the runtime's logger keeps (Lambda's `ApplicationLogLevel`); set exactly when
    /// `log_format` is JSON, as Lambda allows it only there.
    pub log_level: Option<LogLevel>,
    /// The layer versions merged at `/opt`, in order.
    pub layers: Vec<crate::layer::FunctionLayer>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl FunctionRecord {
    /// The memory size in MiB. Stored records hold a validated size (storage refuses to read one
    /// outside [`MEMORY_MB_RANGE`] as corrupt), so this never falls back to anything.
    pub fn memory_mib(&self) -> u32 {
        self.memory_mb.unsigned_abs()
    }

    /// How long an invocation may run (validated as [`Self::memory_mib`] is).
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.timeout_s.unsigned_abs()))
    }
}

/// How the code was uploaded: one source file or a zip archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CodeKind {
    Source,
    Zip,
}

impl CodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Zip => "zip",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "source" => Some(Self::Source),
            "zip" => Some(Self::Zip),
            _ => None,
        }
    }
}

/// Lambda's log formats: plain text lines, or one JSON object per line from the runtime's logger
/// (`AWS_LAMBDA_LOG_FORMAT=JSON`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(ValidationError::new("log_format", "must be text or json")),
        }
    }
}

/// Lambda's application log levels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl LogLevel {
    const ALL: [Self; 6] = [
        Self::Trace,
        Self::Debug,
        Self::Info,
        Self::Warn,
        Self::Error,
        Self::Fatal,
    ];

    /// Lambda's default where JSON logs are on and no level is given.
    pub const DEFAULT: Self = Self::Info;

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
            Self::Fatal => "fatal",
        }
    }

    /// The value of `AWS_LAMBDA_LOG_LEVEL`.
    pub fn env_value(self) -> &'static str {
        match self {
            Self::Trace => "TRACE",
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str() == raw)
            .ok_or_else(|| {
                ValidationError::new(
                    "log_level",
                    "must be one of trace, debug, info, warn, error, fatal",
                )
            })
    }
}

/// The logging settings a create or update ends with: `format` and `level` as given (`None`: keep
/// `current`'s). A level needs the JSON format, as Lambda's `ApplicationLogLevel` does; turning JSON on
/// without one takes Lambda's default (INFO), and turning it off drops the level.
pub fn resolve_logging(
    current: (LogFormat, Option<LogLevel>),
    format: Option<&str>,
    level: Option<&str>,
) -> Result<(LogFormat, Option<LogLevel>), ValidationError> {
    let format = format.map(LogFormat::parse).transpose()?;
    let level = level.map(LogLevel::parse).transpose()?;
    let resolved_format = format.unwrap_or(current.0);
    match (resolved_format, level) {
        (LogFormat::Text, Some(_)) => Err(ValidationError::new(
            "log_level",
            "needs log_format json (as Lambda's application log level does)",
        )),
        (LogFormat::Text, None) => Ok((LogFormat::Text, None)),
        (LogFormat::Json, Some(level)) => Ok((LogFormat::Json, Some(level))),
        (LogFormat::Json, None) => Ok((
            LogFormat::Json,
            Some(current.1.unwrap_or(LogLevel::DEFAULT)),
        )),
    }
}

/// A function name: a DNS label (lower-case letters, digits and hyphens, 1–64 characters, starting
/// and ending with a letter or digit), so it can appear in host names and URLs unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionName(String);

impl FunctionName {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let err = |m: &str| Err(ValidationError::new("name", m));
        if raw.is_empty() || raw.len() > 64 {
            return err("must be 1 to 64 characters");
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return err("may contain only lower-case letters, digits and hyphens");
        }
        if raw.starts_with('-') || raw.ends_with('-') {
            return err("must start and end with a letter or digit");
        }
        Ok(Self(raw.to_string()))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

pub fn parse_description(raw: &str) -> Result<String, ValidationError> {
    if raw.chars().count() > 256 {
        return Err(ValidationError::new(
            "description",
            "must be at most 256 characters",
        ));
    }
    if raw
        .chars()
        .any(|c| is_forbidden_char(c) && c != '\n' && c != '\t')
    {
        return Err(ValidationError::new(
            "description",
            "must not contain control characters",
        ));
    }
    Ok(raw.to_string())
}

/// The family a runtime identifier belongs to; it decides which file a handler's module names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeFamily {
    Python,
    Node,
    Provided,
}

impl RuntimeFamily {
    pub fn of(runtime: &str) -> Option<Self> {
        if runtime.starts_with("python3") {
            Some(Self::Python)
        } else if runtime.starts_with("nodejs") {
            Some(Self::Node)
        } else if runtime == "provided" {
            Some(Self::Provided)
        } else {
            None
        }
    }

    /// Files that may hold a handler's module, relative to the code root, in the order the runtime
    /// looks for them. A `provided` function must ship an executable `bootstrap` instead.
    pub fn module_candidates(self, handler: &Handler) -> Vec<String> {
        match self {
            // Lambda's Python runtime imports `pkg.mod` and `pkg/mod` alike (slashes become dots),
            // from a module file or a package.
            Self::Python => {
                let path = handler.module.replace('.', "/");
                vec![format!("{path}.py"), format!("{path}/__init__.py")]
            }
            // Lambda's Node.js runtime takes the module up to the first dot of the handler's last
            // segment; the rest names the export, a path into nested objects (`index.api.get`).
            Self::Node => {
                let (dir, base) = handler
                    .module
                    .rsplit_once('/')
                    .map_or(("", handler.module.as_str()), |(d, b)| (d, b));
                let stem = base.split('.').next().unwrap_or(base);
                let module = if dir.is_empty() {
                    stem.to_string()
                } else {
                    format!("{dir}/{stem}")
                };
                ["js", "mjs", "cjs"]
                    .iter()
                    .map(|ext| format!("{module}.{ext}"))
                    .collect()
            }
            Self::Provided => vec!["bootstrap".to_string()],
        }
    }
}

/// A handler `module.function`, e.g. `main.handler` or `src/app.handler` (Lambda's convention: the
/// last dot separates the exported function from the module path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    pub module: String,
    pub function: String,
}

impl Handler {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let err = |m: &str| Err(ValidationError::new("handler", m));
        if raw.is_empty() || raw.len() > 128 {
            return err("must be 1 to 128 characters, like main.handler");
        }
        let Some((module, function)) = raw.rsplit_once('.') else {
            return err("must look like module.function, e.g. main.handler");
        };
        let ident = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
                && !s.as_bytes()[0].is_ascii_digit()
        };
        if !ident(function) {
            return err("function part must be an identifier");
        }
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        };
        if module.starts_with('/') || !module.split('/').all(segment_ok) {
            return err("module part must be a relative path of letters, digits, '_', '-' and '.'");
        }
        Ok(Self {
            module: module.to_string(),
            function: function.to_string(),
        })
    }
}

pub const MEMORY_MB_RANGE: std::ops::RangeInclusive<i32> = 128..=10240;
pub const TIMEOUT_S_RANGE: std::ops::RangeInclusive<i32> = 1..=900;
pub const DEFAULT_MEMORY_MB: i32 = 128;
pub const DEFAULT_TIMEOUT_S: i32 = 30;

pub fn parse_memory_mb(v: i64) -> Result<i32, ValidationError> {
    in_range("memory_mb", v, &MEMORY_MB_RANGE)
}

pub const MAX_RETRIES_RANGE: std::ops::RangeInclusive<i32> = 0..=2;
pub const DEFAULT_MAX_RETRIES: i32 = 2;

pub fn parse_max_retries(v: i64) -> Result<i32, ValidationError> {
    in_range("max_retries", v, &MAX_RETRIES_RANGE)
}

pub const MAX_CONCURRENCY_RANGE: std::ops::RangeInclusive<i32> = 1..=1000;
pub const MIN_INSTANCES_RANGE: std::ops::RangeInclusive<i32> = 0..=10;

pub fn parse_max_concurrency(v: i64) -> Result<i32, ValidationError> {
    in_range("max_concurrency", v, &MAX_CONCURRENCY_RANGE)
}

pub fn parse_min_instances(v: i64) -> Result<i32, ValidationError> {
    in_range("min_instances", v, &MIN_INSTANCES_RANGE)
}

pub fn parse_timeout_s(v: i64) -> Result<i32, ValidationError> {
    in_range("timeout_s", v, &TIMEOUT_S_RANGE)
}

fn in_range(
    field: &'static str,
    v: i64,
    range: &std::ops::RangeInclusive<i32>,
) -> Result<i32, ValidationError> {
    i32::try_from(v)
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| {
            ValidationError::new(
                field,
                format!("must be between {} and {}", range.start(), range.end()),
            )
        })
}

/// Environment variables a function runs with. Lambda's limit: 4 KiB for all keys and values together.
pub type EnvVars = BTreeMap<String, String>;
pub const ENV_MAX_BYTES: usize = 4096;

/// Names the platform sets itself for every invocation; a user may not override them (Lambda's
/// reserved names, and the prefixes `AWS_` and `VOLTRUN_`).
const RESERVED_ENV: &[&str] = &[
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
    "TZ",
    "PATH",
    "HOME",
];
const RESERVED_PREFIXES: &[&str] = &["AWS_", "VOLTRUN_"];

/// Names that steer the dynamic loader or the C library of any process that inherits them (a library
/// of the caller's choosing loaded by `LD_AUDIT`/`LD_PRELOAD`, `GCONV_PATH` modules, tunables,
/// locale and resolver files). Functions never need them, and no process outside a sandbox must ever
/// see them, so they are refused outright rather than only kept inside.
const LOADER_ENV: &[&str] = &[
    "GCONV_PATH",
    "GETCONF_DIR",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TZDIR",
];
const LOADER_PREFIXES: &[&str] = &["LD_", "MALLOC_"];

/// Why `key` may not be set by a function, if it may not.
fn refused_env_name(key: &str) -> Option<String> {
    if RESERVED_ENV.contains(&key) || RESERVED_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return Some(format!("{key} is reserved by the platform"));
    }
    if LOADER_ENV.contains(&key) || LOADER_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return Some(format!(
            "{key} would steer the dynamic loader or C library; names like it (LD_*, MALLOC_*, \
             GCONV_PATH, GLIBC_TUNABLES, LOCPATH, …) are refused"
        ));
    }
    None
}

pub fn validate_env(env: &EnvVars) -> Result<(), ValidationError> {
    let mut total = 0usize;
    for (key, value) in env {
        let key_ok = !key.is_empty()
            && key.len() <= 128
            && key.as_bytes()[0].is_ascii_alphabetic()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !key_ok {
            return Err(ValidationError::new(
                "env",
                format!(
                    "{key:?} is not a valid name: use letters, digits and '_', starting with a letter"
                ),
            ));
        }
        if let Some(why) = refused_env_name(key) {
            return Err(ValidationError::new("env", why));
        }
        if value.contains('\0') {
            return Err(ValidationError::new(
                "env",
                format!("value of {key} contains a NUL byte"),
            ));
        }
        total += key.len() + value.len();
    }
    if total > ENV_MAX_BYTES {
        return Err(ValidationError::new(
            "env",
            format!("keys and values total {total} bytes; the limit is {ENV_MAX_BYTES}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(FunctionName::parse("hello-world-2").is_ok());
        for bad in [
            "",
            "-a",
            "a-",
            "Hello",
            "a_b",
            "a.b",
            "ä",
            &"a".repeat(65),
            "x'; DROP TABLE functions;--",
        ] {
            assert!(FunctionName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn logging_follows_lambdas_rules() {
        use LogFormat::{Json, Text};
        let text = (Text, None);
        let json_warn = (Json, Some(LogLevel::Warn));
        assert_eq!(resolve_logging(text, None, None).unwrap(), text);
        assert_eq!(
            resolve_logging(text, Some("json"), None).unwrap(),
            (Json, Some(LogLevel::Info))
        );
        assert_eq!(
            resolve_logging(text, Some("json"), Some("warn")).unwrap(),
            json_warn
        );
        // An update that leaves the format keeps the level, or changes it alone.
        assert_eq!(resolve_logging(json_warn, None, None).unwrap(), json_warn);
        assert_eq!(
            resolve_logging(json_warn, None, Some("debug")).unwrap(),
            (Json, Some(LogLevel::Debug))
        );
        assert_eq!(
            resolve_logging(json_warn, Some("text"), None).unwrap(),
            text
        );
        for (format, level) in [
            (None, Some("info")),
            (Some("text"), Some("info")),
            (Some("JSON"), None),
            (Some("xml"), None),
            (Some("json"), Some("INFO")),
            (Some("json"), Some("verbose")),
        ] {
            assert!(
                resolve_logging(text, format, level).is_err(),
                "{format:?} {level:?} accepted"
            );
        }
    }

    #[test]
    fn handler_modules_are_found_where_each_runtime_looks() {
        let candidates = |handler: &str| {
            RuntimeFamily::Python.module_candidates(&Handler::parse(handler).unwrap())
        };
        let expected = ["pkg/mod.py", "pkg/mod/__init__.py"];
        assert_eq!(candidates("pkg.mod.handler"), expected);
        assert_eq!(candidates("pkg/mod.handler"), expected);
        assert_eq!(candidates("main.handler"), ["main.py", "main/__init__.py"]);
        let node = |handler: &str| {
            RuntimeFamily::Node.module_candidates(&Handler::parse(handler).unwrap())
        };
        assert_eq!(
            node("index.handler"),
            ["index.js", "index.mjs", "index.cjs"]
        );
        assert_eq!(
            node("v1.2/src/app.routes.get"),
            ["v1.2/src/app.js", "v1.2/src/app.mjs", "v1.2/src/app.cjs"]
        );
    }

    #[test]
    fn handlers() {
        let h = Handler::parse("src/app.handler").unwrap();
        assert_eq!(
            (h.module.as_str(), h.function.as_str()),
            ("src/app", "handler")
        );
        for bad in [
            "main",
            ".handler",
            "main.",
            "../x.handler",
            "/abs.handler",
            "a//b.h",
            "m.1x",
        ] {
            assert!(Handler::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn env_rules() {
        let mut env = EnvVars::new();
        env.insert("GREETING".into(), "hi".into());
        assert!(validate_env(&env).is_ok());
        for refused in [
            "AWS_REGION",
            "LAMBDA_TASK_ROOT",
            "_HANDLER",
            "LD_AUDIT",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "GCONV_PATH",
            "GLIBC_TUNABLES",
            "LOCPATH",
            "MALLOC_ARENA_MAX",
        ] {
            let mut bad = env.clone();
            bad.insert(refused.into(), "x".into());
            let err = validate_env(&bad).unwrap_err();
            assert!(err.message.contains(refused), "{refused}: {}", err.message);
        }
        let mut big = EnvVars::new();
        big.insert("BIG".into(), "x".repeat(4094));
        assert!(validate_env(&big).is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_memory_mb(128), Ok(128));
        assert!(parse_memory_mb(127).is_err());
        assert!(parse_memory_mb(i64::MAX).is_err());
        assert!(parse_timeout_s(0).is_err());
        assert_eq!(parse_timeout_s(900), Ok(900));
    }
}
