//! The value parsers the settings declare: each turns one variable's text into its type, or says
//! what is wrong with it. Their messages follow "invalid configuration: VARIABLE: " (see
//! [`super::ConfigError::from_clap`]), so they say what the value is, not which setting it is for.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::{EngineBackend, Environment, LogFormat, Secret};

/// What a parser returns: the value, or the message for the operator.
type Parsed<T> = Result<T, String>;

/// A parser as clap takes one: a cloneable, shareable function of the text.
pub(super) trait Parser<T>: Fn(&str) -> Parsed<T> + Clone + Send + Sync + 'static {}
impl<T, F: Fn(&str) -> Parsed<T> + Clone + Send + Sync + 'static> Parser<T> for F {}

/// A number within `min..=max` (surrounding spaces allowed): each setting's range, written once.
/// Each use names its type (`number::<u32>`): clap checks it against the field's only when a value
/// is parsed, which the tests do for every option (defaults, and a value for those without one).
pub(super) fn number<T>(min: T, max: T) -> impl Parser<T>
where
    T: FromStr + PartialOrd + fmt::Display + Copy + Send + Sync + 'static,
{
    move |raw: &str| {
        let value: T = raw
            .trim()
            .parse()
            .map_err(|_| format!("{raw:?} is not a number"))?;
        if value < min || value > max {
            return Err(format!("{value} is outside {min}..={max}"));
        }
        Ok(value)
    }
}

/// For the settings declared as [`super::Blankable`]: an empty (or blank) value leaves the setting
/// unset, as an absent variable does, so that a `.env` line such as `FIRECRACKER_BIN=` means "the
/// default" rather than an error.
pub(super) fn unless_blank<T>(parse: impl Parser<T>) -> impl Parser<Option<T>> {
    move |raw: &str| {
        if raw.trim().is_empty() {
            Ok(None)
        } else {
            parse(raw).map(Some)
        }
    }
}

/// `true`/`false` and the usual spellings; empty is false, as for a switch left unset.
pub(super) fn boolean(raw: &str) -> Parsed<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        other => Err(format!("{other:?} is not true or false")),
    }
}

/// A path taken as written (clap's own path parser refuses an empty one).
pub(super) fn path(raw: &str) -> Parsed<PathBuf> {
    Ok(PathBuf::from(raw))
}

pub(super) fn ip_address(raw: &str) -> Parsed<IpAddr> {
    raw.trim()
        .parse()
        .map_err(|_| "is not an IP address".to_string())
}

pub(super) fn environment(raw: &str) -> Parsed<Environment> {
    match raw.trim() {
        "" | "development" => Ok(Environment::Development),
        "production" => Ok(Environment::Production),
        other => Err(format!("{other:?} is not development or production")),
    }
}

pub(super) fn log_format(raw: &str) -> Parsed<LogFormat> {
    match raw.trim() {
        "json" => Ok(LogFormat::Json),
        "pretty" => Ok(LogFormat::Pretty),
        other => Err(format!("{other:?} is not json or pretty")),
    }
}

/// A tracing filter, checked here so that a typo stops the server rather than silencing its log.
pub(super) fn log_level(raw: &str) -> Parsed<String> {
    tracing_subscriber::EnvFilter::try_new(raw)
        .map(|_| raw.to_string())
        .map_err(|e| format!("{raw:?} is not a tracing filter: {e}"))
}

pub(super) fn database_url(raw: &str) -> Parsed<Secret<String>> {
    let known = ["sqlite:", "postgres://", "postgresql://"];
    if known.iter().any(|prefix| raw.starts_with(prefix)) {
        Ok(Secret::new(raw.to_string()))
    } else {
        Err("must start with sqlite:// or postgres://".into())
    }
}

pub(super) const MIN_JWT_SECRET_BYTES: usize = 32;

pub(super) fn jwt_secret(raw: &str) -> Parsed<Secret<Vec<u8>>> {
    if raw.len() < MIN_JWT_SECRET_BYTES {
        return Err(format!("must be at least {MIN_JWT_SECRET_BYTES} bytes"));
    }
    Ok(Secret::new(raw.as_bytes().to_vec()))
}

pub(super) fn encryption_key(raw: &str) -> Parsed<Secret<[u8; 32]>> {
    let bytes = STANDARD
        .decode(raw.trim())
        .map_err(|_| "is not base64".to_string())?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "must be base64 of exactly 32 bytes".to_string())?;
    Ok(Secret::new(key))
}

const MIN_METRICS_TOKEN_CHARS: usize = 16;

pub(super) fn metrics_token(raw: &str) -> Parsed<Secret<String>> {
    let token = raw.trim();
    if token.chars().count() < MIN_METRICS_TOKEN_CHARS {
        return Err(format!(
            "must be at least {MIN_METRICS_TOKEN_CHARS} characters (e.g. `openssl rand -hex 32`)"
        ));
    }
    Ok(Secret::new(token.to_string()))
}

pub(super) fn trusted_proxies(raw: &str) -> Parsed<voltrun_api::TrustedProxies> {
    voltrun_api::TrustedProxies::parse(raw)
}

pub(super) fn engine_backend(raw: &str) -> Parsed<EngineBackend> {
    match raw.trim() {
        "" | "auto" => Ok(EngineBackend::Auto),
        "firecracker" => Ok(EngineBackend::Firecracker),
        "namespace" => Ok(EngineBackend::Namespace),
        "emulated" => Ok(EngineBackend::Emulated),
        "none" => Ok(EngineBackend::None),
        other => Err(format!(
            "{other:?} is not auto, firecracker, namespace, emulated or none"
        )),
    }
}
