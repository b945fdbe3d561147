//! VoltRun's persistence. One [`Store`] interface, implemented for SQLite (the embedded default) and
//! PostgreSQL from the same SQL text: sqlx's SQLite driver reads `$N` placeholders as argument N, so
//! each statement is written once (in `queries.rs`) and expanded for both drivers; only the encoding
//! of UUIDs differs (native `uuid` on PostgreSQL, hyphenated `TEXT` on SQLite).

mod migrations;
mod queries;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use voltrun_domain::execution::{
    AttemptRecord, ExecutionOutcome, ExecutionRecord, ExecutionStatus, LogLine,
};
use voltrun_domain::function::FunctionRecord;
use voltrun_domain::layer::LayerRecord;
use voltrun_domain::user::User;

pub use migrations::migrate;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the write; the payload names the constraint's subject.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// A per-user quota refused the write; nothing was written.
    #[error(transparent)]
    QuotaExceeded(QuotaExceeded),
    /// The row is still used by the named function, so it was not deleted.
    #[error("still used by function {0}")]
    InUse(String),
    /// A row the write refers to was deleted meanwhile; nothing was written.
    #[error("the {0} no longer exists")]
    Gone(&'static str),
    /// The database could not write for want of disk space (SQLite's `SQLITE_FULL`, PostgreSQL's
    /// `disk_full`). The statement or transaction was rolled back: what was committed before stays.
    #[error("the database's storage is full: {0}")]
    StorageFull(sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported DATABASE_URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
}

impl StoreError {
    /// Whether the database could not be reached (rather than refusing a statement): the caller may
    /// retry, and a client gets a 503.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Database(
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::WorkerCrashed
            )
        )
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_storage_full(&e) {
            Self::StorageFull(e)
        } else {
            Self::Database(e)
        }
    }
}

/// Whether the database refused a write for want of disk space. SQLite reports `SQLITE_FULL` (13,
/// also the low byte of its extended codes) when a write to the database or its WAL fails with
/// ENOSPC; PostgreSQL reports SQLSTATE 53100 (`disk_full`) when it cannot extend a table or index
/// file. A PostgreSQL server that cannot write its own WAL stops altogether instead: that reaches
/// us as lost connections, not as this.
fn is_storage_full(e: &sqlx::Error) -> bool {
    const SQLITE_FULL: i64 = 13;
    const PG_DISK_FULL: &str = "53100";
    let Some(db) = e.as_database_error() else {
        return false;
    };
    let Some(code) = db.code() else { return false };
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        code.parse::<i64>().is_ok_and(|c| c & 0xff == SQLITE_FULL)
    } else {
        code == PG_DISK_FULL
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A per-user limit (see [`UserQuotas`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Functions a user has.
    Functions,
    /// Bytes of code over a user's functions and layer versions, each counted whole (two functions
    /// with identical code count it twice, though it is stored once).
    CodeBytes,
    /// Layer versions a user keeps ([`voltrun_domain::layer::MAX_LAYER_VERSIONS_PER_USER`]).
    LayerVersions,
    /// A user's asynchronous executions waiting in the queue (status `queued`, retries included).
    QueuedExecutions,
}

/// What a refused write would have taken past its quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{quota:?} quota exceeded: {used} in use, {requested} more asked for, limit {limit}")]
pub struct QuotaExceeded {
    pub quota: Quota,
    pub limit: u64,
    /// What the user holds now.
    pub used: u64,
    /// What the refused write would have added (1 function, the upload's bytes, 1 execution).
    pub requested: u64,
}

/// Per-user limits checked by the writes that add to them; `None` is unlimited. Each check runs in
/// the transaction of the write it guards, after locking the user's row, so concurrent requests of
/// one user (through any server sharing the database) take turns and cannot overshoot together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserQuotas {
    pub max_functions: Option<u64>,
    pub max_code_bytes: Option<u64>,
    pub max_queued_executions: Option<u64>,
}

impl UserQuotas {
    pub const UNLIMITED: Self = Self {
        max_functions: None,
        max_code_bytes: None,
        max_queued_executions: None,
    };
}

/// What one step of retention deleted (see [`Store::prune_executions`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub log_lines: u64,
    pub executions: u64,
}

/// A session: one login, and the family of refresh tokens it rotates through.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    /// The session's absolute end: no refresh extends it.
    pub expires_at: DateTime<Utc>,
}

/// A refresh token to store: the first of a new session, or the successor of one presented (which
/// it inherits the user and session from). Its `expires_at` is cut to the session's end.
#[derive(Debug, Clone)]
pub struct NextRefreshToken {
    pub id: Uuid,
    pub token_hash: String,
    pub expires_at: DateTime<Utc>,
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was live and is now spent; its successor was stored in the same session.
    Rotated {
        user_id: Uuid,
        session_id: Uuid,
        session_expires_at: DateTime<Utc>,
    },
    /// The token had already been used: its session is now revoked.
    Reused { session_id: Uuid },
    /// The token's session reached its absolute lifetime.
    SessionExpired,
    /// Unknown, expired, or of a revoked session.
    Invalid,
}

