//! Configuration: read once at start from flags, environment variables and a `.env` file (in that
//! order of precedence), checked, and turned into typed [`Settings`]. A bad value stops the server
//! with one line naming the variable. Secrets are wrapped so they never print.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Args;

/// The raw options, as flags with environment fallbacks. Everything is text here; [`Settings::from_raw`]
/// does the checking so that errors can name the environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct RawSettings {
    /// Port to listen on [default: 8080]
    #[arg(long, env = "PORT")]
    pub port: Option<String>,
    /// Address to bind [default: 0.0.0.0]
    #[arg(long, env = "BIND_ADDRESS")]
    pub bind_address: Option<String>,
    /// sqlite://PATH or postgres://USER:PASS@HOST/DB [default: sqlite://DATA_DIR/voltrun.db]
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Secret for signing access tokens, at least 32 bytes (required in production)
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Base64 of 32 bytes: the key that encrypts function environment variables (required in production)
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,
    /// development or production [default: development]
    #[arg(long, env = "ENVIRONMENT")]
    pub environment: Option<String>,
    /// json or pretty [default: pretty in development, json in production]
    #[arg(long, env = "LOG_FORMAT")]
    pub log_format: Option<String>,
    /// A tracing filter such as info or voltrun=debug,info [default: info]
    #[arg(long, env = "LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Where the server keeps its files: the SQLite database and development secrets [default: ./data]
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<String>,
    /// Lifetime of access tokens in seconds [default: 900]
    #[arg(long, env = "ACCESS_TOKEN_TTL_S")]
    pub access_token_ttl_s: Option<String>,
    /// Lifetime of refresh tokens in seconds [default: 2592000, 30 days]
    #[arg(long, env = "REFRESH_TOKEN_TTL_S")]
    pub refresh_token_ttl_s: Option<String>,
    /// A session's absolute lifetime in seconds: refresh tokens stop rotating this long after the login that started it [default: 2592000, 30 days]
    #[arg(long, env = "SESSION_MAX_AGE_S")]
    pub session_max_age_s: Option<String>,
    /// Login and register attempts allowed per client address per minute [default: 30]
    #[arg(long, env = "AUTH_ATTEMPTS_PER_MINUTE")]
    pub auth_attempts_per_minute: Option<String>,
    /// Failed logins allowed per account from one client address per 15 minutes [default: 10]
    #[arg(long, env = "LOGIN_FAILURES_PER_ACCOUNT")]
    pub login_failures_per_account: Option<String>,
    /// Proxies in front of this server, as addresses or CIDR ranges separated by commas: from them, the client address is the rightmost X-Forwarded-For hop that is not one of them [default: none; X-Forwarded-For is ignored]
    #[arg(long, env = "TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// Addresses and accounts each brute-force limiter tracks at most; past it the least recently seen is forgotten [default: 100000]
    #[arg(long, env = "AUTH_LIMITER_MAX_KEYS")]
    pub auth_limiter_max_keys: Option<String>,
    /// Password hashes (register, login) computed at once [default: this host's CPU count]
    #[arg(long, env = "AUTH_HASHING_CONCURRENCY")]
    pub auth_hashing_concurrency: Option<String>,
    /// Milliseconds a register or login waits for a password-hashing turn before it is answered 503 [default: 5000]
    #[arg(long, env = "AUTH_HASHING_QUEUE_TIMEOUT_MS")]
    pub auth_hashing_queue_timeout_ms: Option<String>,
    /// Bearer token that GET /metrics and the operator view of GET /health require, at least 16 characters [default: none; /metrics is open]
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Replaced by TRUSTED_PROXIES; true is refused, with a message saying so.
    #[arg(long, env = "TRUST_FORWARDED_FOR", hide = true)]
    pub trust_forwarded_for: Option<String>,
    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT [default: 30]
    #[arg(long, env = "SHUTDOWN_TIMEOUT_S")]
    pub shutdown_timeout_s: Option<String>,
    /// Database connection pool size [default: 16]
    #[arg(long, env = "DB_MAX_CONNECTIONS")]
    pub db_max_connections: Option<String>,
    /// Seconds a client has to send a request's line and headers, or the connection is closed [default: 10]
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_S")]
    pub http_header_timeout_s: Option<String>,
    /// Seconds a client has to send a request's whole body, or it gets a 408 [default: 60]
    #[arg(long, env = "HTTP_BODY_TIMEOUT_S")]
    pub http_body_timeout_s: Option<String>,
    /// Client connections served at once; more wait to be accepted [default: 512]
    #[arg(long, env = "HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<String>,
    /// Connections one client address may hold at once; more are closed at once (0: no cap, e.g. behind a proxy) [default: 64]
    #[arg(long, env = "HTTP_MAX_CONNECTIONS_PER_ADDRESS")]
    pub http_max_connections_per_address: Option<String>,
    /// Seconds a response write may stay stuck on a client that does not read, before the connection is closed [default: 30]
    #[arg(long, env = "HTTP_WRITE_TIMEOUT_S")]
    pub http_write_timeout_s: Option<String>,
    /// Uploads over 1 MiB (function code) read at once; more get a 503 with Retry-After [default: 4]
    #[arg(long, env = "HTTP_MAX_UPLOADS")]
    pub http_max_uploads: Option<String>,
    /// Functions one user may have; 0 for no limit [default: 100]
    #[arg(long, env = "QUOTA_FUNCTIONS_PER_USER")]
    pub quota_functions_per_user: Option<String>,
    /// MiB of code one user's functions may hold together, each function's code counted whole; 0 for no limit [default: 1024]
    #[arg(long, env = "QUOTA_CODE_MB_PER_USER")]
    pub quota_code_mb_per_user: Option<String>,
    /// Asynchronous executions one user may have queued; past it, 429 queue_full; 0 for no limit [default: 1000]
    #[arg(long, env = "QUOTA_QUEUED_EXECUTIONS_PER_USER")]
    pub quota_queued_executions_per_user: Option<String>,
    /// Days finished executions and their logs are kept; 0 keeps them forever [default: 30]
    #[arg(long, env = "EXECUTION_RETENTION_DAYS")]
    pub execution_retention_days: Option<String>,
    /// Seconds between looks for executions past retention [default: 3600]
    #[arg(long, env = "EXECUTION_RETENTION_INTERVAL_S")]
    pub execution_retention_interval_s: Option<String>,
    /// Seconds unpacked code no function references stays on disk after its last use; 0 keeps it forever [default: 3600]
    #[arg(long, env = "ENGINE_CODE_GC_AFTER_S")]
    pub engine_code_gc_after_s: Option<String>,
    /// Isolation backend: auto, firecracker, namespace, emulated or none [default: auto: firecracker where a guest boots, else namespace where this host can run it; never emulated]
    #[arg(long, env = "ENGINE_BACKEND")]
    pub engine_backend: Option<String>,
    /// Guest kernel and root images for the firecracker backend (`voltrun vm images build`) [default: <DATA_DIR>/vm/images]
    #[arg(long, env = "VM_IMAGES_DIR")]
    pub vm_images_dir: Option<String>,
    /// Milliseconds a microVM may take from InstanceStart to its guest agent's hello [default: 10000]
    #[arg(long, env = "VM_BOOT_TIMEOUT_MS")]
    pub vm_boot_timeout_ms: Option<String>,
    /// The Firecracker binary [default: found on PATH or where scripts/install-firecracker.sh put it]
    #[arg(long, env = "FIRECRACKER_BIN")]
    pub firecracker_bin: Option<String>,
    /// QEMU for the emulated backend [default: qemu-system-x86_64 on PATH]
    #[arg(long, env = "QEMU_BIN")]
    pub qemu_bin: Option<String>,
    /// vhost-device-vsock for the emulated backend [default: on PATH, or where scripts/install-emulator.sh put it]
    #[arg(long, env = "VHOST_VSOCK_BIN")]
    pub vhost_vsock_bin: Option<String>,
    /// Run each Firecracker through its jailer (chroot, unprivileged uid, cgroup, own network namespace) [default: false]
    #[arg(long, env = "VM_JAILER")]
    pub vm_jailer: Option<String>,
    /// Snapshots of initialised guests kept for the firecracker backend's cold starts (each as large as its function's memory); 0 boots every cold start [default: 16]
    #[arg(long, env = "VM_SNAPSHOTS_MAX")]
    pub vm_snapshots_max: Option<String>,
    /// Seconds an idle instance stays warm [default: 600]
    #[arg(long, env = "ENGINE_KEEP_ALIVE_S")]
    pub engine_keep_alive_s: Option<String>,
    /// Concurrent invocations per function [default: 10]
    #[arg(long, env = "ENGINE_MAX_CONCURRENCY")]
    pub engine_max_concurrency: Option<String>,
    /// Memory all instances together may use, in MB [default: 3/4 of this host's memory]
    #[arg(long, env = "ENGINE_MEMORY_BUDGET_MB")]
    pub engine_memory_budget_mb: Option<String>,
    /// Memory one user's live instances may hold at once, in MB: no tenant can take the whole budget [default: half of ENGINE_MEMORY_BUDGET_MB]
    #[arg(long, env = "ENGINE_USER_MEMORY_MB")]
    pub engine_user_memory_mb: Option<String>,
    /// Seconds an invocation waits for capacity before 429 [default: 10]
    #[arg(long, env = "ENGINE_QUEUE_TIMEOUT_S")]
    pub engine_queue_timeout_s: Option<String>,
    /// First host uid of the range sandboxes run as; the uid just below it unpacks code, so neither may belong to anything else on the host [default: 200000]
    #[arg(long, env = "ENGINE_SANDBOX_UID_BASE")]
    pub engine_sandbox_uid_base: Option<String>,
    /// How many host uids from the base sandboxes may use: each live instance holds one of its own [default: 10000]
    #[arg(long, env = "ENGINE_SANDBOX_UID_COUNT")]
    pub engine_sandbox_uid_count: Option<String>,
    /// Size of each sandbox's /tmp in MB [default: 512]
    #[arg(long, env = "ENGINE_TMP_SIZE_MB")]
    pub engine_tmp_size_mb: Option<String>,
    /// Processes and threads per instance [default: 256]
    #[arg(long, env = "ENGINE_MAX_PROCESSES")]
    pub engine_max_processes: Option<String>,
    /// Asynchronous executions run at once [default: 8]
    #[arg(long, env = "ENGINE_ASYNC_PARALLELISM")]
    pub engine_async_parallelism: Option<String>,
    /// Delay before the first retry of a failed asynchronous execution, in ms; doubles per retry [default: 1000]
    #[arg(long, env = "ENGINE_RETRY_BACKOFF_MS")]
    pub engine_retry_backoff_ms: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

