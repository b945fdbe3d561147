//! `/api/layers`: publish, list, read and delete layer versions (Lambda's layers: archives a
//! function merges at `/opt`; see `voltrun_domain::layer`). A version is immutable; functions name
//! it `name:version` in their `layers`.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use voltrun_domain::ValidationError;
use voltrun_domain::function::{FunctionName, parse_description};
use voltrun_domain::layer::{LayerRecord, LayerRef, parse_layer_refs};

use crate::SharedState;
use crate::caller::FullAccess;
use crate::error::{ApiError, ApiResult};
use crate::error_docs::{
    BadRequest, ForbiddenForCode, InsufficientScope, NotFound, RequestTimeout, Unauthenticated,
    Unavailable, UnavailableForBodies, UnsupportedMediaType, ValidationFailed,
};
use crate::extract::{ApiJson, ApiQuery};
use crate::limits::Uploader;
use crate::pagination::{PageParams, Paginated};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "deps", "description": "requests 2.32", "code": {"zip_base64": "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="}}))]
pub struct PublishLayerRequest {
    /// Lower-case letters, digits and hyphens, 1–64, starting and ending with a letter or digit.
    /// Publishing a name again makes its next version.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")]
    pub name: String,
    #[schema(max_length = 256)]
    pub description: Option<String>,
    pub code: LayerCode,
}

/// A layer's archive, laid out as it appears under `/opt` (`python/…` for Python modules,
/// `nodejs/node_modules/…` for Node.js packages, `bin/`, `lib/`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LayerCode {
    /// A zip archive, base64-encoded (the same limits as a function's code).
    pub zip_base64: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LayerResponse {
    pub id: Uuid,
    pub name: String,
    /// 1 for a name's first version; numbers are never reused.
    pub version: i64,
    /// `name:version`, as a function's `layers` names it.
    pub reference: String,
    pub description: String,
    pub code_sha256: String,
    pub code_size_bytes: i64,
    pub unzipped_bytes: i64,
    pub created_at: DateTime<Utc>,
}

impl From<LayerRecord> for LayerResponse {
    fn from(l: LayerRecord) -> Self {
        Self {
            reference: format!("{}:{}", l.name, l.version),
            id: l.id,
            name: l.name,
            version: l.version,
            description: l.description,
            code_sha256: l.code_sha256,
            code_size_bytes: l.code_size_bytes,
            unzipped_bytes: l.unzipped_bytes,
            created_at: l.created_at,
        }
    }
}

/// The `{name}/versions/{version}` of a layer version's path. A name or number that cannot be one
/// names nothing, so it is a 404.
#[derive(Debug)]
pub struct LayerPath(LayerRef);

impl<S: Send + Sync> FromRequestParts<S> for LayerPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path((name, version)) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::NotFound("layer version"))?;
        LayerRef::parse(&format!("{name}:{version}"))
            .map(Self)
            .map_err(|_| ApiError::NotFound("layer version"))
    }
}

/// Publish a layer version: the archive becomes `name`'s next version.
#[utoipa::path(post, path = "/api/layers", tag = "layers", request_body = PublishLayerRequest,
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 201, body = LayerResponse), (status = 400, response = BadRequest),
        (status = 401, response = Unauthenticated), (status = 403, response = ForbiddenForCode),
        (status = 408, response = RequestTimeout),
        (status = 413, description = "The body, the archive or what it unzips to is larger than allowed (`payload_too_large`)", body = crate::ErrorBody),
        (status = 415, response = UnsupportedMediaType), (status = 422, response = ValidationFailed),
        (status = 503, response = UnavailableForBodies)))]
pub async fn publish(
    State(state): State<SharedState>,
    uploader: Uploader,
    ApiJson(req): ApiJson<PublishLayerRequest>,
) -> ApiResult<(StatusCode, Json<LayerResponse>)> {
    let name = FunctionName::parse(&req.name)?.into_inner();
    let description = parse_description(req.description.as_deref().unwrap_or_default())?;
    let encoded = req.code.zip_base64;
    let (bytes, manifest) =
        crate::code::checking(move || crate::code::decode_zip(&encoded)).await??;
    let layer = LayerRecord {
        id: Uuid::now_v7(),
        user_id: uploader.user_id,
        name,
        version: 0,
        description,
        code_sha256: crate::code::sha256_hex(&bytes),
        code_size_bytes: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
        unzipped_bytes: i64::try_from(manifest.unzipped_bytes).unwrap_or(i64::MAX),
        created_at: voltrun_storage::now(),
    };
    let published = state
        .store
        .publish_layer(&layer, &bytes, &state.quotas)
        .await?;
    tracing::info!(layer_id = %published.id, version = published.version, "layer version published");
    Ok((StatusCode::CREATED, Json(published.into())))
}

