//! `/api/keys`: API keys. A key is shown whole once, at creation; only its hash is stored.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use voltrun_auth::secrets::{new_api_key, sha256_hex};
use voltrun_domain::{ValidationError, is_forbidden_char};
use voltrun_storage::ApiKeyRecord;

use crate::SharedState;
use crate::caller::{SCOPE_FULL, SCOPES, SessionUser};
use crate::error::{ApiError, ApiResult};
use crate::error_docs::{
    ApiKeyNotAllowed, BadRequest, NotFound, PayloadTooLarge, RequestTimeout, Unauthenticated,
    Unavailable, UnavailableForBodies, UnsupportedMediaType, ValidationFailed,
};
use crate::extract::{ApiJson, ApiQuery, IdPath};
use crate::pagination::{PageParams, Paginated};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ci", "scopes": ["execute"]}))]
pub struct CreateKeyRequest {
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    /// `full` (default) or `execute` (may only invoke functions and read executions).
    #[schema(min_items = 1, value_type = Option<Vec<KeyScope>>)]
    pub scopes: Option<Vec<String>>,
}

/// What an API key may do (documentation only: scopes are parsed as strings, to name a bad one).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // named in the schema of `CreateKeyRequest`, never built
enum KeyScope {
    /// Everything an access token may, except managing keys and sessions.
    Full,
    /// Invoke functions and read executions.
    Execute,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyResponse {
    pub id: Uuid,
    pub name: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKeyResponse {
    #[serde(flatten)]
    pub key_info: KeyResponse,
    /// The whole key. Shown only now: store it safely.
    pub key: String,
}

impl From<ApiKeyRecord> for KeyResponse {
    fn from(k: ApiKeyRecord) -> Self {
        Self {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            scopes: k.scopes,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
        }
    }
}

fn parse_key_name(raw: &str) -> Result<String, ValidationError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ValidationError::new("name", "must be 1 to 64 characters"));
    }
    if name.chars().any(is_forbidden_char) {
        return Err(ValidationError::new(
            "name",
            "must not contain control characters",
        ));
    }
    Ok(name.to_string())
}

fn parse_scopes(raw: Option<Vec<String>>) -> Result<Vec<String>, ValidationError> {
    let mut scopes = raw.unwrap_or_else(|| vec![SCOPE_FULL.to_string()]);
    if scopes.is_empty() {
        return Err(ValidationError::new(
            "scopes",
            format!("must name at least one of {}", SCOPES.join(", ")),
        ));
    }
    if let Some(bad) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(ValidationError::new(
            "scopes",
            format!("unknown scope {bad:?}; use {}", SCOPES.join(" or ")),
        ));
    }
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// List your API keys.
#[utoipa::path(get, path = "/api/keys", tag = "keys", params(PageParams), security(("bearer" = [])),
    responses((status = 200, body = Paginated<KeyResponse>), (status = 401, response = Unauthenticated),
        (status = 403, response = ApiKeyNotAllowed), (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable)))]
pub async fn list(
    State(state): State<SharedState>,
    SessionUser(user_id): SessionUser,
    ApiQuery(params): ApiQuery<PageParams>,
) -> ApiResult<Json<Paginated<KeyResponse>>> {
    let (page, limit) = params.to_page()?;
    let rows = state.store.list_api_keys(user_id, page).await?;
    Ok(Json(Paginated::from_rows(
        rows,
        limit,
        |k| k.id,
        KeyResponse::from,
    )))
}

/// Create an API key.
#[utoipa::path(post, path = "/api/keys", tag = "keys", request_body = CreateKeyRequest, security(("bearer" = [])),
    responses((status = 201, body = CreatedKeyResponse), (status = 400, response = BadRequest),
        (status = 401, response = Unauthenticated), (status = 403, response = ApiKeyNotAllowed),
        (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType), (status = 422, response = ValidationFailed),
        (status = 503, response = UnavailableForBodies)))]
pub async fn create(
    State(state): State<SharedState>,
    SessionUser(user_id): SessionUser,
    ApiJson(req): ApiJson<CreateKeyRequest>,
) -> ApiResult<(StatusCode, Json<CreatedKeyResponse>)> {
    let name = parse_key_name(&req.name)?;
    let scopes = parse_scopes(req.scopes)?;
    let (key, prefix) = new_api_key();
    let record = ApiKeyRecord {
        id: Uuid::now_v7(),
        user_id,
        name,
        prefix,
        key_hash: sha256_hex(&key),
        scopes,
        created_at: voltrun_storage::now(),
        last_used_at: None,
    };
    state.store.create_api_key(&record).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKeyResponse {
            key_info: record.into(),
            key,
        }),
    ))
}

/// Delete an API key; it stops working at once.
#[utoipa::path(delete, path = "/api/keys/{id}", tag = "keys", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, response = Unauthenticated),
        (status = 403, response = ApiKeyNotAllowed), (status = 404, response = NotFound),
        (status = 503, response = Unavailable)))]
pub async fn delete(
    State(state): State<SharedState>,
    SessionUser(user_id): SessionUser,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    if state.store.delete_api_key(user_id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("API key"))
    }
}