/// Which isolation backend runs functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineBackend {
    /// Firecracker where `voltrun vm doctor`'s boot probe passes, else the namespace sandbox where
    /// this host can run it, else none (each time with the reason in /health).
    Auto,
    Firecracker,
    Namespace,
    /// The Firecracker backend's guests booted by QEMU under emulation: a development and test
    /// backend for hosts where no guest boots under KVM. Never chosen by `Auto`.
    Emulated,
    None,
}

/// The Firecracker backend's settings.
#[derive(Debug, Clone)]
pub struct VmSettings {
    pub firecracker_bin: Option<PathBuf>,
    /// The emulated backend's programs, when not found on `PATH`.
    pub qemu_bin: Option<PathBuf>,
    pub vhost_vsock_bin: Option<PathBuf>,
    pub images_dir: PathBuf,
    pub boot_timeout_ms: u64,
    pub jailer: bool,
    /// Snapshots kept for cold starts; 0 turns them off.
    pub snapshots_max: usize,
}

#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub backend: EngineBackend,
    pub vm: VmSettings,
    pub keep_alive_s: u64,
    pub max_concurrency: usize,
    pub memory_budget_mb: u64,
    pub user_memory_mb: u64,
    pub queue_timeout_s: u64,
    pub sandbox_uid_base: u32,
    pub sandbox_uid_count: u32,
    pub tmp_size_mb: u64,
    pub max_processes: u64,
    pub async_parallelism: usize,
    pub retry_backoff_ms: u64,
    /// Unreferenced code is removed this long after its last use; `None` keeps it.
    pub code_gc_after: Option<std::time::Duration>,
}

