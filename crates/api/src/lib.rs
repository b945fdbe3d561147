//! VoltRun's HTTP API: the axum router, its shared state, and the handlers. Handlers are thin:
//! extract and parse the request, call storage, auth or the engine, map the result. SQL lives in the
//! storage crate, credentials logic in the auth crate, execution behind the engine trait.

mod caller;
pub mod client_address;
mod code;
mod error;
mod error_docs;
mod extract;
mod function_cache;
pub mod limits;
mod metrics;
mod middleware;
mod openapi;
mod pagination;
mod password_work;
mod routes;
mod session_cache;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use voltrun_auth::{JwtKeys, PasswordHasher, RateLimiter, SecretBox};
use voltrun_executions::Executions;
use voltrun_storage::Store;

pub use client_address::TrustedProxies;
pub use error::{ApiError, ErrorBody};
pub use openapi::openapi_document;

/// Limits on authentication attempts.
#[derive(Debug, Clone, Copy)]
pub struct AuthLimits {
    /// Login and register attempts per client address per minute.
    pub attempts_per_address_per_minute: u32,
    /// Failed logins per account from one client address per 15 minutes, before the account is locked
    /// for that address for the rest of the window.
    pub failed_logins_per_account: u32,
    /// Keys (addresses, accounts) each limiter tracks at most; the least recently seen goes first.
    pub max_tracked_keys: usize,
    /// Password hashes (register, login) computed at once.
    pub hashing_concurrency: usize,
    /// How long a password hash waits for its turn before the request is answered 503.
    pub hashing_queue_timeout: Duration,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            attempts_per_address_per_minute: 30,
            failed_logins_per_account: 10,
            max_tracked_keys: 100_000,
            hashing_concurrency: std::thread::available_parallelism().map_or(2, usize::from),
            hashing_queue_timeout: Duration::from_secs(5),
        }
    }
}

/// What the API needs from the outside, built once by the binary.
#[derive(Debug)]
pub struct ApiConfig {
    pub jwt_secret: Vec<u8>,
    pub access_token_ttl_s: i64,
    pub refresh_token_ttl_s: i64,
    /// A session's absolute lifetime: refreshing never extends it past this many seconds after login.
    pub session_max_age_s: i64,
    pub env_encryption_key: [u8; 32],
    pub auth_limits: AuthLimits,
    /// Proxies whose `X-Forwarded-For` is believed (see `client_address`).
    pub trusted_proxies: TrustedProxies,
    /// The bearer token `/metrics` and `/health`'s detail require; `None` leaves `/metrics` open.
    pub metrics_token: Option<String>,
    pub body_limits: limits::BodyLimits,
    /// Per-user limits on functions, code and queued executions.
    pub quotas: voltrun_storage::UserQuotas,
}

#[derive(Debug)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Runs functions: every invocation, pre-warm and release goes through it.
    pub executions: Arc<Executions>,
    jwt: JwtKeys,
    hasher: PasswordHasher,
    password_work: password_work::PasswordWork,
    secret_box: SecretBox,
    refresh_token_ttl_s: i64,
    session_max_age_s: i64,
    sessions: session_cache::SessionCache,
    address_limiter: RateLimiter,
    login_failures: RateLimiter,
    trusted_proxies: TrustedProxies,
    metrics_token_digest: Option<[u8; 32]>,
    api_key_touches: caller::KeyTouches,
    functions: function_cache::FunctionCache,
    started: Instant,
    bodies: limits::BodyGate,
    quotas: voltrun_storage::UserQuotas,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        executions: Arc<Executions>,
        config: ApiConfig,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            store,
            executions,
            jwt: JwtKeys::new(&config.jwt_secret, config.access_token_ttl_s),
            hasher: PasswordHasher::new().map_err(ApiError::internal)?,
            password_work: password_work::PasswordWork::new(
                config.auth_limits.hashing_concurrency,
                config.auth_limits.hashing_queue_timeout,
            ),
            secret_box: SecretBox::new(&config.env_encryption_key),
            refresh_token_ttl_s: config.refresh_token_ttl_s,
            session_max_age_s: config.session_max_age_s,
            sessions: session_cache::SessionCache::default(),
            address_limiter: RateLimiter::new(
                config.auth_limits.attempts_per_address_per_minute,
                Duration::from_secs(60),
                config.auth_limits.max_tracked_keys,
            ),
            login_failures: RateLimiter::new(
                config.auth_limits.failed_logins_per_account,
                Duration::from_secs(15 * 60),
                config.auth_limits.max_tracked_keys,
            ),
            trusted_proxies: config.trusted_proxies,
            metrics_token_digest: config
                .metrics_token
                .as_deref()
                .map(caller::metrics_token_digest),
            api_key_touches: caller::KeyTouches::default(),
            functions: function_cache::FunctionCache::default(),
            started: Instant::now(),
            bodies: limits::BodyGate::new(config.body_limits),
            quotas: config.quotas,
        })
    }
}

/// Bodies of function uploads: a 50 MiB zip, base64-encoded (4/3), plus the JSON around it.
const FUNCTION_BODY_LIMIT: usize = 50 * 1024 * 1024 * 4 / 3 + 64 * 1024;
/// Synchronous invocation payloads, as Lambda: 6 MiB.
pub const SYNC_EVENT_LIMIT: usize = 6 * 1024 * 1024;
/// Asynchronous invocation payloads, as Lambda: 1 MiB.
pub const ASYNC_EVENT_LIMIT: usize = 1024 * 1024;
/// Everything else.
const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// The whole API.
pub fn router(state: SharedState) -> Router {
    metrics::init();
    let functions_body = DefaultBodyLimit::max(FUNCTION_BODY_LIMIT);
    let api = Router::new()
        .route("/auth/register", post(routes::auth::register))
        .route("/auth/login", post(routes::auth::login))
        .route("/auth/refresh", post(routes::auth::refresh))
        .route("/auth/logout", post(routes::auth::logout))
        .route("/auth/me", get(routes::auth::me))
        .route("/keys", get(routes::keys::list).post(routes::keys::create))
        .route("/keys/{id}", axum::routing::delete(routes::keys::delete))
        .route(
            "/functions",
            get(routes::functions::list)
                .post(routes::functions::create)
                .layer(functions_body),
        )
        .route(
            "/functions/{id}",
            get(routes::functions::get)
                .put(routes::functions::update)
                .delete(routes::functions::delete)
                .layer(functions_body),
        )
        .route("/functions/{id}/code", get(routes::functions::code))
        .route(
            "/functions/{id}/execute",
            post(routes::executions::execute).layer(DefaultBodyLimit::max(SYNC_EVENT_LIMIT)),
        )
        .route(
            "/layers",
            get(routes::layers::list)
                .post(routes::layers::publish)
                .layer(functions_body),
        )
        .route(
            "/layers/{name}/versions/{version}",
            get(routes::layers::get).delete(routes::layers::delete),
        )
        .route("/executions", get(routes::executions::list))
        .route("/executions/{id}", get(routes::executions::get))
        .route("/executions/{id}/logs", get(routes::executions::logs))
        .route("/runtimes", get(routes::system::runtimes))
        .route("/openapi.json", get(routes::system::openapi_json));

    Router::new()
        .nest("/api", api)
        .route("/health", get(routes::system::health))
        .route("/metrics", get(routes::system::metrics))
        .route("/docs", get(routes::system::docs))
        .layer(DefaultBodyLimit::max(DEFAULT_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::limit_bodies,
        ))
        .layer(axum::middleware::from_fn(middleware::request_context))
        .with_state(state)
}
