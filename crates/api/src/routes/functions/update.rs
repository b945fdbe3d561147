//! `PUT /api/functions/{id}`: a partial update. Only the fields given change; every field is
//! parsed as on create, the combination is checked again (layers and code within their limits,
//! logging settings together), and the write succeeds only on the version it was read at.

use axum::Json;
use axum::extract::State;
use voltrun_domain::function::{
    FunctionName, Handler, LogFormat, LogLevel, parse_description, parse_max_retries,
    parse_memory_mb, parse_min_instances, parse_timeout_s, resolve_logging, validate_env,
};

use crate::SharedState;
use crate::code::CodeBundle;
use crate::error::{ApiError, ApiResult};
use crate::error_docs::{
    BadRequest, ForbiddenForCode, NotFound, RequestTimeout, Unauthenticated, UnavailableForBodies,
    UnsupportedMediaType, ValidationFailed,
};
use crate::extract::{ApiJson, IdPath};
use crate::limits::Uploader;

use super::{
    FunctionResponse, UpdateFunctionRequest, open_env, parse_concurrency_setting, parse_runtime,
    seal_env, stored_function,
};

/// Update a function; only the fields given change. Any change increments `version`.
#[utoipa::path(put, path = "/api/functions/{id}", tag = "functions", params(("id" = Uuid, Path)),
    request_body = UpdateFunctionRequest, security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = FunctionResponse), (status = 400, response = BadRequest),
        (status = 401, response = Unauthenticated), (status = 403, response = ForbiddenForCode),
        (status = 404, response = NotFound), (status = 408, response = RequestTimeout),
        (status = 409, description = "You already have a function of the new name, or the function changed while this update was applied (`conflict`)", body = crate::ErrorBody),
        (status = 413, description = "The body, the code or what it unzips to is larger than allowed (`payload_too_large`)", body = crate::ErrorBody),
        (status = 415, response = UnsupportedMediaType), (status = 422, response = ValidationFailed),
        (status = 503, response = UnavailableForBodies)))]
