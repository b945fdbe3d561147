//! `/api/functions`: create, read, update (partial), delete, and read back the code.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use uuid::Uuid;
use voltrun_domain::ValidationError;
use voltrun_domain::function::{
    CodeKind, DEFAULT_MAX_RETRIES, DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, EnvVars, FunctionName,
    FunctionRecord, Handler, LogFormat, RuntimeFamily, parse_description, parse_max_concurrency,
    parse_max_retries, parse_memory_mb, parse_min_instances, parse_timeout_s, resolve_logging,
    validate_env,
};

use crate::SharedState;
use crate::caller::FullAccess;
use crate::code::CodeBundle;
use crate::error::{ApiError, ApiResult};
use crate::error_docs::{
    BadRequest, ForbiddenForCode, InsufficientScope, NotFound, RequestTimeout, Unauthenticated,
    Unavailable, UnavailableForBodies, UnavailableForDownloads, UnsupportedMediaType,
    ValidationFailed,
};
use crate::extract::{ApiJson, ApiQuery, IdPath};
use crate::limits::Uploader;
use crate::pagination::{PageParams, Paginated};

mod bodies;
mod update;
pub use bodies::*;
pub use update::*;

fn parse_runtime(state: &SharedState, runtime: &str) -> Result<RuntimeFamily, ValidationError> {
    let offered = state.executions.engine().runtimes();
    offered
        .iter()
        .find(|r| r.id == runtime)
        .and_then(|r| RuntimeFamily::of(&r.id))
        .ok_or_else(|| {
            let ids: Vec<&str> = offered.iter().map(|r| r.id.as_str()).collect();
            ValidationError::new(
                "runtime",
                format!(
                    "{runtime:?} is not offered here; choose one of: {}",
                    ids.join(", ")
                ),
            )
        })
}

/// `max_concurrency` as given: absent → `None` (unchanged), 0 → `Some(None)` (the server default).
fn parse_concurrency_setting(raw: Option<i64>) -> Result<Option<Option<i32>>, ValidationError> {
    match raw {
        None => Ok(None),
        Some(0) => Ok(Some(None)),
        Some(v) => parse_max_concurrency(v).map(|v| Some(Some(v))),
    }
}

pub(crate) fn seal_env(state: &SharedState, env: &EnvVars) -> ApiResult<Vec<u8>> {
    state.secret_box.seal_json(env).map_err(ApiError::internal)
}

pub(crate) fn open_env(state: &SharedState, sealed: &[u8]) -> ApiResult<EnvVars> {
    state
        .secret_box
        .open_json(sealed)
        .map_err(ApiError::internal)
}

/// Looks up one of the caller's functions; another user's function is simply not found. Served
/// from the short-lived cache when it can be (see `function_cache`).
pub(crate) async fn owned_function(
    state: &SharedState,
    user_id: Uuid,
    id: Uuid,
) -> ApiResult<FunctionRecord> {
    if let Some(record) = state.functions.get(id) {
        return if record.user_id == user_id {
            Ok(record)
        } else {
            Err(ApiError::NotFound("function"))
        };
    }
    let record = stored_function(state, user_id, id).await?;
    state.functions.put(record.clone());
    Ok(record)
}

/// The caller's function as the database has it now (for updates, which compare versions).
async fn stored_function(
    state: &SharedState,
    user_id: Uuid,
    id: Uuid,
) -> ApiResult<FunctionRecord> {
    state
        .store
        .get_function(user_id, id)
        .await?
        .ok_or(ApiError::NotFound("function"))
}

/// Create a function.
#[utoipa::path(post, path = "/api/functions", tag = "functions", request_body = CreateFunctionRequest,
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 201, body = FunctionResponse), (status = 400, response = BadRequest),
        (status = 401, response = Unauthenticated), (status = 403, response = ForbiddenForCode),
        (status = 408, response = RequestTimeout),
        (status = 409, description = "You already have a function of this name (`conflict`)", body = crate::ErrorBody),
        (status = 413, description = "The body, the code or what it unzips to is larger than allowed (`payload_too_large`)", body = crate::ErrorBody),
        (status = 415, response = UnsupportedMediaType), (status = 422, response = ValidationFailed),
        (status = 503, response = UnavailableForBodies)))]
