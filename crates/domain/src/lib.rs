//! VoltRun's domain: the records the platform keeps (users, functions, executions, API keys) and the
//! newtypes that parse untrusted input into values that are valid by construction. Nothing here does
//! I/O; storage, auth and the API all speak these types.

pub mod execution;
pub mod function;
pub mod layer;
pub mod user;

use std::fmt;

/// Input that failed a domain rule, naming the field so the API can answer 422 with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl fmt::Display) -> Self {
        Self {
            field,
            message: message.to_string(),
        }
    }
}

/// True for characters that have no business in names, descriptions or emails: controls (including
/// NUL, which PostgreSQL text refuses) and the Unicode bidi overrides used to disguise text.
pub fn is_forbidden_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The current time at the precision both databases keep (microseconds), so that a time read back
/// equals the time written.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    let t = chrono::Utc::now();
    chrono::DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}