#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub key_hash: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Optional filters on an execution listing.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub function_id: Option<Uuid>,
    pub status: Option<ExecutionStatus>,
}

/// A page request: at most `limit` rows with ids below `before` (ids are UUIDv7, so newest first).
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub before: Option<Uuid>,
    pub limit: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
}

/// The persistence seam. Every method that reads or changes a user's data takes the user's id and
/// scopes its query to it: tenancy is enforced here, not left to callers.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    fn backend(&self) -> &'static str;
    fn pool_stats(&self) -> PoolStats;
    async fn ping(&self) -> StoreResult<()>;
    async fn close(&self);

    async fn create_user(&self, user: &User) -> StoreResult<()>;
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    async fn user_by_id(&self, id: Uuid) -> StoreResult<Option<User>>;

    /// Starts `session` with its first refresh token, atomically.
    async fn create_session(
        &self,
        session: &NewSession,
        first: &NextRefreshToken,
    ) -> StoreResult<()>;
    /// Spends `presented_hash` and stores `next` in the same session, atomically. Presenting a
    /// spent token revokes its session; a session past its `expires_at` rotates no more.
    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        next: &NextRefreshToken,
        now: DateTime<Utc>,
    ) -> StoreResult<RefreshOutcome>;
    /// Revokes the session of the presented (live) refresh token; its id, or `None` when there is
    /// no such live token.
    async fn revoke_session(
        &self,
        presented_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Uuid>>;
    /// Whether a session is neither revoked nor past its end (for access tokens, which carry its id).
    async fn session_is_active(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<bool>;

    async fn create_api_key(&self, key: &ApiKeyRecord) -> StoreResult<()>;
    async fn list_api_keys(&self, user_id: Uuid, page: Page) -> StoreResult<Vec<ApiKeyRecord>>;
    async fn delete_api_key(&self, user_id: Uuid, id: Uuid) -> StoreResult<bool>;
    async fn api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>>;
    async fn touch_api_key(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<()>;

    async fn get_code(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>>;

    /// Stores the function and its code (content-addressed: identical code is stored once), unless
    /// that would take the user past `quotas` (functions, code bytes): then
    /// [`StoreError::QuotaExceeded`] and nothing is written.
    async fn create_function(
        &self,
        f: &FunctionRecord,
        code: &[u8],
        quotas: &UserQuotas,
    ) -> StoreResult<()>;
    async fn get_function(&self, user_id: Uuid, id: Uuid) -> StoreResult<Option<FunctionRecord>>;
    async fn list_functions(&self, user_id: Uuid, page: Page) -> StoreResult<Vec<FunctionRecord>>;
    /// Writes `f` (and `new_code`, when the code changed) if the stored version is still
    /// `expected_version`; false when a concurrent update won. Code no function uses any more is removed.
    /// New code larger than the old is checked against the code-bytes quota
    /// ([`StoreError::QuotaExceeded`], nothing written); code that does not grow always passes.
    async fn update_function(
        &self,
        f: &FunctionRecord,
        expected_version: i64,
        new_code: Option<&[u8]>,
        quotas: &UserQuotas,
    ) -> StoreResult<bool>;
    /// Deletes the function and, when no other function uses it, its code.
    async fn delete_function(&self, user_id: Uuid, id: Uuid) -> StoreResult<bool>;

    /// Publishes a layer version and stores its code: the version number is the next of that name
    /// for the user (1 for a new name; numbers are never reused), whatever `layer.version` says.
    /// The user's layer versions and code bytes (functions' and layers' together) are checked
    /// against their quotas first ([`StoreError::QuotaExceeded`], nothing written). Returns the
    /// record as stored.
    async fn publish_layer(
        &self,
        layer: &LayerRecord,
        code: &[u8],
        quotas: &UserQuotas,
    ) -> StoreResult<LayerRecord>;
    async fn get_layer(
        &self,
        user_id: Uuid,
        name: &str,
        version: i64,
    ) -> StoreResult<Option<LayerRecord>>;
    /// The user's layer versions, newest first.
    async fn list_layers(&self, user_id: Uuid, page: Page) -> StoreResult<Vec<LayerRecord>>;
    /// Deletes a layer version and, when nothing else uses it, its code; [`StoreError::InUse`]
    /// (nothing deleted) while a function uses it. False when there is no such version.
    async fn delete_layer(&self, user_id: Uuid, name: &str, version: i64) -> StoreResult<bool>;

    /// Inserts a new execution as given: queued, or already running (a synchronous call starts at
    /// once, so it is recorded running in one write: `started_at`, `node` and `attempts` are stored).
    async fn insert_execution(&self, e: &ExecutionRecord) -> StoreResult<()>;
    /// Inserts a queued asynchronous execution unless its user already has
    /// `quotas.max_queued_executions` queued ([`StoreError::QuotaExceeded`], nothing written).
    async fn enqueue_execution(&self, e: &ExecutionRecord, quotas: &UserQuotas) -> StoreResult<()>;
    async fn get_execution(&self, user_id: Uuid, id: Uuid) -> StoreResult<Option<ExecutionRecord>>;
    async fn list_executions(
        &self,
        user_id: Uuid,
        filter: &ExecutionFilter,
        page: Page,
    ) -> StoreResult<Vec<ExecutionRecord>>;
    /// Marks a queued execution running on `node` and counts the attempt.
    async fn mark_execution_running(
        &self,
        id: Uuid,
        started_at: DateTime<Utc>,
        node: &str,
    ) -> StoreResult<()>;
    /// Claims up to `limit` queued asynchronous executions that are due, marking them running on
    /// `node` (one conditional UPDATE per row, so two dispatchers never claim the same one) and
    /// counting an attempt. Tenants take turns: each user's oldest due execution comes before anyone's
    /// second, so one user's backlog cannot hold the dispatcher.
    async fn claim_async(
        &self,
        node: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<ExecutionRecord>>;
    /// Puts a running execution back in the queue, due at `not_before`.
    async fn requeue_execution(&self, id: Uuid, not_before: DateTime<Utc>) -> StoreResult<()>;
    /// Puts a claimed execution that never ran (no capacity) back in the queue, due at
    /// `not_before`, taking back the attempt its claim counted.
    async fn release_claim(&self, id: Uuid, not_before: DateTime<Utc>) -> StoreResult<()>;
    async fn record_attempt(&self, id: Uuid, attempt: &AttemptRecord) -> StoreResult<()>;
    async fn execution_attempts(&self, id: Uuid) -> StoreResult<Vec<AttemptRecord>>;
    /// After a crash of `node`: its running synchronous executions fail with `Platform.NodeLost`
    /// (their callers are gone). Its running asynchronous ones lost an attempt: it is recorded
    /// (`Platform.NodeLost`), and they go back to the queue while their function's `max_retries`
    /// allows another, else fail, so an execution that crashes the server does not run again after
    /// every restart. Returns (failed, requeued).
    /// Every user's functions with `min_instances > 0` (pre-warmed at start; not tenant-scoped, for
    /// the engine only).
    async fn functions_to_keep_warm(&self) -> StoreResult<Vec<FunctionRecord>>;
    /// Executions waiting in the queue (for the queue-depth gauge).
    async fn queued_executions(&self) -> StoreResult<u64>;
    async fn recover_interrupted(&self, node: &str, now: DateTime<Utc>) -> StoreResult<(u64, u64)>;
    async fn finish_execution(&self, id: Uuid, outcome: &ExecutionOutcome) -> StoreResult<()>;
    /// [`Self::append_logs`] and [`Self::finish_execution`] in one transaction, for an execution
    /// that has no log lines yet (a synchronous one: its logs are stored once, when it ends): stores
    /// `lines` (within `cap_bytes`) and the outcome. Returns whether the logs were truncated (false,
    /// with nothing written, when there is no such execution).
    async fn complete_execution(
        &self,
        id: Uuid,
        outcome: &ExecutionOutcome,
        lines: &[LogLine],
        cap_bytes: usize,
    ) -> StoreResult<bool>;
    /// Appends log lines, keeping the execution's total within `cap_bytes` and flagging truncation.
    async fn append_logs(&self, id: Uuid, lines: &[LogLine], cap_bytes: usize) -> StoreResult<()>;
    async fn execution_logs(
        &self,
        user_id: Uuid,
        id: Uuid,
    ) -> StoreResult<Option<(Vec<LogLine>, bool)>>;

    /// One bounded step of retention over executions that finished before `before` (queued and
    /// running ones are never touched): deletes up to `limit` of their log lines or, once they have
    /// none left, up to `limit` of the executions themselves (their attempts go with them, at most a
    /// few each). Each step is one statement; all zero means nothing is left to prune.
    async fn prune_executions(&self, before: DateTime<Utc>, limit: u32) -> StoreResult<Pruned>;
    /// Whether any function or layer version (of any user) holds the code `sha256`: the engine's
    /// code cache keeps what is referenced.
    async fn code_referenced(&self, sha256: &str) -> StoreResult<bool>;
}

/// Opens the database a `DATABASE_URL` names and runs the migrations.
pub async fn connect(url: &str, max_connections: u32) -> StoreResult<std::sync::Arc<dyn Store>> {
    let store: std::sync::Arc<dyn Store> =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            std::sync::Arc::new(queries::PgStore::connect(url, max_connections).await?)
        } else if url.starts_with("sqlite:") {
            std::sync::Arc::new(queries::SqliteStore::connect(url, max_connections).await?)
        } else {
            return Err(StoreError::UnsupportedUrl(
                url.split('@').next_back().unwrap_or_default().to_string(),
            ));
        };
    Ok(store)
}

/// The current time at the precision both databases keep (microseconds), so that a value written and
/// read back compares equal.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    let micros = t.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(t)
}
