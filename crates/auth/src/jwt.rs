//! Access tokens: short-lived HS256 JWTs. Only HS256 is accepted (so `alg: none` and algorithm
//! confusion fail), and signature, expiry, issuer and audience are all checked. Each carries the id of
//! the session (refresh-token family) it was issued for, so that revoking the session ends it too,
//! and it never outlives that session.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const ISSUER: &str = "voltrun";
pub const AUDIENCE: &str = "voltrun-api";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub sub: Uuid,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    /// The session this token belongs to.
    pub sid: Uuid,
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("token expired")]
    Expired,
    #[error("token invalid")]
    Invalid,
    #[error("token could not be signed: {0}")]
    Signing(String),
}

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_s: i64,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("ttl_s", &self.ttl_s)
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    pub fn new(secret: &[u8], ttl_s: i64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_s,
        }
    }

    pub fn ttl_s(&self) -> i64 {
        self.ttl_s
    }

    /// A token for `user_id` in session `session_id`, valid for the TTL or until the session ends
    /// (`session_ends_unix`), whichever comes first. Returns the token and its lifetime in seconds.
    pub fn issue(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        now_unix: i64,
        session_ends_unix: i64,
    ) -> Result<(String, i64), JwtError> {
        let exp = (now_unix + self.ttl_s).min(session_ends_unix);
        let claims = AccessClaims {
            sub: user_id,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now_unix,
            exp,
            jti: crate::secrets::random_token(12),
            sid: session_id,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map(|token| (token, exp - now_unix))
            .map_err(|e| JwtError::Signing(e.to_string()))
    }

    pub fn verify(&self, token: &str) -> Result<AccessClaims, JwtError> {
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => JwtError::Expired,
                _ => JwtError::Invalid,
            })
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn issue(keys: &JwtKeys, at: i64) -> String {
        keys.issue(Uuid::new_v4(), Uuid::new_v4(), at, i64::MAX)
            .unwrap()
            .0
    }

    #[test]
    fn round_trip() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef", 900);
        let (id, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, lifetime) = keys.issue(id, session, now(), i64::MAX).unwrap();
        assert_eq!(lifetime, 900);
        let claims = keys.verify(&token).unwrap();
        assert_eq!((claims.sub, claims.sid), (id, session));
    }

    #[test]
    fn a_token_does_not_outlive_its_session() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef", 900);
        let now = now();
        let (token, lifetime) = keys
            .issue(Uuid::new_v4(), Uuid::new_v4(), now, now + 60)
            .unwrap();
        assert_eq!(lifetime, 60);
        assert_eq!(keys.verify(&token).unwrap().exp, now + 60);
    }

    #[test]
    fn expired_and_foreign_tokens_fail() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef", 900);
        let old = issue(&keys, now() - 3600);
        assert!(matches!(keys.verify(&old), Err(JwtError::Expired)));
        let other = JwtKeys::new(b"another-secret-another-secret-xx", 900);
        assert!(matches!(
            keys.verify(&issue(&other, now())),
            Err(JwtError::Invalid)
        ));
    }

    #[test]
    fn alg_none_is_refused() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef", 900);
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(
            format!(
                r#"{{"sub":"{}","iss":"voltrun","aud":"voltrun-api","iat":{},"exp":{},"jti":"x"}}"#,
                Uuid::new_v4(),
                now(),
                now() + 600
            )
            .as_bytes(),
        );
        assert!(keys.verify(&format!("{header}.{body}.")).is_err());
    }
}
