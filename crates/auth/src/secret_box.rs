//! Sealing secrets at rest (function environment variables) with AES-256-GCM under a server key.
//! Each value gets a fresh 96-bit nonce, stored in front of the ciphertext.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SecretBoxError {
    #[error("ciphertext is damaged or was sealed with another key")]
    Open,
    #[error("sealing failed")]
    Seal,
    /// The value opened but is not the JSON it was sealed as.
    #[error("the opened value is not what was sealed: {0}")]
    Decode(#[from] serde_json::Error),
}

#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox")
    }
}

impl SecretBox {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, SecretBoxError> {
        let nonce_bytes = crate::secrets::random_bytes::<NONCE_LEN>();
        let mut out = nonce_bytes.to_vec();
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce_bytes), plaintext)
            .map_err(|_| SecretBoxError::Seal)?;
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Seals `value` as JSON (a function's environment, as the API stores it).
    pub fn seal_json<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>, SecretBoxError> {
        self.seal(&serde_json::to_vec(value)?)
    }

    /// Opens what [`Self::seal_json`] sealed.
    pub fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        sealed: &[u8],
    ) -> Result<T, SecretBoxError> {
        Ok(serde_json::from_slice(&self.open(sealed)?)?)
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SecretBoxError> {
        if sealed.len() < NONCE_LEN {
            return Err(SecretBoxError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| SecretBoxError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open() {
        let sb = SecretBox::new(&[7u8; 32]);
        let sealed = sb.seal(b"API_TOKEN=abc").unwrap();
        assert!(!sealed.windows(3).any(|w| w == b"abc"));
        assert_eq!(sb.open(&sealed).unwrap(), b"API_TOKEN=abc");
        assert!(SecretBox::new(&[8u8; 32]).open(&sealed).is_err());
        assert!(sb.open(&[1, 2, 3]).is_err());
    }
}