pub async fn create(
    State(state): State<SharedState>,
    uploader: Uploader,
    ApiJson(req): ApiJson<CreateFunctionRequest>,
) -> ApiResult<(StatusCode, Json<FunctionResponse>)> {
    let user_id = uploader.user_id;
    let name = FunctionName::parse(&req.name)?.into_inner();
    let description = parse_description(req.description.as_deref().unwrap_or_default())?;
    let family = parse_runtime(&state, &req.runtime)?;
    let handler = Handler::parse(&req.handler)?;
    let memory_mb = req
        .memory_mb
        .map(parse_memory_mb)
        .transpose()?
        .unwrap_or(DEFAULT_MEMORY_MB);
    let timeout_s = req
        .timeout_s
        .map(parse_timeout_s)
        .transpose()?
        .unwrap_or(DEFAULT_TIMEOUT_S);
    let max_retries = req
        .max_retries
        .map(parse_max_retries)
        .transpose()?
        .unwrap_or(DEFAULT_MAX_RETRIES);
    let max_concurrency = parse_concurrency_setting(req.max_concurrency)?.flatten();
    let min_instances = req
        .min_instances
        .map(parse_min_instances)
        .transpose()?
        .unwrap_or(0);
    let (log_format, log_level) = resolve_logging(
        (LogFormat::Text, None),
        req.log_format.as_deref(),
        req.log_level.as_deref(),
    )?;
    let env = req.env.unwrap_or_default();
    validate_env(&env)?;
    let code_input = req.code;
    let checked_handler = handler.clone();
    let bundle =
        crate::code::checking(move || CodeBundle::parse(code_input, family, &checked_handler))
            .await??;
    let layers = match &req.layers {
        Some(raw) => crate::routes::layers::resolve(&state, user_id, raw, bundle.unzipped_bytes)
            .await?
            .iter()
            .map(|l| l.attached())
            .collect(),
        None => Vec::new(),
    };

    let now = voltrun_storage::now();
    let record = FunctionRecord {
        id: Uuid::now_v7(),
        user_id,
        name,
        description,
        runtime: req.runtime,
        handler: req.handler,
        code_sha256: bundle.sha256.clone(),
        code_size_bytes: i64::try_from(bundle.bytes.len()).unwrap_or(i64::MAX),
        code_kind: bundle.kind,
        code_filename: bundle.filename.clone(),
        memory_mb,
        timeout_s,
        env_ciphertext: seal_env(&state, &env)?,
        max_retries,
        max_concurrency,
        min_instances,
        log_format,
        log_level,
        layers,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    state
        .store
        .create_function(&record, &bundle.bytes, &state.quotas)
        .await
        .map_err(|e| match e {
            voltrun_storage::StoreError::Conflict(_) => ApiError::Conflict(format!(
                "you already have a function named {:?}",
                record.name
            )),
            other => other.into(),
        })?;
    tracing::info!(function_id = %record.id, "function created");
    state.executions.keep_warm(&record, &env);
    Ok((
        StatusCode::CREATED,
        Json(FunctionResponse::new(record, Some(env))),
    ))
}

/// List your functions (newest first).
#[utoipa::path(get, path = "/api/functions", tag = "functions", params(PageParams),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = Paginated<FunctionResponse>), (status = 401, response = Unauthenticated),
        (status = 403, response = InsufficientScope), (status = 422, response = ValidationFailed),
        (status = 503, response = Unavailable)))]
pub async fn list(
    State(state): State<SharedState>,
    FullAccess(user_id): FullAccess,
    ApiQuery(params): ApiQuery<PageParams>,
) -> ApiResult<Json<Paginated<FunctionResponse>>> {
    let (page, limit) = params.to_page()?;
    let rows = state.store.list_functions(user_id, page).await?;
    Ok(Json(Paginated::from_rows(
        rows,
        limit,
        |f| f.id,
        |f| FunctionResponse::new(f, None),
    )))
}

/// Get one function (without its code).
#[utoipa::path(get, path = "/api/functions/{id}", tag = "functions", params(("id" = Uuid, Path)),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = FunctionResponse), (status = 401, response = Unauthenticated),
        (status = 403, response = InsufficientScope), (status = 404, response = NotFound),
        (status = 503, response = Unavailable)))]
pub async fn get(
    State(state): State<SharedState>,
    FullAccess(user_id): FullAccess,
    IdPath(id): IdPath,
) -> ApiResult<Json<FunctionResponse>> {
    let f = owned_function(&state, user_id, id).await?;
    let env = open_env(&state, &f.env_ciphertext)?;
    Ok(Json(FunctionResponse::new(f, Some(env))))
}

/// Get a function's code.
#[utoipa::path(get, path = "/api/functions/{id}/code", tag = "functions", params(("id" = Uuid, Path)),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = CodeResponse), (status = 401, response = Unauthenticated),
        (status = 403, response = InsufficientScope), (status = 404, response = NotFound),
        (status = 503, response = UnavailableForDownloads)))]
pub async fn code(
    State(state): State<SharedState>,
    FullAccess(user_id): FullAccess,
    IdPath(id): IdPath,
) -> ApiResult<axum::response::Response> {
    let f = owned_function(&state, user_id, id).await?;
    // Base64 makes four bytes of three; the JSON around it is small.
    let size = u64::try_from(f.code_size_bytes).unwrap_or(u64::MAX);
    let slots = crate::limits::download_slots(&state, user_id, size.saturating_mul(4) / 3 + 512)?;
    let bytes = state.store.get_code(&f.code_sha256).await?.ok_or_else(|| {
        ApiError::internal(format!(
            "code {} of function {} is missing",
            f.code_sha256, f.id
        ))
    })?;
    let response = match f.code_kind {
        CodeKind::Source => CodeResponse {
            kind: CodeKind::Source,
            sha256: f.code_sha256,
            filename: f.code_filename,
            source: Some(String::from_utf8(bytes).map_err(ApiError::internal)?),
            zip_base64: None,
        },
        CodeKind::Zip => CodeResponse {
            kind: CodeKind::Zip,
            sha256: f.code_sha256,
            filename: None,
            source: None,
            zip_base64: Some(STANDARD.encode(bytes)),
        },
    };
    let json = serde_json::to_vec(&response).map_err(ApiError::internal)?;
    let body = crate::limits::send_held(&state, json.into(), slots);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// Delete a function and its code. Its past executions stay readable.
#[utoipa::path(delete, path = "/api/functions/{id}", tag = "functions", params(("id" = Uuid, Path)),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, response = Unauthenticated),
        (status = 403, response = InsufficientScope), (status = 404, response = NotFound),
        (status = 503, response = Unavailable)))]
pub async fn delete(
    State(state): State<SharedState>,
    FullAccess(user_id): FullAccess,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    let deleted = state.store.delete_function(user_id, id).await?;
    state.functions.forget(id);
    if deleted {
        // Its warm floor and idle instances go with it, in the background.
        state.executions.release(id);
        tracing::info!(function_id = %id, "function deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("function"))
    }
}
