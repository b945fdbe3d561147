//! `/api/auth`: register, login, refresh (rotating, with reuse detection), logout, me.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use voltrun_auth::secrets::{random_token, sha256_hex};
use voltrun_domain::user::{Email, Password, User, parse_display_name};
use voltrun_storage::{NewSession, NextRefreshToken, RefreshOutcome};

use crate::SharedState;
use crate::caller::SessionUser;
use crate::client_address::ClientAddress;
use crate::error::{ApiError, ApiResult};
use crate::error_docs::{
    ApiKeyNotAllowed, AuthUnavailable, BadRequest, PayloadTooLarge, RateLimited, RequestTimeout,
    Unavailable, UnavailableForBodies, UnsupportedMediaType, ValidationFailed,
};
use crate::extract::ApiJson;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "ada@example.com", "password": "correct horse battery", "name": "Ada"}))]
pub struct RegisterRequest {
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// 8 or more characters (at most 256 bytes), not the email address.
    #[schema(min_length = 8, max_length = 256)]
    pub password: String,
    #[schema(max_length = 100)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "ada@example.com", "password": "correct horse battery"}))]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// As issued: 43 characters of URL-safe base64.
    #[schema(pattern = "^[A-Za-z0-9_-]{43}$")]
    pub refresh_token: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserResponse {
    pub id: Uuid,
    pub email: String,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<User> for UserResponse {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            email: u.email,
            name: u.name,
            created_at: u.created_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    /// Single use: refreshing returns a new one and spends this one.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until `access_token` expires.
    pub expires_in: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuthResponse {
    pub user: UserResponse,
    #[serde(flatten)]
    pub tokens: TokenPair,
}

/// A token pair for `user_id` in session `session_id`, whose refresh token is `refresh_token`.
fn token_pair(
    state: &SharedState,
    user_id: Uuid,
    session_id: Uuid,
    session_expires_at: DateTime<Utc>,
    refresh_token: String,
    now: DateTime<Utc>,
) -> ApiResult<TokenPair> {
    let (access_token, expires_in) = state
        .jwt
        .issue(
            user_id,
            session_id,
            now.timestamp(),
            session_expires_at.timestamp(),
        )
        .map_err(ApiError::internal)?;
    Ok(TokenPair {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in,
    })
}

/// Starts a new session (a refresh-token family) for a fresh login.
async fn new_session(state: &SharedState, user_id: Uuid) -> ApiResult<TokenPair> {
    let now = voltrun_storage::now();
    let refresh_token = random_token(32);
    let session = NewSession {
        id: Uuid::now_v7(),
        user_id,
        created_at: now,
        expires_at: now + Duration::seconds(state.session_max_age_s),
    };
    state
        .store
        .create_session(
            &session,
            &NextRefreshToken {
                id: Uuid::now_v7(),
                token_hash: sha256_hex(&refresh_token),
                expires_at: now + Duration::seconds(state.refresh_token_ttl_s),
            },
        )
        .await?;
    token_pair(
        state,
        user_id,
        session.id,
        session.expires_at,
        refresh_token,
        now,
    )
}

fn limit_address(state: &SharedState, address: &str) -> ApiResult<()> {
    state
        .address_limiter
        .hit(address)
        .map_err(ApiError::RateLimited)
}

/// Register a new user.
#[utoipa::path(post, path = "/api/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = AuthResponse), (status = 400, response = BadRequest),
        (status = 408, response = RequestTimeout),
        (status = 409, description = "An account with this email exists (`conflict`)", body = crate::ErrorBody),
        (status = 413, response = PayloadTooLarge), (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed), (status = 429, response = RateLimited),
        (status = 503, response = AuthUnavailable)))]
pub async fn register(
    State(state): State<SharedState>,
    ClientAddress(address): ClientAddress,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<AuthResponse>)> {
    limit_address(&state, &address)?;
    let email = Email::parse(&req.email)?;
    let password = Password::parse(req.password, &email)?;
    let name = parse_display_name(req.name)?;
    let hasher = state.hasher.clone();
    let password_hash = state
        .password_work
        .run(move || hasher.hash(password.expose()))
        .await?
        .map_err(ApiError::internal)?;
    let user = User {
        id: Uuid::now_v7(),
        email: email.as_str().to_string(),
        name,
        password_hash,
        created_at: voltrun_storage::now(),
    };
    state.store.create_user(&user).await.map_err(|e| match e {
        voltrun_storage::StoreError::Conflict(_) => {
            ApiError::Conflict("an account with this email exists".into())
        }
        other => other.into(),
    })?;
    tracing::info!(user_id = %user.id, "user registered");
    let tokens = new_session(&state, user.id).await?;
    Ok((
        StatusCode::CREATED,
        Json(AuthResponse {
            user: user.into(),
            tokens,
        }),
    ))
}

/// Log in with email and password.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = AuthResponse), (status = 400, response = BadRequest),
        (status = 401, description = "The email or the password is wrong (`invalid_credentials`)", body = crate::ErrorBody),
        (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType), (status = 422, response = ValidationFailed),
        (status = 429, response = RateLimited), (status = 503, response = AuthUnavailable)))]
