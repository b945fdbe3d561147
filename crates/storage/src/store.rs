//! The store itself: a connection pool of one [`Dialect`]'s database, opening it, the write turns,
//! the [`Admin`] methods, and the helpers the aggregates share (quota checks, the user lock, error
//! mapping).

use async_trait::async_trait;
use sqlx::pool::PoolOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, Database, Pool};
use uuid::Uuid;

use crate::dialect::{Dialect, Lite, Pg, Tx};
use crate::migrations::migrator;
use crate::{PoolStats, Quota, QuotaExceeded, StoreError, StoreResult};

/// The store over one database; implements every aggregate's trait, and so [`crate::Store`].
#[derive(Debug)]
pub(crate) struct SqlStore<D: Dialect> {
    pub(crate) pool: Pool<D::Db>,
    /// Set where the database allows one writer at a time (SQLite): writes take turns here,
    /// in order and without delay, instead of in SQLite's busy handler, which sleeps 1, 2, 5,
    /// 10… ms between retries (most of a busy server's latency, before this).
    writes: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
}

impl<D: Dialect> SqlStore<D> {
    /// This store's turn to write, held until the write (or its transaction) ends.
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.writes {
            Some(writes) => Some(writes.lock().await),
            None => None,
        }
    }

    /// Begins a transaction that writes ([`Dialect::BEGIN_WRITE`]).
    pub(crate) async fn begin_write(&self) -> StoreResult<Tx<D>> {
        Ok(self.pool.begin_with(D::BEGIN_WRITE).await?)
    }

    /// Opens the pool, runs the migrations. The pool pings a connection before handing it out
    /// where [`Dialect::TEST_BEFORE_ACQUIRE`]; writes take turns where [`Dialect::ONE_WRITER`].
    async fn connect_with(
        opts: <<D::Db as Database>::Connection as Connection>::Options,
        max_connections: u32,
    ) -> StoreResult<Self>
    where
        <D::Db as Database>::Connection: sqlx::migrate::Migrate,
    {
        let pool = PoolOptions::<D::Db>::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(std::time::Duration::from_secs(5))
            .test_before_acquire(D::TEST_BEFORE_ACQUIRE)
            .connect_with(opts)
            .await?;
        migrator(D::FLAVOUR).run(&pool).await?;
        let writes = D::ONE_WRITER.then(|| std::sync::Arc::new(tokio::sync::Mutex::new(())));
        Ok(Self { pool, writes })
    }
}

impl SqlStore<Pg> {
    pub(crate) async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let opts: PgConnectOptions = url.parse()?;
        Self::connect_with(opts, max_connections).await
    }
}

impl SqlStore<Lite> {
    pub(crate) async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let opts: SqliteConnectOptions = url.parse()?;
        // WAL lets readers proceed during a write; NORMAL sync is durable across process crashes in WAL
        // mode (only an OS crash can lose the last commits); the busy timeout queues writers instead of
        // failing them with SQLITE_BUSY.
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        Self::connect_with(opts, max_connections).await
    }
}

/// The database as a whole: what it is, whether it answers, its pool.
#[async_trait]
pub trait Admin: Send + Sync {
    fn backend(&self) -> &'static str;
    fn pool_stats(&self) -> PoolStats;
    async fn ping(&self) -> StoreResult<()>;
    async fn close(&self);
}

#[async_trait]
impl<D: Dialect> Admin for SqlStore<D> {
    fn backend(&self) -> &'static str {
        D::BACKEND
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        D::sql("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// The largest UUID: a page with no cursor starts below it, so one statement serves every page.
pub(crate) const ABOVE_ALL_IDS: Uuid = Uuid::max();

/// What a user's stored code takes, functions' and layer versions' together (the code-bytes
/// quota's measure); `$1` is the user. A macro, so that `concat!` builds whole statements.
macro_rules! user_code_bytes {
    () => {
        "CAST((SELECT COALESCE(SUM(code_size_bytes), 0) FROM functions WHERE user_id = $1) \
         + (SELECT COALESCE(SUM(code_size_bytes), 0) FROM layers WHERE user_id = $1) AS BIGINT)"
    };
}
pub(crate) use user_code_bytes;

/// Locks the user's row until the transaction ends (a write that changes nothing; on
/// PostgreSQL a row lock that other quota-checked writes of this user wait for, and that
/// foreign-key checks of unrelated inserts do not). Quota checks run after it.
pub(crate) async fn lock_user<D: Dialect>(tx: &mut Tx<D>, user_id: Uuid) -> StoreResult<()> {
    D::sql("UPDATE users SET updated_at = updated_at WHERE id = $1")
        .id(user_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// `Err(QuotaExceeded)` when `used + requested` would pass `limit` (`None`: unlimited).
pub(crate) fn within(
    quota: Quota,
    limit: Option<u64>,
    used: i64,
    requested: i64,
) -> StoreResult<()> {
    let (used, requested) = (
        u64::try_from(used).unwrap_or(0),
        u64::try_from(requested).unwrap_or(0),
    );
    match limit {
        Some(limit) if used.saturating_add(requested) > limit => {
            Err(StoreError::QuotaExceeded(QuotaExceeded {
                quota,
                limit,
                used,
                requested,
            }))
        }
        _ => Ok(()),
    }
}

pub(crate) fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?}"))
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

pub(crate) fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_foreign_key_violation())
}