/// List your layer versions (newest first).
#[utoipa::path(get, path = "/api/layers", tag = "layers", params(PageParams),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = Paginated<LayerResponse>), (status = 401, response = Unauthenticated),
        (status = 403, response = InsufficientScope), (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable)))]
pub async fn list(
    State(state): State<SharedState>,
    FullAccess(user_id): FullAccess,
    ApiQuery(params): ApiQuery<PageParams>,
) -> ApiResult<Json<Paginated<LayerResponse>>> {
    let (page, limit) = params.to_page()?;
    let rows = state.store.list_layers(user_id, page).await?;
    Ok(Json(Paginated::from_rows(
        rows,
        limit,
        |l| l.id,
        LayerResponse::from,
    )))
}

/// Get one layer version.
#[utoipa::path(get, path = "/api/layers/{name}/versions/{version}", tag = "layers",
    params(("name" = String, Path), ("version" = i64, Path)),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = LayerResponse), (status = 401, response = Unauthenticated),
        (status = 403, response = InsufficientScope), (status = 404, response = NotFound),
        (status = 503, response = Unavailable)))]
pub async fn get(
    State(state): State<SharedState>,
    FullAccess(user_id): FullAccess,
    LayerPath(layer): LayerPath,
) -> ApiResult<Json<LayerResponse>> {
    let found = state
        .store
        .get_layer(user_id, &layer.name, layer.version)
        .await?
        .ok_or(ApiError::NotFound("layer version"))?;
    Ok(Json(found.into()))
}

/// Delete a layer version. Refused (409) while a function uses it; its number is not given out again.
#[utoipa::path(delete, path = "/api/layers/{name}/versions/{version}", tag = "layers",
    params(("name" = String, Path), ("version" = i64, Path)),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, response = Unauthenticated),
        (status = 403, response = InsufficientScope), (status = 404, response = NotFound),
        (status = 409, description = "A function still uses this version (`conflict`)", body = crate::ErrorBody),
        (status = 503, response = Unavailable)))]
pub async fn delete(
    State(state): State<SharedState>,
    FullAccess(user_id): FullAccess,
    LayerPath(layer): LayerPath,
) -> ApiResult<StatusCode> {
    let deleted = state
        .store
        .delete_layer(user_id, &layer.name, layer.version)
        .await
        .map_err(|e| match e {
            voltrun_storage::StoreError::InUse(by) => ApiError::Conflict(format!(
                "layer version {}:{} is still used by function {by}; take it out of the function first",
                layer.name, layer.version
            )),
            other => other.into(),
        })?;
    if !deleted {
        return Err(ApiError::NotFound("layer version"));
    }
    tracing::info!(name = %layer.name, version = layer.version, "layer version deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's layer versions a function's `layers` names, in order; 422 on `layers` for one that
/// does not exist (another user's included), or where the function's code and the layers together
/// would unzip past the limit (Lambda's: 250 MiB with layers).
pub(crate) async fn resolve(
    state: &SharedState,
    user_id: Uuid,
    raw: &[String],
    code_unzipped_bytes: u64,
) -> ApiResult<Vec<LayerRecord>> {
    let refs = parse_layer_refs(raw)?;
    let mut layers = Vec::with_capacity(refs.len());
    for r in refs {
        let layer = state
            .store
            .get_layer(user_id, &r.name, r.version)
            .await?
            .ok_or_else(|| {
                ValidationError::new(
                    "layers",
                    format!("you have no layer version {}:{}", r.name, r.version),
                )
            })?;
        layers.push(layer);
    }
    let total = layers
        .iter()
        .map(|l| u64::try_from(l.unzipped_bytes).unwrap_or(u64::MAX))
        .fold(code_unzipped_bytes, u64::saturating_add);
    if total > voltrun_bundle::MAX_UNZIPPED_BYTES {
        return Err(ValidationError::new(
            "layers",
            format!(
                "the code and its layers unzip to {total} bytes together, more than the {} MiB allowed",
                voltrun_bundle::MAX_UNZIPPED_BYTES >> 20
            ),
        )
        .into());
    }
    Ok(layers)
}