/// Per-user limits (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub functions: Option<u64>,
    pub code_bytes: Option<u64>,
    pub queued_executions: Option<u64>,
}

/// How long execution records are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// `None` keeps them forever.
    pub keep_days: Option<u32>,
    pub interval: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
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
    pub jwt_secret: Secret<Vec<u8>>,
    pub jwt_secret_source: SecretSource,
    pub encryption_key: Secret<[u8; 32]>,
    pub encryption_key_source: SecretSource,
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

/// What one client may hold of the HTTP server (see `edge`).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub header_timeout: std::time::Duration,
    pub write_timeout: std::time::Duration,
    /// 0: no cap.
    pub max_connections_per_address: usize,
    pub body_timeout: std::time::Duration,
    pub max_connections: usize,
    pub max_uploads: usize,
}

/// Three quarters of the host's memory, from /proc/meminfo (4 GiB when unreadable).
fn default_memory_budget_mb() -> u64 {
    let total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        });
    total_kb.map(|kb| kb / 1024 * 3 / 4).unwrap_or(4096)
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

fn bad(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        message: message.into(),
    }
}

fn number<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(
    variable: &'static str,
    raw: Option<&str>,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    let Some(raw) = raw else { return Ok(default) };
    let value: T = raw
        .trim()
        .parse()
        .map_err(|_| bad(variable, format!("{raw:?} is not a number")))?;
    if value < min || value > max {
        return Err(bad(variable, format!("{value} is outside {min}..={max}")));
    }
    Ok(value)
}

/// A limit where 0 means none.
fn limit(
    variable: &'static str,
    raw: Option<&str>,
    default: u64,
    max: u64,
) -> Result<Option<u64>, ConfigError> {
    let value = number(variable, raw, default, 0, max)?;
    Ok((value > 0).then_some(value))
}

fn boolean(variable: &'static str, raw: Option<&str>) -> Result<bool, ConfigError> {
    match raw.map(|r| r.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "0" | "false" | "no" | "off") => Ok(false),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some(other) => Err(bad(variable, format!("{other:?} is not true or false"))),
    }
}

const MIN_JWT_SECRET_BYTES: usize = 32;

const MIN_METRICS_TOKEN_CHARS: usize = 16;

fn metrics_token(raw: Option<String>) -> Result<Option<Secret<String>>, ConfigError> {
    match raw.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(token) if token.chars().count() >= MIN_METRICS_TOKEN_CHARS => {
            Ok(Some(Secret::new(token)))
        }
        Some(_) => Err(bad(
            "METRICS_TOKEN",
            format!(
                "must be at least {MIN_METRICS_TOKEN_CHARS} characters (e.g. `openssl rand -hex 32`)"
            ),
        )),
    }
}

