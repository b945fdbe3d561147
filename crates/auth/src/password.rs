//! Password hashing with Argon2id (the argon2 crate's defaults, OWASP's recommended parameters).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// Hashes and verifies passwords. Holds a hash of a random password so that a login for an unknown
/// email costs the same as one for a known email: timing must not reveal which accounts exist.
#[derive(Clone)]
pub struct PasswordHasher {
    dummy_hash: String,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHasher")
    }
}

impl PasswordHasher {
    pub fn new() -> Result<Self, HashError> {
        let dummy_hash = hash(&crate::secrets::random_token(24))?;
        Ok(Self { dummy_hash })
    }

    /// CPU-heavy (tens of ms): call from a blocking thread.
    pub fn hash(&self, password: &str) -> Result<String, HashError> {
        hash(password)
    }

    /// Verifies `password` against `stored`, or against the dummy hash when there is no account, so
    /// both paths do the same work. CPU-heavy: call from a blocking thread.
    pub fn verify(&self, password: &str, stored: Option<&str>) -> bool {
        let target = stored.unwrap_or(&self.dummy_hash);
        let ok = PasswordHash::new(target)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && stored.is_some()
    }
}

fn hash(password: &str) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(&crate::secrets::random_bytes::<16>())
        .map_err(|e| HashError(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let hasher = PasswordHasher::new().unwrap();
        let stored = hasher.hash("correct horse battery").unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(hasher.verify("correct horse battery", Some(&stored)));
        assert!(!hasher.verify("wrong horse battery", Some(&stored)));
        assert!(!hasher.verify("correct horse battery", None));
        assert!(!hasher.verify("x", Some("not a hash")));
    }
}