pub async fn login(
    State(state): State<SharedState>,
    ClientAddress(address): ClientAddress,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<AuthResponse>> {
    limit_address(&state, &address)?;
    // An unparseable email cannot belong to an account: same answer as a wrong password.
    let email = Email::parse(&req.email)
        .map(|e| e.as_str().to_string())
        .unwrap_or_default();
    // Failures lock an account for the address they come from, not for everyone: were the account
    // locked everywhere, anyone could keep its owner out by guessing wrong on purpose. The
    // per-address limit above bounds how many accounts one address can try.
    let account_key = format!("{address} {email}");
    // Every attempt is counted before its password is checked, in the same step that refuses it
    // past the limit: were it counted only once it failed, concurrent guesses would all pass the
    // check while the first of them was still being verified. A success resets the count.
    state
        .login_failures
        .hit(&account_key)
        .map_err(ApiError::RateLimited)?;
    let user = if email.is_empty() {
        None
    } else {
        state.store.user_by_email(&email).await?
    };
    let hasher = state.hasher.clone();
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    // The same Argon2 work runs whether or not the account exists.
    let verified = state
        .password_work
        .run(move || hasher.verify(&req.password, stored.as_deref()))
        .await;
    let ok = match verified {
        Ok(ok) => ok,
        Err(busy) => {
            // Not evaluated, so not a failure: refused attempts must not lock out their sender.
            state.login_failures.refund(&account_key);
            return Err(busy);
        }
    };
    let Some(user) = user.filter(|_| ok) else {
        return Err(ApiError::InvalidCredentials);
    };
    state.login_failures.reset(&account_key);
    let tokens = new_session(&state, user.id).await?;
    Ok(Json(AuthResponse {
        user: user.into(),
        tokens,
    }))
}

fn parse_refresh_token(raw: &str) -> ApiResult<String> {
    let ok = raw.len() == 43
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(sha256_hex(raw))
    } else {
        Err(ApiError::Unauthorized("refresh token is not valid".into()))
    }
}

/// Exchange a refresh token for a new token pair. Each refresh token works once; presenting a spent
/// one revokes its session (every refresh and access token of it), as a stolen token may have been
/// used. A session rotates until its maximum age after login, then its owner logs in again.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = AuthResponse), (status = 400, response = BadRequest),
        (status = 401, description = "The refresh token is not valid, was already used (its session is now revoked), or its session ended (`unauthorized`)", body = crate::ErrorBody),
        (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType), (status = 422, response = ValidationFailed),
        (status = 503, response = UnavailableForBodies)))]
pub async fn refresh(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<Json<AuthResponse>> {
    let presented = parse_refresh_token(&req.refresh_token)?;
    let now = voltrun_storage::now();
    let next_token = random_token(32);
    let next = NextRefreshToken {
        id: Uuid::now_v7(),
        token_hash: sha256_hex(&next_token),
        expires_at: now + Duration::seconds(state.refresh_token_ttl_s),
    };
    match state
        .store
        .rotate_refresh_token(&presented, &next, now)
        .await?
    {
        RefreshOutcome::Rotated {
            user_id,
            session_id,
            session_expires_at,
        } => {
            let user = state
                .store
                .user_by_id(user_id)
                .await?
                .ok_or(ApiError::Unauthorized("account no longer exists".into()))?;
            let tokens = token_pair(
                &state,
                user_id,
                session_id,
                session_expires_at,
                next_token,
                now,
            )?;
            Ok(Json(AuthResponse {
                user: user.into(),
                tokens,
            }))
        }
        RefreshOutcome::Reused { session_id } => {
            state.sessions.forget(session_id);
            tracing::warn!(%session_id, "refresh token reused; its session is revoked");
            Err(ApiError::Unauthorized(
                "refresh token was already used; the session is revoked, log in again".into(),
            ))
        }
        RefreshOutcome::SessionExpired => Err(ApiError::Unauthorized(
            "the session reached its maximum age; log in again".into(),
        )),
        RefreshOutcome::Invalid => Err(ApiError::Unauthorized("refresh token is not valid".into())),
    }
}

/// End a session: revokes the refresh token's session, which ends its refresh tokens and the access
/// tokens issued for it.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204, description = "Logged out (also when the token was already invalid)"),
        (status = 400, response = BadRequest), (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge), (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed), (status = 503, response = UnavailableForBodies)))]
pub async fn logout(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<StatusCode> {
    if let Ok(presented) = parse_refresh_token(&req.refresh_token)
        && let Some(session_id) = state
            .store
            .revoke_session(&presented, voltrun_storage::now())
            .await?
    {
        state.sessions.forget(session_id);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The logged-in user.
#[utoipa::path(get, path = "/api/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = UserResponse),
        (status = 401, description = "No valid access token, or its account no longer exists (`unauthorized`)", body = crate::ErrorBody),
        (status = 403, response = ApiKeyNotAllowed), (status = 503, response = Unavailable)))]
pub async fn me(
    State(state): State<SharedState>,
    SessionUser(user_id): SessionUser,
) -> ApiResult<Json<UserResponse>> {
    let user = state
        .store
        .user_by_id(user_id)
        .await?
        .ok_or(ApiError::Unauthorized("account no longer exists".into()))?;
    Ok(Json(user.into()))
}