/// `TRUSTED_PROXIES`. Its predecessor, `TRUST_FORWARDED_FOR=true`, believed the first
/// `X-Forwarded-For` entry from any sender, which the client writes: it stops the server rather than
/// being mapped to something that either keeps that hole or silently changes who is rate-limited.
fn trusted_proxies(
    trust_forwarded_for: Option<&str>,
    list: Option<&str>,
) -> Result<voltrun_api::TrustedProxies, ConfigError> {
    if boolean("TRUST_FORWARDED_FOR", trust_forwarded_for)? {
        return Err(bad(
            "TRUST_FORWARDED_FOR",
            "is replaced by TRUSTED_PROXIES: list the addresses or CIDR ranges of the proxies in front \
             of this server (e.g. TRUSTED_PROXIES=10.0.0.0/8), and remove TRUST_FORWARDED_FOR",
        ));
    }
    voltrun_api::TrustedProxies::parse(list.unwrap_or("")).map_err(|e| bad("TRUSTED_PROXIES", e))
}

impl Settings {
    pub fn from_raw(raw: RawSettings) -> Result<Self, ConfigError> {
        let memory_budget_mb = number(
            "ENGINE_MEMORY_BUDGET_MB",
            raw.engine_memory_budget_mb.as_deref(),
            default_memory_budget_mb(),
            128,
            u64::MAX >> 20,
        )?;
        let environment = match raw.environment.as_deref().map(str::trim) {
            None | Some("" | "development") => Environment::Development,
            Some("production") => Environment::Production,
            Some(other) => {
                return Err(bad(
                    "ENVIRONMENT",
                    format!("{other:?} is not development or production"),
                ));
            }
        };
        let log_format = match raw.log_format.as_deref().map(str::trim) {
            None | Some("") if environment == Environment::Production => LogFormat::Json,
            None | Some("") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                return Err(bad(
                    "LOG_FORMAT",
                    format!("{other:?} is not json or pretty"),
                ));
            }
        };
        let log_level = raw.log_level.unwrap_or_else(|| "info".into());
        tracing_subscriber::EnvFilter::try_new(&log_level).map_err(|e| {
            bad(
                "LOG_LEVEL",
                format!("{log_level:?} is not a tracing filter: {e}"),
            )
        })?;
        let data_dir = PathBuf::from(raw.data_dir.unwrap_or_else(|| "./data".into()));
        let vm_images_dir = raw
            .vm_images_dir
            .filter(|d| !d.trim().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("vm").join("images"));
        let database_url = match raw.database_url.filter(|u| !u.trim().is_empty()) {
            Some(url)
                if url.starts_with("sqlite:")
                    || url.starts_with("postgres://")
                    || url.starts_with("postgresql://") =>
            {
                url
            }
            Some(_) => {
                return Err(bad(
                    "DATABASE_URL",
                    "must start with sqlite:// or postgres://",
                ));
            }
            None => format!("sqlite://{}", data_dir.join("voltrun.db").display()),
        };
        let port = number("PORT", raw.port.as_deref(), 8080u16, 0, u16::MAX)?;
        let bind_address = raw
            .bind_address
            .as_deref()
            .unwrap_or("0.0.0.0")
            .trim()
            .parse()
            .map_err(|_| bad("BIND_ADDRESS", "is not an IP address"))?;

