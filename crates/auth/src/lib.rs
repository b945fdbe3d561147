//! VoltRun's credentials: password hashing (Argon2id), access tokens (HS256 JWTs), opaque secrets
//! (refresh tokens, API keys; stored only as hashes), sealing of secrets at rest (AES-256-GCM), and the
//! in-memory rate limiters that slow brute force. Pure logic; the API layer decides when to call it.

pub mod jwt;
pub mod password;
pub mod rate_limit;
pub mod secret_box;
pub mod secrets;

pub use jwt::{AccessClaims, JwtError, JwtKeys};
pub use password::PasswordHasher;
pub use rate_limit::{RateLimiter, RetryAfter};
pub use secret_box::{SecretBox, SecretBoxError};
