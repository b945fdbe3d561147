//! Configuration: read once at start from flags, environment variables and a `.env` file (in that
//! order of precedence), checked, and turned into typed [`Settings`]. Each area declares its options
//! in one `Args` struct (its own file), where every option's variable, default and range is written
//! once: help text, parsing and `.env.example` (checked by a test) cannot drift apart. A bad value
//! stops the server with one line naming the variable. Secrets are wrapped so they never print.
//!
//! Parsing only reads its input. What needs the disk or the host (development secrets kept in the
//! data directory, the host's memory and CPUs) is start-up's work: see [`crate::startup`].

mod auth;
mod engine;
mod http;
mod parse;
mod quotas;
mod server;
#[cfg(test)]
mod tests;
mod vm;

use std::fmt;
use std::path::PathBuf;

use clap::{Args, FromArgMatches};

pub use auth::AuthArgs;
pub use engine::{EngineArgs, EngineBackend, EngineSettings};
pub use http::{HttpArgs, HttpLimits};
pub use quotas::{QuotaArgs, Quotas, RetentionArgs, RetentionSettings};
pub use server::{Environment, LogFormat, ServerArgs};
pub use vm::{VmArgs, VmSettings};

/// Every server option, by area: `voltrun server` and `voltrun migrate` take them all.
#[derive(Debug, Clone, Args)]
pub struct SettingsArgs {
    #[command(flatten, next_help_heading = "Server")]
    pub server: ServerArgs,
    #[command(flatten, next_help_heading = "Accounts and tokens")]
    pub auth: AuthArgs,
    #[command(flatten, next_help_heading = "HTTP limits")]
    pub http: HttpArgs,
    #[command(flatten, next_help_heading = "Quotas")]
    pub quotas: QuotaArgs,
    #[command(flatten, next_help_heading = "Retention")]
    pub retention: RetentionArgs,
    #[command(flatten, next_help_heading = "Execution engine")]
    pub engine: EngineArgs,
    #[command(flatten, next_help_heading = "Firecracker microVMs")]
    pub vm: VmArgs,
}

impl SettingsArgs {
    /// The options as `flags` give them, with no environment variable read: the defaults come from
    /// the declarations themselves, so tests and tools need no copy of them.
    pub fn from_flags<I, T>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = Self::command().mut_args(|arg| arg.env(None));
        let program = std::iter::once(std::ffi::OsString::from("voltrun"));
        let matches =
            command.try_get_matches_from(program.chain(flags.into_iter().map(Into::into)))?;
        Self::from_arg_matches(&matches)
    }

    /// The options as a command of their own, to parse or to look them up.
    fn command() -> clap::Command {
        Self::augment_args(clap::Command::new("voltrun"))
    }
}

/// Every option at its default.
impl Default for SettingsArgs {
    fn default() -> Self {
        Self::from_flags(std::iter::empty::<&str>())
            .expect("every default passes its own parser (tested)")
    }
}

/// An optional setting that an empty value also leaves unset: a `.env` line such as
/// `FIRECRACKER_BIN=` means the default, not an error. An alias rather than `Option` written out:
/// clap's derive takes `Option<T>` for "may be absent" and would hand the empty text to a parser of
/// `T`; through the alias it takes the parser's `Option` as the value. Each such option declares
/// `default_value = ""` (hidden from help) and parses with `parse::unless_blank`.
pub type Blankable<T> = Option<T>;

/// What this host contributes to the settings' defaults. Start-up reads it
/// ([`crate::startup::read_host`]) so that parsing reads nothing but its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub cpus: usize,
    /// `MemTotal` in MiB; `None` when unreadable.
    pub memory_mb: Option<u64>,
}