        let (jwt_secret, jwt_secret_source) = match raw.jwt_secret {
            Some(secret) if secret.len() >= MIN_JWT_SECRET_BYTES => {
                (secret.into_bytes(), SecretSource::Configured)
            }
            Some(_) => {
                return Err(bad(
                    "JWT_SECRET",
                    format!("must be at least {MIN_JWT_SECRET_BYTES} bytes"),
                ));
            }
            None if environment == Environment::Production => {
                return Err(bad(
                    "JWT_SECRET",
                    "is required in production (at least 32 random bytes)",
                ));
            }
            None => (
                persisted_secret(&data_dir, "jwt_secret")?.to_vec(),
                SecretSource::DataDir,
            ),
        };
        let (encryption_key, encryption_key_source) = match raw.encryption_key {
            Some(encoded) => {
                let bytes = STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| bad("ENCRYPTION_KEY", "is not base64"))?;
                let key: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| bad("ENCRYPTION_KEY", "must be base64 of exactly 32 bytes"))?;
                (key, SecretSource::Configured)
            }
            None if environment == Environment::Production => {
                return Err(bad(
                    "ENCRYPTION_KEY",
                    "is required in production (base64 of 32 random bytes)",
                ));
            }
            None => (
                persisted_secret(&data_dir, "encryption_key")?,
                SecretSource::DataDir,
            ),
        };

        Ok(Self {
            port,
            bind_address,
            database_url: Secret::new(database_url),
            jwt_secret: Secret::new(jwt_secret),
            jwt_secret_source,
            encryption_key: Secret::new(encryption_key),
            encryption_key_source,
            environment,
            log_format,
            log_level,
            data_dir,
            access_token_ttl_s: number(
                "ACCESS_TOKEN_TTL_S",
                raw.access_token_ttl_s.as_deref(),
                900,
                30,
                86_400,
            )?,
            refresh_token_ttl_s: number(
                "REFRESH_TOKEN_TTL_S",
                raw.refresh_token_ttl_s.as_deref(),
                30 * 86_400,
                60,
                365 * 86_400,
            )?,
            // Seconds are allowed (down to 1) so that the expiry can be tested end to end.
            session_max_age_s: number(
                "SESSION_MAX_AGE_S",
                raw.session_max_age_s.as_deref(),
                30 * 86_400,
                1,
                10 * 365 * 86_400,
            )?,
            auth_attempts_per_minute: number(
                "AUTH_ATTEMPTS_PER_MINUTE",
                raw.auth_attempts_per_minute.as_deref(),
                30,
                1,
                1_000_000,
            )?,
            login_failures_per_account: number(
                "LOGIN_FAILURES_PER_ACCOUNT",
                raw.login_failures_per_account.as_deref(),
                10,
                1,
                1_000_000,
            )?,
            auth_limiter_max_keys: number(
                "AUTH_LIMITER_MAX_KEYS",
                raw.auth_limiter_max_keys.as_deref(),
                100_000,
                16,
                100_000_000,
            )?,
            auth_hashing_concurrency: number(
                "AUTH_HASHING_CONCURRENCY",
                raw.auth_hashing_concurrency.as_deref(),
                std::thread::available_parallelism().map_or(2, usize::from),
                1,
                4096,
            )?,
            auth_hashing_queue_timeout_ms: number(
                "AUTH_HASHING_QUEUE_TIMEOUT_MS",
                raw.auth_hashing_queue_timeout_ms.as_deref(),
                5000,
                0,
                60_000,
            )?,
            metrics_token: metrics_token(raw.metrics_token)?,
            trusted_proxies: trusted_proxies(
                raw.trust_forwarded_for.as_deref(),
                raw.trusted_proxies.as_deref(),
            )?,
            shutdown_timeout_s: number(
                "SHUTDOWN_TIMEOUT_S",
                raw.shutdown_timeout_s.as_deref(),
                30,
                0,
                3600,
            )?,
            db_max_connections: number(
                "DB_MAX_CONNECTIONS",
                raw.db_max_connections.as_deref(),
                16,
                1,
                1000,
            )?,
            http: HttpLimits {
                header_timeout: std::time::Duration::from_secs(number(
                    "HTTP_HEADER_TIMEOUT_S",
                    raw.http_header_timeout_s.as_deref(),
                    10,
                    1,
                    3600,
                )?),
                body_timeout: std::time::Duration::from_secs(number(
                    "HTTP_BODY_TIMEOUT_S",
                    raw.http_body_timeout_s.as_deref(),
                    60,
                    1,
                    3600,
                )?),
                write_timeout: std::time::Duration::from_secs(number(
                    "HTTP_WRITE_TIMEOUT_S",
                    raw.http_write_timeout_s.as_deref(),
                    30,
                    1,
                    3600,
                )?),
                max_connections_per_address: number(
                    "HTTP_MAX_CONNECTIONS_PER_ADDRESS",
                    raw.http_max_connections_per_address.as_deref(),
                    64,
                    0,
                    1_000_000,
                )?,
                max_connections: number(
                    "HTTP_MAX_CONNECTIONS",
                    raw.http_max_connections.as_deref(),
                    512,
                    1,
                    1_000_000,
                )?,
                max_uploads: number(
                    "HTTP_MAX_UPLOADS",
                    raw.http_max_uploads.as_deref(),
                    4,
                    1,
                    10_000,
                )?,
            },
            engine: EngineSettings {
                backend: match raw.engine_backend.as_deref().map(str::trim) {
                    None | Some("" | "auto") => EngineBackend::Auto,
                    Some("firecracker") => EngineBackend::Firecracker,
                    Some("namespace") => EngineBackend::Namespace,
                    Some("emulated") => EngineBackend::Emulated,
                    Some("none") => EngineBackend::None,
                    Some(other) => {
                        return Err(bad(
                            "ENGINE_BACKEND",
                            format!(
                                "{other:?} is not auto, firecracker, namespace, emulated or none"
                            ),
                        ));
                    }
                },
                vm: VmSettings {
                    firecracker_bin: raw
                        .firecracker_bin
                        .filter(|b| !b.trim().is_empty())
                        .map(PathBuf::from),
                    qemu_bin: raw
                        .qemu_bin
                        .filter(|b| !b.trim().is_empty())
                        .map(PathBuf::from),
                    vhost_vsock_bin: raw
                        .vhost_vsock_bin
                        .filter(|b| !b.trim().is_empty())
                        .map(PathBuf::from),
                    images_dir: vm_images_dir,
                    boot_timeout_ms: number(
                        "VM_BOOT_TIMEOUT_MS",
                        raw.vm_boot_timeout_ms.as_deref(),
                        10_000,
                        100,
                        600_000,
                    )?,
                    jailer: boolean("VM_JAILER", raw.vm_jailer.as_deref())?,
                    snapshots_max: number(
                        "VM_SNAPSHOTS_MAX",
                        raw.vm_snapshots_max.as_deref(),
                        16,
                        0,
                        10_000,
                    )?,
                },
                keep_alive_s: number(
                    "ENGINE_KEEP_ALIVE_S",
                    raw.engine_keep_alive_s.as_deref(),
                    600,
                    1,
                    86_400,
                )?,
                max_concurrency: number(
                    "ENGINE_MAX_CONCURRENCY",
                    raw.engine_max_concurrency.as_deref(),
                    10,
                    1,
                    10_000,
                )?,
                memory_budget_mb,
                user_memory_mb: number(
                    "ENGINE_USER_MEMORY_MB",
                    raw.engine_user_memory_mb.as_deref(),
                    (memory_budget_mb / 2).max(128),
                    128,
                    u64::MAX >> 20,
                )?,
                queue_timeout_s: number(
                    "ENGINE_QUEUE_TIMEOUT_S",
                    raw.engine_queue_timeout_s.as_deref(),
                    10,
                    0,
                    900,
                )?,
                sandbox_uid_base: number(
                    "ENGINE_SANDBOX_UID_BASE",
                    raw.engine_sandbox_uid_base.as_deref(),
                    200_000,
                    1000,
                    u32::MAX - 100_000,
                )?,
                sandbox_uid_count: number(
                    "ENGINE_SANDBOX_UID_COUNT",
                    raw.engine_sandbox_uid_count.as_deref(),
                    10_000,
                    1,
                    100_000,
                )?,
                tmp_size_mb: number(
                    "ENGINE_TMP_SIZE_MB",
                    raw.engine_tmp_size_mb.as_deref(),
                    512,
                    1,
                    10_240,
                )?,
                max_processes: number(
                    "ENGINE_MAX_PROCESSES",
                    raw.engine_max_processes.as_deref(),
                    256,
                    8,
                    100_000,
                )?,
                async_parallelism: number(
                    "ENGINE_ASYNC_PARALLELISM",
                    raw.engine_async_parallelism.as_deref(),
                    8,
                    1,
                    1000,
                )?,
                retry_backoff_ms: number(
                    "ENGINE_RETRY_BACKOFF_MS",
                    raw.engine_retry_backoff_ms.as_deref(),
                    1000,
                    0,
                    3_600_000,
                )?,
                code_gc_after: limit(
                    "ENGINE_CODE_GC_AFTER_S",
                    raw.engine_code_gc_after_s.as_deref(),
                    3600,
                    30 * 86_400,
                )?
                .map(std::time::Duration::from_secs),
            },
            quotas: Quotas {
                functions: limit(
                    "QUOTA_FUNCTIONS_PER_USER",
                    raw.quota_functions_per_user.as_deref(),
                    100,
                    1_000_000,
                )?,
                code_bytes: limit(
                    "QUOTA_CODE_MB_PER_USER",
                    raw.quota_code_mb_per_user.as_deref(),
                    1024,
                    1 << 20,
                )?
                .map(|mib| mib << 20),
                queued_executions: limit(
                    "QUOTA_QUEUED_EXECUTIONS_PER_USER",
                    raw.quota_queued_executions_per_user.as_deref(),
                    1000,
                    100_000_000,
                )?,
            },
            retention: RetentionSettings {
                keep_days: limit(
                    "EXECUTION_RETENTION_DAYS",
                    raw.execution_retention_days.as_deref(),
                    30,
                    36_500,
                )?
                .map(|days| u32::try_from(days).unwrap_or(u32::MAX)),
                interval: std::time::Duration::from_secs(number(
                    "EXECUTION_RETENTION_INTERVAL_S",
                    raw.execution_retention_interval_s.as_deref(),
                    3600,
                    1,
                    7 * 86_400,
                )?),
            },
        })
    }
}

