//! VoltRun's persistence. One [`Store`] interface, implemented for SQLite (the embedded default) and
//! PostgreSQL from the same SQL text: sqlx's SQLite driver reads `$N` placeholders as argument N, so
//! each statement is written once, in code generic over a `Dialect` (`dialect.rs`), which
//! holds what differs: chiefly the encoding of UUIDs (native `uuid` on PostgreSQL, hyphenated `TEXT`
//! on SQLite) and how writers take turns.
//!
//! [`Store`] is the sum of one trait per aggregate, each in its own file with its SQL: users,
//! sessions and API keys (`users.rs`), functions and their code (`functions.rs`), layers
//! (`layers.rs`), executions and their logs (`executions.rs`), the asynchronous queue
//! (`queue.rs`), and the database itself (`store.rs`, [`Admin`]). Rows map to records in
//! `rows.rs`.

mod dialect;
mod executions;
mod functions;
mod layers;
mod migrations;
mod queue;
mod rows;
mod store;
mod users;

use chrono::{DateTime, Utc};
use uuid::Uuid;
use voltrun_domain::execution::ExecutionStatus;

use crate::dialect::{Lite, Pg};
use crate::store::SqlStore;

pub use executions::Executions;
pub use functions::Functions;
pub use layers::Layers;
pub use migrations::migrate;
pub use queue::Queue;
pub use store::Admin;
pub use users::Users;

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

/// What one step of retention deleted (see [`Executions::prune_executions`]).
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

/// The persistence seam: every aggregate's methods together, one object (`Arc<dyn Store>`) for
/// callers to hold. Every method that reads or changes a user's data takes the user's id and
/// scopes its query to it: tenancy is enforced here, not left to callers.
///
/// The methods live on the per-aggregate traits ([`Admin`], [`Users`], [`Functions`], [`Layers`],
/// [`Executions`], [`Queue`]); they are callable on a `dyn Store` (or any `T: Store`) without
/// importing those traits.
pub trait Store:
    Admin + Users + Functions + Layers + Executions + Queue + Send + Sync + std::fmt::Debug
{
}

impl<T> Store for T where
    T: Admin + Users + Functions + Layers + Executions + Queue + Send + Sync + std::fmt::Debug
{
}

/// Opens the database a `DATABASE_URL` names and runs the migrations.
pub async fn connect(url: &str, max_connections: u32) -> StoreResult<std::sync::Arc<dyn Store>> {
    let store: std::sync::Arc<dyn Store> =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            std::sync::Arc::new(SqlStore::<Pg>::connect(url, max_connections).await?)
        } else if url.starts_with("sqlite:") {
            std::sync::Arc::new(SqlStore::<Lite>::connect(url, max_connections).await?)
        } else {
            return Err(StoreError::UnsupportedUrl(
                url.split('@').next_back().unwrap_or_default().to_string(),
            ));
        };
    Ok(store)
}

/// The current time at the precision both databases keep (microseconds), so that a value written and
/// read back compares equal.
pub use voltrun_domain::now;
