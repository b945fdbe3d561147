//! Opaque secrets: refresh tokens and API keys. They are 256-bit random strings, so a fast hash
//! (SHA-256) is enough to store them: there is nothing to brute-force, unlike a password.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// API keys start with this, so they are recognisable in config files and by secret scanners.
pub const API_KEY_PREFIX: &str = "vr_";
/// How many characters of a key the listing shows (the `vr_` prefix and 8 more).
const SHOWN_PREFIX_CHARS: usize = API_KEY_PREFIX.len() + 8;

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// A URL-safe random string of `bytes` random bytes.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new API key: the full key (shown once) and the prefix kept for display.
pub fn new_api_key() -> (String, String) {
    let key = format!("{API_KEY_PREFIX}{}", random_token(32));
    let shown = key[..SHOWN_PREFIX_CHARS].to_string();
    (key, shown)
}

pub fn looks_like_api_key(token: &str) -> bool {
    token.starts_with(API_KEY_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_long_and_distinct() {
        let (a, prefix) = new_api_key();
        let (b, _) = new_api_key();
        assert!(a.starts_with("vr_") && a.len() >= 3 + 43);
        assert!(a.starts_with(&prefix));
        assert_ne!(a, b);
        assert_eq!(sha256_hex(&a).len(), 64);
    }
}