/// A 32-byte secret kept in `DATA_DIR/<name>` (mode 0600), generated on first use. Development only:
/// production takes its secrets from the environment.
fn persisted_secret(data_dir: &Path, name: &'static str) -> Result<[u8; 32], ConfigError> {
    let variable = "DATA_DIR";
    create_private_dir(data_dir).map_err(|e| {
        bad(
            variable,
            format!("cannot create {}: {e}", data_dir.display()),
        )
    })?;
    let path = data_dir.join(name);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let bytes = STANDARD.decode(text.trim()).map_err(|_| {
            bad(
                variable,
                format!(
                    "{} is damaged (not base64); delete it to regenerate",
                    path.display()
                ),
            )
        })?;
        return bytes.try_into().map_err(|_| {
            bad(
                variable,
                format!(
                    "{} is damaged (wrong length); delete it to regenerate",
                    path.display()
                ),
            )
        });
    }
    let secret: [u8; 32] = voltrun_auth::secrets::random_bytes();
    write_private(&path, STANDARD.encode(secret).as_bytes())
        .map_err(|e| bad(variable, format!("cannot write {}: {e}", path.display())))?;
    Ok(secret)
}

/// Creates `dir` (and missing parents) readable by the server's user alone (0700). An existing
/// directory keeps the mode its operator gave it.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates an empty file of mode 0600 at `path` unless one exists (SQLite then opens it as an empty
/// database, and makes its `-wal` and `-shm` files with the same mode).
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(dir: &Path) -> RawSettings {
        RawSettings {
            data_dir: Some(dir.display().to_string()),
            ..RawSettings::default()
        }
    }

    fn tmp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("voltrun-config-{}", uuid_like()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn uuid_like() -> String {
        voltrun_auth::secrets::random_token(8)
    }

    #[test]
    fn development_defaults_persist_secrets() {
        let dir = tmp();
        let a = Settings::from_raw(dev(&dir)).unwrap();
        let b = Settings::from_raw(dev(&dir)).unwrap();
        assert_eq!(a.port, 8080);
        assert_eq!(a.jwt_secret_source, SecretSource::DataDir);
        assert_eq!(a.jwt_secret.expose(), b.jwt_secret.expose());
        assert_eq!(a.encryption_key.expose(), b.encryption_key.expose());
        assert!(a.database_url.expose().starts_with("sqlite://"));
        assert!(!format!("{a:?}").contains(&STANDARD.encode(a.encryption_key.expose())));
    }

    #[test]
    fn production_requires_secrets() {
        let dir = tmp();
        let raw = RawSettings {
            environment: Some("production".into()),
            ..dev(&dir)
        };
        assert_eq!(
            Settings::from_raw(raw.clone()).unwrap_err().variable,
            "JWT_SECRET"
        );
        let short = RawSettings {
            jwt_secret: Some("short".into()),
            ..raw.clone()
        };
        assert_eq!(
            Settings::from_raw(short).unwrap_err().variable,
            "JWT_SECRET"
        );
        let no_key = RawSettings {
            jwt_secret: Some("x".repeat(32)),
            ..raw.clone()
        };
        assert_eq!(
            Settings::from_raw(no_key).unwrap_err().variable,
            "ENCRYPTION_KEY"
        );
        let ok = RawSettings {
            jwt_secret: Some("x".repeat(32)),
            encryption_key: Some(STANDARD.encode([1u8; 32])),
            ..raw
        };
        let settings = Settings::from_raw(ok).unwrap();
        assert_eq!(settings.log_format, LogFormat::Json);
    }

    #[test]
    fn every_option_is_in_the_env_example() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Options {
            #[command(flatten)]
            raw: RawSettings,
        }
        let example = include_str!("../../../.env.example");
        let missing: Vec<String> = Options::command()
            .get_arguments()
            // Hidden options are retired ones, kept only to explain their replacement.
            .filter(|arg| !arg.is_hide_set())
            .filter_map(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .filter(|env| !example.contains(&format!("{env}=")))
            .collect();
        assert!(missing.is_empty(), ".env.example lacks {missing:?}");
    }

    #[test]
    fn snapshots_default_to_sixteen_and_zero_turns_them_off() {
        let dir = tmp();
        let defaults = Settings::from_raw(dev(&dir)).unwrap();
        assert_eq!(defaults.engine.vm.snapshots_max, 16);
        let off = RawSettings {
            vm_snapshots_max: Some("0".into()),
            ..dev(&dir)
        };
        assert_eq!(Settings::from_raw(off).unwrap().engine.vm.snapshots_max, 0);
        for bad in ["-1", "lots", "100000"] {
            let raw = RawSettings {
                vm_snapshots_max: Some(bad.into()),
                ..dev(&dir)
            };
            assert_eq!(
                Settings::from_raw(raw).unwrap_err().variable,
                "VM_SNAPSHOTS_MAX",
                "{bad}"
            );
        }
    }

    #[test]
    fn trusted_proxies_replace_trust_forwarded_for() {
        let dir = tmp();
        let none = Settings::from_raw(dev(&dir)).unwrap();
        assert!(none.trusted_proxies.is_empty());
        let listed = Settings::from_raw(RawSettings {
            trusted_proxies: Some("10.0.0.0/8, 192.0.2.7 ,fd00::/8".into()),
            ..dev(&dir)
        })
        .unwrap();
        assert!(listed.trusted_proxies.contains("10.9.8.7".parse().unwrap()));
        assert!(
            listed
                .trusted_proxies
                .contains("192.0.2.7".parse().unwrap())
        );
        assert!(
            !listed
                .trusted_proxies
                .contains("192.0.2.8".parse().unwrap())
        );
        // The old switch: off is harmless, on stops the server and names the replacement.
        let off = RawSettings {
            trust_forwarded_for: Some("false".into()),
            ..dev(&dir)
        };
        assert!(Settings::from_raw(off).unwrap().trusted_proxies.is_empty());
        let on = RawSettings {
            trust_forwarded_for: Some("true".into()),
            ..dev(&dir)
        };
        let err = Settings::from_raw(on).unwrap_err();
        assert_eq!(err.variable, "TRUST_FORWARDED_FOR");
        assert!(err.to_string().contains("TRUSTED_PROXIES"), "{err}");
        let bad = RawSettings {
            trusted_proxies: Some("10.0.0.0/40".into()),
            ..dev(&dir)
        };
        let err = Settings::from_raw(bad).unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/40"), "{err}");
    }

    #[test]
    fn quotas_default_on_and_zero_lifts_each() {
        let dir = tmp();
        let defaults = Settings::from_raw(dev(&dir)).unwrap();
        assert_eq!(
            defaults.quotas,
            Quotas {
                functions: Some(100),
                code_bytes: Some(1024 << 20),
                queued_executions: Some(1000),
            }
        );
        let off = RawSettings {
            quota_functions_per_user: Some("0".into()),
            quota_code_mb_per_user: Some("0".into()),
            quota_queued_executions_per_user: Some("0".into()),
            ..dev(&dir)
        };
        assert_eq!(
            Settings::from_raw(off).unwrap().quotas,
            Quotas {
                functions: None,
                code_bytes: None,
                queued_executions: None,
            }
        );
        let custom = RawSettings {
            quota_code_mb_per_user: Some("2".into()),
            ..dev(&dir)
        };
        assert_eq!(
            Settings::from_raw(custom).unwrap().quotas.code_bytes,
            Some(2 << 20)
        );
    }

    #[test]
    fn retention_defaults_to_thirty_days_and_zero_keeps_executions_forever() {
        let dir = tmp();
        let defaults = Settings::from_raw(dev(&dir)).unwrap();
        assert_eq!(defaults.retention.keep_days, Some(30));
        assert_eq!(
            defaults.retention.interval,
            std::time::Duration::from_secs(3600)
        );
        let off = RawSettings {
            execution_retention_days: Some("0".into()),
            ..dev(&dir)
        };
        assert_eq!(Settings::from_raw(off).unwrap().retention.keep_days, None);
    }

    #[test]
    fn code_collection_defaults_to_an_hour_and_zero_keeps_code_forever() {
        let dir = tmp();
        let defaults = Settings::from_raw(dev(&dir)).unwrap();
        assert_eq!(
            defaults.engine.code_gc_after,
            Some(std::time::Duration::from_secs(3600))
        );
        let off = RawSettings {
            engine_code_gc_after_s: Some("0".into()),
            ..dev(&dir)
        };
        assert_eq!(Settings::from_raw(off).unwrap().engine.code_gc_after, None);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let dir = tmp();
        let cases: Vec<(&str, RawSettings)> = vec![
            (
                "PORT",
                RawSettings {
                    port: Some("eighty".into()),
                    ..dev(&dir)
                },
            ),
            (
                "PORT",
                RawSettings {
                    port: Some("70000".into()),
                    ..dev(&dir)
                },
            ),
            (
                "DATABASE_URL",
                RawSettings {
                    database_url: Some("mysql://x".into()),
                    ..dev(&dir)
                },
            ),
            (
                "ENVIRONMENT",
                RawSettings {
                    environment: Some("staging".into()),
                    ..dev(&dir)
                },
            ),
            (
                "LOG_FORMAT",
                RawSettings {
                    log_format: Some("xml".into()),
                    ..dev(&dir)
                },
            ),
            (
                "LOG_LEVEL",
                RawSettings {
                    log_level: Some("[[[".into()),
                    ..dev(&dir)
                },
            ),
            (
                "ENCRYPTION_KEY",
                RawSettings {
                    encryption_key: Some("abc".into()),
                    ..dev(&dir)
                },
            ),
            (
                "TRUST_FORWARDED_FOR",
                RawSettings {
                    trust_forwarded_for: Some("maybe".into()),
                    ..dev(&dir)
                },
            ),
            (
                "METRICS_TOKEN",
                RawSettings {
                    metrics_token: Some("short".into()),
                    ..dev(&dir)
                },
            ),
            (
                "QUOTA_FUNCTIONS_PER_USER",
                RawSettings {
                    quota_functions_per_user: Some("-1".into()),
                    ..dev(&dir)
                },
            ),
            (
                "TRUSTED_PROXIES",
                RawSettings {
                    trusted_proxies: Some("10.0.0.1/8".into()),
                    ..dev(&dir)
                },
            ),
            (
                "QUOTA_CODE_MB_PER_USER",
                RawSettings {
                    quota_code_mb_per_user: Some("1GB".into()),
                    ..dev(&dir)
                },
            ),
            (
                "TRUSTED_PROXIES",
                RawSettings {
                    trusted_proxies: Some("proxy.internal".into()),
                    ..dev(&dir)
                },
            ),
            (
                "QUOTA_QUEUED_EXECUTIONS_PER_USER",
                RawSettings {
                    quota_queued_executions_per_user: Some("lots".into()),
                    ..dev(&dir)
                },
            ),
            (
                "EXECUTION_RETENTION_DAYS",
                RawSettings {
                    execution_retention_days: Some("100000".into()),
                    ..dev(&dir)
                },
            ),
            (
                "EXECUTION_RETENTION_INTERVAL_S",
                RawSettings {
                    execution_retention_interval_s: Some("0".into()),
                    ..dev(&dir)
                },
            ),
            (
                "ENGINE_CODE_GC_AFTER_S",
                RawSettings {
                    engine_code_gc_after_s: Some("soon".into()),
                    ..dev(&dir)
                },
            ),
        ];
        for (variable, raw) in cases {
            let err = Settings::from_raw(raw).unwrap_err();
            assert_eq!(err.variable, variable, "{err}");
            assert!(err.to_string().contains(variable));
        }
    }
}