/// A value that must not appear in logs or debug output.
#[derive(Clone)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a secret came from, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    Configured,
    /// Generated on first start and kept in the data directory (development only).
    DataDir,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub port: u16,
    pub bind_address: std::net::IpAddr,
    pub database_url: Secret<String>,
    /// `None` only in development: start-up then keeps one in the data directory
    /// ([`crate::startup::secrets`]).
    pub jwt_secret: Option<Secret<Vec<u8>>>,
    /// As `jwt_secret`.
    pub encryption_key: Option<Secret<[u8; 32]>>,
    pub environment: Environment,
    pub log_format: LogFormat,
    pub log_level: String,
    pub data_dir: PathBuf,
    pub access_token_ttl_s: i64,
    pub refresh_token_ttl_s: i64,
    pub session_max_age_s: i64,
    pub auth_attempts_per_minute: u32,
    pub login_failures_per_account: u32,
    pub auth_limiter_max_keys: usize,
    pub auth_hashing_concurrency: usize,
    pub auth_hashing_queue_timeout_ms: u64,
    pub trusted_proxies: voltrun_api::TrustedProxies,
    pub metrics_token: Option<Secret<String>>,
    pub shutdown_timeout_s: u64,
    pub db_max_connections: u32,
    pub http: HttpLimits,
    pub engine: EngineSettings,
    pub quotas: Quotas,
    pub retention: RetentionSettings,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {message}")]
pub struct ConfigError {
    pub variable: String,
    pub message: String,
}

pub(crate) fn bad(variable: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable: variable.to_string(),
        message: message.into(),
    }
}

impl ConfigError {
    /// The configuration error in clap's report of a value one of the settings' parsers refused, or
    /// `None` for any other parse error. clap names the flag (`--port <PORT>`); operators mostly set
    /// the variable, so the message names that, on one line, as the checks after parsing do.
    pub fn from_clap(error: &clap::Error) -> Option<Self> {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        if error.kind() != ErrorKind::ValueValidation {
            return None;
        }
        let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
            return None;
        };
        // "--port <PORT>": the flag is the first word.
        let long = arg.split_whitespace().next()?.strip_prefix("--")?;
        let command = SettingsArgs::command();
        let setting = command
            .get_arguments()
            .find(|setting| setting.get_long() == Some(long))?;
        let variable = setting.get_env()?.to_string_lossy().into_owned();
        let message = std::error::Error::source(error)
            .map_or_else(|| "is not valid".to_string(), ToString::to_string);
        Some(bad(&variable, message))
    }
}

impl Settings {
    /// Checks what one option cannot check alone and fills in the defaults that depend on other
    /// options or on the host. Reads nothing but its arguments.
    pub fn from_args(args: SettingsArgs, host: &Host) -> Result<Self, ConfigError> {
        let SettingsArgs {
            server,
            auth,
            http,
            quotas,
            retention,
            engine,
            vm,
        } = args;
        auth.check(server.environment)?;
        let database_url = server.database_url.unwrap_or_else(|| {
            Secret::new(format!(
                "sqlite://{}",
                server.data_dir.join("voltrun.db").display()
            ))
        });
        let log_format = server.log_format.unwrap_or(match server.environment {
            Environment::Production => LogFormat::Json,
            Environment::Development => LogFormat::Pretty,
        });
        let vm = vm.settings(&server.data_dir);
        Ok(Self {
            port: server.port,
            bind_address: server.bind_address,
            database_url,
            jwt_secret: auth.jwt_secret,
            encryption_key: auth.encryption_key,
            environment: server.environment,
            log_format,
            log_level: server.log_level,
            access_token_ttl_s: auth.access_token_ttl_s,
            refresh_token_ttl_s: auth.refresh_token_ttl_s,
            session_max_age_s: auth.session_max_age_s,
            auth_attempts_per_minute: auth.attempts_per_minute,
            login_failures_per_account: auth.login_failures_per_account,
            auth_limiter_max_keys: auth.limiter_max_keys,
            auth_hashing_concurrency: auth.hashing_concurrency.unwrap_or(host.cpus),
            auth_hashing_queue_timeout_ms: auth.hashing_queue_timeout_ms,
            trusted_proxies: auth.trusted_proxies,
            metrics_token: server.metrics_token,
            shutdown_timeout_s: server.shutdown_timeout_s,
            db_max_connections: server.db_max_connections,
            http: http.limits(),
            engine: engine.settings(vm, host),
            quotas: quotas.quotas(),
            retention: retention.settings(),
            data_dir: server.data_dir,
        })
    }
}