pub async fn update(
    State(state): State<SharedState>,
    uploader: Uploader,
    IdPath(id): IdPath,
    ApiJson(req): ApiJson<UpdateFunctionRequest>,
) -> ApiResult<Json<FunctionResponse>> {
    let user_id = uploader.user_id;
    // Parse everything before touching storage: bad input changes nothing.
    let name = req
        .name
        .as_deref()
        .map(FunctionName::parse)
        .transpose()?
        .map(FunctionName::into_inner);
    let description = req
        .description
        .as_deref()
        .map(parse_description)
        .transpose()?;
    if let Some(runtime) = &req.runtime {
        parse_runtime(&state, runtime)?;
    }
    if let Some(handler) = &req.handler {
        Handler::parse(handler)?;
    }
    let memory_mb = req.memory_mb.map(parse_memory_mb).transpose()?;
    let timeout_s = req.timeout_s.map(parse_timeout_s).transpose()?;
    let max_retries = req.max_retries.map(parse_max_retries).transpose()?;
    let max_concurrency = parse_concurrency_setting(req.max_concurrency)?;
    let min_instances = req.min_instances.map(parse_min_instances).transpose()?;
    // Each value checked on its own before anything is read; the pair against the stored settings
    // once they are.
    req.log_format
        .as_deref()
        .map(LogFormat::parse)
        .transpose()?;
    req.log_level.as_deref().map(LogLevel::parse).transpose()?;
    if let Some(env) = &req.env {
        validate_env(env)?;
    }
    if let Some(raw) = &req.layers {
        voltrun_domain::layer::parse_layer_refs(raw)?;
    }

    let current = stored_function(&state, user_id, id).await?;
    let (log_format, log_level) = resolve_logging(
        (current.log_format, current.log_level),
        req.log_format.as_deref(),
        req.log_level.as_deref(),
    )?;
    let runtime = req
        .runtime
        .clone()
        .unwrap_or_else(|| current.runtime.clone());
    let handler_text = req
        .handler
        .clone()
        .unwrap_or_else(|| current.handler.clone());
    let family = parse_runtime(&state, &runtime)?;
    let handler = Handler::parse(&handler_text)?;

    // New code is checked against the (possibly new) handler; without new code, a changed runtime or
    // handler is checked against the stored code, as are new layers against its unzipped size.
    let (new_bundle, code_unzipped_bytes) = match req.code {
        Some(input) => {
            let h = handler.clone();
            let bundle =
                crate::code::checking(move || CodeBundle::parse(input, family, &h)).await??;
            let unzipped = bundle.unzipped_bytes;
            (Some(bundle), Some(unzipped))
        }
        None if req.runtime.is_some() || req.handler.is_some() || req.layers.is_some() => {
            let bytes = state
                .store
                .get_code(&current.code_sha256)
                .await?
                .unwrap_or_default();
            let (kind, filename, h) = (
                current.code_kind,
                current.code_filename.clone(),
                handler.clone(),
            );
            let unzipped = crate::code::checking(move || {
                let stored = CodeBundle::from_stored(kind, bytes, filename)?;
                stored.check_handler(family, &h)?;
                Ok::<_, ApiError>(stored.unzipped_bytes)
            })
            .await??;
            (None, Some(unzipped))
        }
        None => (None, None),
    };
    // New layers, or new code under the current ones, must fit the unzipped limit together.
    let layers = match (&req.layers, code_unzipped_bytes) {
        (Some(raw), Some(unzipped)) => Some(
            crate::routes::layers::resolve(&state, user_id, raw, unzipped)
                .await?
                .iter()
                .map(|l| l.attached())
                .collect::<Vec<_>>(),
        ),
        (None, Some(unzipped)) if !current.layers.is_empty() => {
            let refs: Vec<String> = current.layers.iter().map(|l| l.reference()).collect();
            crate::routes::layers::resolve(&state, user_id, &refs, unzipped).await?;
            None
        }
        _ => None,
    };

    let mut next = current.clone();
    if let Some(name) = name {
        next.name = name;
    }
    if let Some(description) = description {
        next.description = description;
    }
    next.runtime = runtime;
    next.handler = handler_text;
    if let Some(memory_mb) = memory_mb {
        next.memory_mb = memory_mb;
    }
    if let Some(timeout_s) = timeout_s {
        next.timeout_s = timeout_s;
    }
    if let Some(max_retries) = max_retries {
        next.max_retries = max_retries;
    }
    if let Some(max_concurrency) = max_concurrency {
        next.max_concurrency = max_concurrency;
    }
    if let Some(min_instances) = min_instances {
        next.min_instances = min_instances;
    }
    (next.log_format, next.log_level) = (log_format, log_level);
    if let Some(layers) = layers {
        next.layers = layers;
    }
    let env = match &req.env {
        Some(env) => {
            next.env_ciphertext = seal_env(&state, env)?;
            env.clone()
        }
        None => open_env(&state, &current.env_ciphertext)?,
    };
    if let Some(bundle) = &new_bundle {
        next.code_sha256 = bundle.sha256.clone();
        next.code_size_bytes = i64::try_from(bundle.bytes.len()).unwrap_or(i64::MAX);
        next.code_kind = bundle.kind;
        next.code_filename = bundle.filename.clone();
    }
    let env_changed = req.env.is_some() && open_env(&state, &current.env_ciphertext)? != env;
    let changed = env_changed
        || next.name != current.name
        || next.description != current.description
        || next.runtime != current.runtime
        || next.handler != current.handler
        || next.memory_mb != current.memory_mb
        || next.timeout_s != current.timeout_s
        || next.max_retries != current.max_retries
        || next.max_concurrency != current.max_concurrency
        || next.min_instances != current.min_instances
        || next.log_format != current.log_format
        || next.log_level != current.log_level
        || next.code_sha256 != current.code_sha256
        || next.code_filename != current.code_filename
        || next.layers != current.layers;
    if !changed {
        return Ok(Json(FunctionResponse::new(current, Some(env))));
    }
    next.version = current.version + 1;
    next.updated_at = voltrun_storage::now();
    let written = state
        .store
        .update_function(
            &next,
            current.version,
            new_bundle.as_ref().map(|b| b.bytes.as_slice()),
            &state.quotas,
        )
        .await
        .map_err(|e| match e {
            voltrun_storage::StoreError::Conflict(_) => {
                ApiError::Conflict(format!("you already have a function named {:?}", next.name))
            }
            other => other.into(),
        })?;
    // Whatever happened, the cached copy may be stale now.
    state.functions.forget(id);
    if !written {
        return Err(ApiError::Conflict(
            "the function changed while this update was applied; retry".into(),
        ));
    }
    tracing::info!(function_id = %next.id, version = next.version, "function updated");
    state.executions.keep_warm(&next, &env);
    Ok(Json(FunctionResponse::new(next, Some(env))))
}
