//! Users and the rules for their credentials' plain-text parts: email addresses and passwords.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{ValidationError, is_forbidden_char};

#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: Option<String>,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}

/// An email address, trimmed and lower-cased so that one mailbox maps to one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let email = raw.trim().to_lowercase();
        let err = |m: &str| Err(ValidationError::new("email", m));
        if email.is_empty() {
            return err("is required");
        }
        if email.len() > 254 {
            return err("must be at most 254 bytes");
        }
        if email
            .chars()
            .any(|c| c.is_whitespace() || is_forbidden_char(c))
        {
            return err("must not contain spaces or control characters");
        }
        let Some((local, domain)) = email.rsplit_once('@') else {
            return err("must look like name@example.com");
        };
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return err("must look like name@example.com");
        }
        if domain.len() < 3
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
        {
            return err("must have a domain such as example.com");
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password that meets the policy. The policy follows NIST SP 800-63B: length matters, composition
/// rules do not; the upper bound keeps hashing cost bounded.
#[derive(Clone)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Password {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_BYTES: usize = 256;

    pub fn parse(raw: String, email: &Email) -> Result<Self, ValidationError> {
        let err = |m: String| Err(ValidationError::new("password", m));
        if raw.chars().count() < Self::MIN_CHARS {
            return err(format!("must be at least {} characters", Self::MIN_CHARS));
        }
        if raw.len() > Self::MAX_BYTES {
            return err(format!("must be at most {} bytes", Self::MAX_BYTES));
        }
        if raw.trim().is_empty() {
            return err("must not be only spaces".into());
        }
        if raw.chars().any(|c| c.is_control()) {
            return err("must not contain control characters".into());
        }
        if raw.to_lowercase() == email.as_str() {
            return err("must not be your email address".into());
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// An optional display name.
pub fn parse_display_name(raw: Option<String>) -> Result<Option<String>, ValidationError> {
    let Some(raw) = raw else { return Ok(None) };
    let name = raw.trim().to_string();
    if name.is_empty() {
        return Ok(None);
    }
    if name.chars().count() > 100 {
        return Err(ValidationError::new(
            "name",
            "must be at most 100 characters",
        ));
    }
    if name.chars().any(is_forbidden_char) {
        return Err(ValidationError::new(
            "name",
            "must not contain control characters",
        ));
    }
    Ok(Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_normalised() {
        assert_eq!(
            Email::parse("  Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
    }

    #[test]
    fn bad_emails_are_refused() {
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "ada@.com",
            "ada@example.com\0",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn password_policy() {
        let email = Email::parse("ada@example.com").unwrap();
        assert!(Password::parse("short".into(), &email).is_err());
        assert!(Password::parse("        ".into(), &email).is_err());
        assert!(Password::parse("ADA@example.com".into(), &email).is_err());
        assert!(Password::parse("x".repeat(257), &email).is_err());
        assert!(Password::parse("correct horse battery".into(), &email).is_ok());
    }
}
