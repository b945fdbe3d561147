//! Accounts and tokens: the signing and encryption secrets, token and session lifetimes, the
//! brute-force limiters, password hashing's share of the CPU, and which proxies' `X-Forwarded-For`
//! to believe (the limiters key on the client address it gives).

use super::parse::{boolean, encryption_key, jwt_secret, number, trusted_proxies};
use super::{ConfigError, Environment, Secret, bad};

#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// Secret for signing access tokens, at least 32 bytes (required in production) [default: in
    /// development, one generated and kept in DATA_DIR/jwt_secret]
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, value_parser = jwt_secret)]
    pub jwt_secret: Option<Secret<Vec<u8>>>,
    /// Base64 of 32 bytes: the key that encrypts function environment variables (required in
    /// production) [default: in development, one generated and kept in DATA_DIR/encryption_key]
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true, value_parser = encryption_key)]
    pub encryption_key: Option<Secret<[u8; 32]>>,
    /// Lifetime of access tokens in seconds
    #[arg(long, env = "ACCESS_TOKEN_TTL_S", default_value_t = 900, value_parser = number::<i64>(30, 86_400))]
    pub access_token_ttl_s: i64,
    /// Lifetime of refresh tokens in seconds
    #[arg(
        long,
        env = "REFRESH_TOKEN_TTL_S",
        default_value_t = 30 * 86_400,
        value_parser = number::<i64>(60, 365 * 86_400)
    )]
    pub refresh_token_ttl_s: i64,
    /// A session's absolute lifetime in seconds: refresh tokens stop rotating this long after the
    /// login that started it
    // From 1 s, so that the expiry can be tested end to end.
    #[arg(
        long,
        env = "SESSION_MAX_AGE_S",
        default_value_t = 30 * 86_400,
        value_parser = number::<i64>(1, 10 * 365 * 86_400)
    )]
    pub session_max_age_s: i64,
    /// Login and register attempts allowed per client address per minute
    #[arg(
        long = "auth-attempts-per-minute",
        env = "AUTH_ATTEMPTS_PER_MINUTE",
        default_value_t = 30,
        value_parser = number::<u32>(1, 1_000_000)
    )]
    pub attempts_per_minute: u32,
    /// Failed logins allowed per account from one client address per 15 minutes
    #[arg(
        long,
        env = "LOGIN_FAILURES_PER_ACCOUNT",
        default_value_t = 10,
        value_parser = number::<u32>(1, 1_000_000)
    )]
    pub login_failures_per_account: u32,
    /// Proxies in front of this server, as addresses or CIDR ranges separated by commas: from them,
    /// the client address is the rightmost X-Forwarded-For hop that is not one of them [default:
    /// none; X-Forwarded-For is ignored]
    #[arg(
        long,
        env = "TRUSTED_PROXIES",
        default_value = "",
        hide_default_value = true,
        value_parser = trusted_proxies
    )]
    pub trusted_proxies: voltrun_api::TrustedProxies,
    /// Addresses and accounts each brute-force limiter tracks at most; past it the least recently
    /// seen is forgotten
    #[arg(
        long = "auth-limiter-max-keys",
        env = "AUTH_LIMITER_MAX_KEYS",
        default_value_t = 100_000,
        value_parser = number::<usize>(16, 100_000_000)
    )]
    pub limiter_max_keys: usize,
    /// Password hashes (register, login) computed at once [default: this host's CPU count]
    #[arg(
        long = "auth-hashing-concurrency",
        env = "AUTH_HASHING_CONCURRENCY",
        value_parser = number::<usize>(1, 4096)
    )]
    pub hashing_concurrency: Option<usize>,
    /// Milliseconds a register or login waits for a password-hashing turn before it is answered 503
    #[arg(
        long = "auth-hashing-queue-timeout-ms",
        env = "AUTH_HASHING_QUEUE_TIMEOUT_MS",
        default_value_t = 5000,
        value_parser = number::<u64>(0, 60_000)
    )]
    pub hashing_queue_timeout_ms: u64,
    /// Replaced by TRUSTED_PROXIES; true is refused, with a message saying so.
    #[arg(
        long,
        env = "TRUST_FORWARDED_FOR",
        hide = true,
        action = clap::ArgAction::Set,
        default_value = "false",
        value_parser = boolean
    )]
    pub trust_forwarded_for: bool,
}

impl AuthArgs {
    /// What no single option can check: the secrets production requires, and the retired switch.
    pub(super) fn check(&self, environment: Environment) -> Result<(), ConfigError> {
        // TRUST_FORWARDED_FOR=true believed the first X-Forwarded-For entry from any sender, which
        // the client writes: it stops the server rather than being mapped to something that either
        // keeps that hole or silently changes who is rate-limited.
        if self.trust_forwarded_for {
            return Err(bad(
                "TRUST_FORWARDED_FOR",
                "is replaced by TRUSTED_PROXIES: list the addresses or CIDR ranges of the proxies \
                 in front of this server (e.g. TRUSTED_PROXIES=10.0.0.0/8), and remove \
                 TRUST_FORWARDED_FOR",
            ));
        }
        if environment == Environment::Production {
            if self.jwt_secret.is_none() {
                return Err(bad(
                    "JWT_SECRET",
                    "is required in production (at least 32 random bytes)",
                ));
            }
            if self.encryption_key.is_none() {
                return Err(bad(
                    "ENCRYPTION_KEY",
                    "is required in production (base64 of 32 random bytes)",
                ));
            }
        }
        Ok(())
    }
}
