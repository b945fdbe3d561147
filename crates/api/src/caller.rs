//! Who is calling: extractors that authenticate a request by access token (JWT) or API key and check
//! what the credential may do. Three levels, from strictest:
//! - [`SessionUser`]: an access token only (auth and key-management routes);
//! - [`FullAccess`]: an access token or a `full` API key (everything else that changes or reads config);
//! - [`ExecuteAccess`]: an access token or any API key (invoking functions, reading executions).
//!
//! [`Operator`] is apart from these: the operator's `METRICS_TOKEN`, for `/metrics` and the detail of
//! `/health`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;
use uuid::Uuid;
use voltrun_auth::JwtError;
use voltrun_auth::secrets::{looks_like_api_key, sha256_hex};

use crate::SharedState;
use crate::error::ApiError;

pub const SCOPE_FULL: &str = "full";
pub const SCOPE_EXECUTE: &str = "execute";
pub const SCOPES: &[&str] = &[SCOPE_FULL, SCOPE_EXECUTE];

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    AccessToken,
    ApiKey { id: Uuid, scopes: Vec<String> },
}

#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: Uuid,
    pub credential: Credential,
}

/// `last_used_at` is written at most once a minute per key, so a busy key does not turn every read
/// into a write.
#[derive(Debug, Default)]
pub struct KeyTouches(Mutex<HashMap<Uuid, Instant>>);

const TOUCH_EVERY: Duration = Duration::from_secs(60);

impl KeyTouches {
    fn due(&self, id: Uuid) -> bool {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        match seen.get(&id) {
            Some(last) if now.duration_since(*last) < TOUCH_EVERY => false,
            _ => {
                seen.insert(id, now);
                true
            }
        }
    }
}

fn presented_secret(parts: &Parts) -> Result<Option<String>, ApiError> {
    if let Some(value) = parts.headers.get("x-api-key") {
        let key = value
            .to_str()
            .map_err(|_| ApiError::Unauthorized("X-API-Key is not valid text".into()))?;
        return Ok(Some(key.trim().to_string()));
    }
    bearer_token(parts)
}

fn bearer_token(parts: &Parts) -> Result<Option<String>, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("Authorization is not valid text".into()))?;
    let Some((scheme, token)) = value.split_once(' ') else {
        return Err(ApiError::Unauthorized(
            "use Authorization: Bearer <token>".into(),
        ));
    };
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized(
            "use Authorization: Bearer <token>".into(),
        ));
    }
    Ok(Some(token.trim().to_string()))
}

async fn authenticate(parts: &Parts, state: &SharedState) -> Result<Caller, ApiError> {
    let secret = presented_secret(parts)?.ok_or_else(|| {
        ApiError::Unauthorized(
            "authentication required: send Authorization: Bearer <token> or X-API-Key".into(),
        )
    })?;
    if looks_like_api_key(&secret) {
        let key = state
            .store
            .api_key_by_hash(&sha256_hex(&secret))
            .await?
            .ok_or_else(|| ApiError::Unauthorized("API key is not valid".into()))?;
        if state.api_key_touches.due(key.id) {
            state
                .store
                .touch_api_key(key.id, voltrun_storage::now())
                .await?;
        }
        return Ok(Caller {
            user_id: key.user_id,
            credential: Credential::ApiKey {
                id: key.id,
                scopes: key.scopes,
            },
        });
    }
    let claims = state.jwt.verify(&secret).map_err(|e| match e {
        JwtError::Expired => ApiError::Unauthorized("access token expired; refresh it".into()),
        JwtError::Invalid | JwtError::Signing(_) => {
            ApiError::Unauthorized("access token is not valid".into())
        }
    })?;
    // A signed token outlives a logout unless its session is checked: logging out, or a refresh
    // token presented twice, revokes the session and with it every access token issued for it.
    if !state.sessions.is_fresh(claims.sid) {
        if !state
            .store
            .session_is_active(claims.sid, voltrun_storage::now())
            .await?
        {
            return Err(ApiError::Unauthorized(
                "the session has ended (logged out, revoked or expired); log in again".into(),
            ));
        }
        state.sessions.found_active(claims.sid);
    }
    Ok(Caller {
        user_id: claims.sub,
        credential: Credential::AccessToken,
    })
}

/// An access token holder (never an API key).
#[derive(Debug, Clone, Copy)]
pub struct SessionUser(pub Uuid);

impl FromRequestParts<SharedState> for SessionUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let caller = authenticate(parts, state).await?;
        match caller.credential {
            Credential::AccessToken => Ok(Self(caller.user_id)),
            Credential::ApiKey { .. } => Err(ApiError::Forbidden {
                code: "api_key_not_allowed",
                message: "API keys cannot be used here; log in and use an access token".into(),
            }),
        }
    }
}

/// An access token, or an API key with the `full` scope.
#[derive(Debug, Clone, Copy)]
pub struct FullAccess(pub Uuid);

impl FromRequestParts<SharedState> for FullAccess {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let caller = authenticate(parts, state).await?;
        match &caller.credential {
            Credential::AccessToken => Ok(Self(caller.user_id)),
            Credential::ApiKey { scopes, .. } if scopes.iter().any(|s| s == SCOPE_FULL) => {
                Ok(Self(caller.user_id))
            }
            Credential::ApiKey { .. } => Err(ApiError::Forbidden {
                code: "insufficient_scope",
                message:
                    "this API key may only invoke functions and read executions (scope: execute)"
                        .into(),
            }),
        }
    }
}

/// Any valid credential: an access token or an API key of any scope.
#[derive(Debug, Clone, Copy)]
pub struct ExecuteAccess(pub Uuid);

impl FromRequestParts<SharedState> for ExecuteAccess {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, state)
            .await
            .map(|caller| Self(caller.user_id))
    }
}

/// Whether the caller is the operator, proven by presenting `METRICS_TOKEN` as a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// No `METRICS_TOKEN` is configured: `/metrics` is open, and `/health`'s detail is shown to no one.
    NoTokenConfigured,
    /// A token is configured and the request presented none.
    Anonymous,
    Proven,
}

/// The SHA-256 of the metrics token, which is what the server keeps.
pub fn metrics_token_digest(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

impl FromRequestParts<SharedState> for Operator {
    type Rejection = ApiError;

    /// A wrong token is a 401 rather than the anonymous view, so a misconfigured scraper finds out.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let Some(expected) = &state.metrics_token_digest else {
            return Ok(Self::NoTokenConfigured);
        };
        let Some(presented) = bearer_token(parts)? else {
            return Ok(Self::Anonymous);
        };
        // Digests of equal length compared in constant time: the time taken says nothing about how
        // much of the token was right, nor how long it is.
        let matches: bool = metrics_token_digest(&presented).ct_eq(expected).into();
        if matches {
            Ok(Self::Proven)
        } else {
            Err(ApiError::Unauthorized(
                "the metrics token is not valid".into(),
            ))
        }
    }
}
