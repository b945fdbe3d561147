//! The SQL, written once and expanded by `store_impl!` for each driver.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::types::Json;
use uuid::Uuid;
use voltrun_domain::execution::{
    AttemptRecord, ExecutionError, ExecutionOutcome, ExecutionRecord, ExecutionStatus,
    InvocationType, LogLine, LogStream,
};
use voltrun_domain::function::{
    CodeKind, FunctionRecord, LogFormat, LogLevel, parse_memory_mb, parse_timeout_s,
};
use voltrun_domain::layer::{FunctionLayer, LayerRecord, MAX_LAYER_VERSIONS_PER_USER};
use voltrun_domain::user::User;

use crate::migrations::{Flavour, migrator};
use crate::{
    ApiKeyRecord, ExecutionFilter, NewSession, NextRefreshToken, Page, PoolStats, Pruned, Quota,
    QuotaExceeded, RefreshOutcome, Store, StoreError, StoreResult, UserQuotas,
};

/// UUID encoding per driver: native on PostgreSQL.
mod pg_ids {
    use sqlx::Row;
    use sqlx::postgres::PgRow;
    use uuid::Uuid;

    pub fn id(u: Uuid) -> Uuid {
        u
    }
    pub fn opt(u: Option<Uuid>) -> Option<Uuid> {
        u
    }
    pub fn get(row: &PgRow, col: &str) -> Result<Uuid, sqlx::Error> {
        row.try_get(col)
    }
}

/// UUID encoding per driver: hyphenated text on SQLite, so rows stay readable with the sqlite3 shell
/// and sort in UUIDv7 time order.
mod sqlite_ids {
    use sqlx::Row;
    use sqlx::sqlite::SqliteRow;
    use uuid::Uuid;
    use uuid::fmt::Hyphenated;

    pub fn id(u: Uuid) -> Hyphenated {
        u.hyphenated()
    }
    pub fn opt(u: Option<Uuid>) -> Option<Hyphenated> {
        u.map(Uuid::hyphenated)
    }
    pub fn get(row: &SqliteRow, col: &str) -> Result<Uuid, sqlx::Error> {
        row.try_get::<Hyphenated, _>(col).map(Hyphenated::into_uuid)
    }
}

/// Log lines per multi-row INSERT: 5 parameters each, well within SQLite's 32,766 and PostgreSQL's
/// 65,535 bound parameters per statement.
const LOG_LINES_PER_INSERT: usize = 1000;

/// Which of `lines` an execution that already keeps `used` bytes of logs (and is `truncated` or not)
/// can keep within `cap_bytes`: the first `kept` lines, in order, up to the first that does not fit.
/// Returns `(kept, used, truncated)` after them.
fn fit_logs(
    lines: &[LogLine],
    mut used: i64,
    mut truncated: bool,
    cap_bytes: usize,
) -> (usize, i64, bool) {
    let cap = i64::try_from(cap_bytes).unwrap_or(i64::MAX);
    let mut kept = 0;
    for line in lines {
        if truncated {
            break;
        }
        let len =
            i64::try_from(voltrun_domain::execution::log_line_cost(&line.line)).unwrap_or(i64::MAX);
        if used + len > cap {
            truncated = true;
            break;
        }
        used += len;
        kept += 1;
    }
    (kept, used, truncated)
}

const INSERT_EXECUTION: &str = "INSERT INTO executions (id, user_id, function_id, function_version, status, \
     invocation_type, input, created_at, started_at, node, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// The largest UUID: a page with no cursor starts below it, so one statement serves every page.
const ABOVE_ALL_IDS: Uuid = Uuid::max();

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_foreign_key_violation())
}

/// What a user's stored code takes, functions' and layer versions' together (the code-bytes
/// quota's measure); `$1` is the user. A macro, so that `concat!` builds whole statements.
macro_rules! user_code_bytes {
    () => {
        "CAST((SELECT COALESCE(SUM(code_size_bytes), 0) FROM functions WHERE user_id = $1) \
         + (SELECT COALESCE(SUM(code_size_bytes), 0) FROM layers WHERE user_id = $1) AS BIGINT)"
    };
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?}"))
}

/// `Err(QuotaExceeded)` when `used + requested` would pass `limit` (`None`: unlimited).
fn within(quota: Quota, limit: Option<u64>, used: i64, requested: i64) -> StoreResult<()> {
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

// Column lists as macros so `concat!` can build whole statements at compile time.
macro_rules! user_cols {
    () => {
        "id, email, name, password_hash, created_at"
    };
}
macro_rules! function_cols {
    () => {
        "id, user_id, name, description, runtime, handler, code_sha256, code_size_bytes, code_kind, \
         code_filename, memory_mb, timeout_s, env_ciphertext, max_retries, max_concurrency, min_instances, version, \
         created_at, updated_at, log_format, log_level, layers"
    };
}
macro_rules! layer_cols {
    () => {
        "id, user_id, name, version, description, code_sha256, code_size_bytes, unzipped_bytes, created_at"
    };
}
macro_rules! execution_cols {
    () => {
        "id, user_id, function_id, function_version, status, invocation_type, input, output, error_type, \
         error_message, created_at, started_at, finished_at, duration_ms, init_duration_ms, memory_peak_mb, \
         cold_start, node, instance_id, logs_truncated, attempts"
    };
}
macro_rules! api_key_cols {
    () => {
        "id, user_id, name, prefix, key_hash, scopes, created_at, last_used_at"
    };
}

macro_rules! store_impl {
    ($store:ident, $db:ty, $pool:ty, $row:ty, $opts:ty, $ids:ident, $flavour:expr, $backend:literal, $begin_write:literal) => {
        #[derive(Debug, Clone)]
        pub struct $store {
            pool: $pool,
            /// Set where the database allows one writer at a time (SQLite): writes take turns here,
            /// in order and without delay, instead of in SQLite's busy handler, which sleeps 1, 2, 5,
            /// 10… ms between retries (most of a busy server's latency, before this).
            writes: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
        }

        impl $store {
            /// This store's turn to write, held until the write (or its transaction) ends.
            async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
                match &self.writes {
                    Some(writes) => Some(writes.lock().await),
                    None => None,
                }
            }

            fn user_from_row(row: &$row) -> StoreResult<User> {
                Ok(User {
                    id: $ids::get(row, "id")?,
                    email: row.try_get("email")?,
                    name: row.try_get("name")?,
                    password_hash: row.try_get("password_hash")?,
                    created_at: row.try_get("created_at")?,
                })
            }

            fn function_from_row(row: &$row) -> StoreResult<FunctionRecord> {
                let kind: String = row.try_get("code_kind")?;
                Ok(FunctionRecord {
                    id: $ids::get(row, "id")?,
                    user_id: $ids::get(row, "user_id")?,
                    name: row.try_get("name")?,
                    description: row.try_get("description")?,
                    runtime: row.try_get("runtime")?,
                    handler: row.try_get("handler")?,
                    code_sha256: row.try_get("code_sha256")?,
                    code_size_bytes: row.try_get("code_size_bytes")?,
                    code_kind: CodeKind::parse(&kind).ok_or_else(|| corrupt("code kind", &kind))?,
                    code_filename: row.try_get("code_filename")?,
                    // Read back within the ranges they were written in, or the row is corrupt:
                    // the engine relies on them (`FunctionRecord::memory_mib`, `timeout`).
                    memory_mb: {
                        let raw: i32 = row.try_get("memory_mb")?;
                        parse_memory_mb(raw.into()).map_err(|_| corrupt("memory size", &raw.to_string()))?
                    },
                    timeout_s: {
                        let raw: i32 = row.try_get("timeout_s")?;
                        parse_timeout_s(raw.into()).map_err(|_| corrupt("timeout", &raw.to_string()))?
                    },
                    env_ciphertext: row.try_get("env_ciphertext")?,
                    max_retries: row.try_get("max_retries")?,
                    max_concurrency: row.try_get("max_concurrency")?,
                    min_instances: row.try_get("min_instances")?,
                    log_format: {
                        let raw: String = row.try_get("log_format")?;
                        LogFormat::parse(&raw).map_err(|_| corrupt("log format", &raw))?
                    },
                    log_level: {
                        let raw: Option<String> = row.try_get("log_level")?;
                        raw.map(|raw| LogLevel::parse(&raw).map_err(|_| corrupt("log level", &raw)))
                            .transpose()?
                    },
                    layers: {
                        let raw: String = row.try_get("layers")?;
                        serde_json::from_str(&raw).map_err(|_| corrupt("layers", &raw))?
                    },
                    version: row.try_get("version")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            fn layer_from_row(row: &$row) -> StoreResult<LayerRecord> {
                Ok(LayerRecord {
                    id: $ids::get(row, "id")?,
                    user_id: $ids::get(row, "user_id")?,
                    name: row.try_get("name")?,
                    version: row.try_get("version")?,
                    description: row.try_get("description")?,
                    code_sha256: row.try_get("code_sha256")?,
                    code_size_bytes: row.try_get("code_size_bytes")?,
                    unzipped_bytes: row.try_get("unzipped_bytes")?,
                    created_at: row.try_get("created_at")?,
                })
            }

            fn execution_from_row(row: &$row) -> StoreResult<ExecutionRecord> {
                let status: String = row.try_get("status")?;
                let invocation: String = row.try_get("invocation_type")?;
                let error_type: Option<String> = row.try_get("error_type")?;
                let error_message: Option<String> = row.try_get("error_message")?;
                let input: Json<serde_json::Value> = row.try_get("input")?;
                let output: Option<Json<serde_json::Value>> = row.try_get("output")?;
                Ok(ExecutionRecord {
                    id: $ids::get(row, "id")?,
                    user_id: $ids::get(row, "user_id")?,
                    function_id: $ids::get(row, "function_id")?,
                    function_version: row.try_get("function_version")?,
                    status: ExecutionStatus::parse(&status).ok_or_else(|| corrupt("execution status", &status))?,
                    invocation_type: InvocationType::parse(&invocation)
                        .ok_or_else(|| corrupt("invocation type", &invocation))?,
                    input: input.0,
                    output: output.map(|j| j.0),
                    error: error_type.map(|error_type| ExecutionError {
                        error_type,
                        message: error_message.unwrap_or_default(),
                    }),
                    created_at: row.try_get("created_at")?,
                    started_at: row.try_get("started_at")?,
                    finished_at: row.try_get("finished_at")?,
                    duration_ms: row.try_get("duration_ms")?,
                    init_duration_ms: row.try_get("init_duration_ms")?,
                    memory_peak_mb: row.try_get("memory_peak_mb")?,
                    cold_start: row.try_get("cold_start")?,
                    node: row.try_get("node")?,
                    instance_id: row.try_get("instance_id")?,
                    logs_truncated: row.try_get("logs_truncated")?,
                    attempts: row.try_get("attempts")?,
                })
            }

            fn api_key_from_row(row: &$row) -> StoreResult<ApiKeyRecord> {
                let scopes: String = row.try_get("scopes")?;
                Ok(ApiKeyRecord {
                    id: $ids::get(row, "id")?,
                    user_id: $ids::get(row, "user_id")?,
                    name: row.try_get("name")?,
                    prefix: row.try_get("prefix")?,
                    key_hash: row.try_get("key_hash")?,
                    scopes: scopes.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
                    created_at: row.try_get("created_at")?,
                    last_used_at: row.try_get("last_used_at")?,
                })
            }
        }

        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            fn pool_stats(&self) -> PoolStats {
                PoolStats { size: self.pool.size(), idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX) }
            }

            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn close(&self) {
                self.pool.close().await;
            }

            async fn create_user(&self, u: &User) -> StoreResult<()> {
                let _turn = self.write_turn().await;
                sqlx::query(
                    "INSERT INTO users (id, email, name, password_hash, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5)",
                )
                .bind($ids::id(u.id))
                .bind(&u.email)
                .bind(&u.name)
                .bind(&u.password_hash)
                .bind(u.created_at)
                .execute(&self.pool)
                .await
                .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict("email") } else { e.into() })?;
                Ok(())
            }

            async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
                const SQL: &str = concat!("SELECT ", user_cols!(), " FROM users WHERE email = $1");
                let row = sqlx::query(SQL).bind(email).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::user_from_row).transpose()
            }

            async fn user_by_id(&self, id: Uuid) -> StoreResult<Option<User>> {
                const SQL: &str = concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1");
                let row = sqlx::query(SQL).bind($ids::id(id)).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::user_from_row).transpose()
            }

            async fn create_session(&self, session: &NewSession, first: &NextRefreshToken) -> StoreResult<()> {
                let _turn = self.write_turn().await;
                let mut tx = self.pool.begin_with($begin_write).await?;
                sqlx::query("INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                    .bind($ids::id(session.id))
                    .bind($ids::id(session.user_id))
                    .bind(session.created_at)
                    .bind(session.expires_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind($ids::id(first.id))
                .bind($ids::id(session.user_id))
                .bind($ids::id(session.id))
                .bind(&first.token_hash)
                .bind(session.created_at)
                .bind(first.expires_at.min(session.expires_at))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn rotate_refresh_token(
                &self,
                presented_hash: &str,
                next: &NextRefreshToken,
                now: DateTime<Utc>,
            ) -> StoreResult<RefreshOutcome> {
                let _turn = self.write_turn().await;
                let mut tx = self.pool.begin_with($begin_write).await?;
                // Spending is one conditional UPDATE, so two concurrent refreshes with the same token
                // cannot both succeed: the loser finds it used and revokes the session.
                let spent = sqlx::query(
                    "UPDATE refresh_tokens SET used_at = $1 \
                     WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 \
                       AND family_id IN (SELECT id FROM sessions WHERE revoked_at IS NULL AND expires_at > $1) \
                     RETURNING user_id, family_id",
                )
                .bind(now)
                .bind(presented_hash)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = spent {
                    let user_id = $ids::get(&row, "user_id")?;
                    let session_id = $ids::get(&row, "family_id")?;
                    let session_expires_at: DateTime<Utc> =
                        sqlx::query_scalar("SELECT expires_at FROM sessions WHERE id = $1")
                            .bind($ids::id(session_id))
                            .fetch_one(&mut *tx)
                            .await?;
                    sqlx::query(
                        "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind($ids::id(next.id))
                    .bind($ids::id(user_id))
                    .bind($ids::id(session_id))
                    .bind(&next.token_hash)
                    .bind(now)
                    .bind(next.expires_at.min(session_expires_at))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    return Ok(RefreshOutcome::Rotated { user_id, session_id, session_expires_at });
                }
                let found = sqlx::query(
                    "SELECT t.family_id, t.used_at, s.expires_at AS session_expires_at \
                     FROM refresh_tokens t JOIN sessions s ON s.id = t.family_id WHERE t.token_hash = $1",
                )
                .bind(presented_hash)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = found else {
                    return Ok(RefreshOutcome::Invalid);
                };
                let session_id = $ids::get(&row, "family_id")?;
                let used_at: Option<DateTime<Utc>> = row.try_get("used_at")?;
                let session_expires_at: DateTime<Utc> = row.try_get("session_expires_at")?;
                if used_at.is_some() {
                    // A spent token came back: someone holds a copy. The session ends, for both.
                    sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                        .bind(now)
                        .bind($ids::id(session_id))
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    return Ok(RefreshOutcome::Reused { session_id });
                }
                Ok(if session_expires_at <= now { RefreshOutcome::SessionExpired } else { RefreshOutcome::Invalid })
            }

            async fn revoke_session(&self, presented_hash: &str, now: DateTime<Utc>) -> StoreResult<Option<Uuid>> {
                let _turn = self.write_turn().await;
                let row = sqlx::query(
                    "UPDATE sessions SET revoked_at = $1 \
                     WHERE revoked_at IS NULL AND id IN \
                       (SELECT family_id FROM refresh_tokens WHERE token_hash = $2 AND used_at IS NULL) \
                     RETURNING id",
                )
                .bind(now)
                .bind(presented_hash)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|row| $ids::get(&row, "id")).transpose().map_err(Into::into)
            }

            async fn session_is_active(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<bool> {
                let row = sqlx::query("SELECT 1 FROM sessions WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2")
                    .bind($ids::id(id))
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.is_some())
            }

            async fn create_api_key(&self, k: &ApiKeyRecord) -> StoreResult<()> {
                let _turn = self.write_turn().await;
                sqlx::query(
                    "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, scopes, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind($ids::id(k.id))
                .bind($ids::id(k.user_id))
                .bind(&k.name)
                .bind(&k.prefix)
                .bind(&k.key_hash)
                .bind(k.scopes.join(","))
                .bind(k.created_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn list_api_keys(&self, user_id: Uuid, page: Page) -> StoreResult<Vec<ApiKeyRecord>> {
                const SQL: &str = concat!("SELECT ", api_key_cols!(), " FROM api_keys WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3");
                let rows = sqlx::query(SQL)
                    .bind($ids::id(user_id))
                    .bind($ids::id(page.before.unwrap_or(ABOVE_ALL_IDS)))
                    .bind(i64::from(page.limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::api_key_from_row).collect()
            }

            async fn delete_api_key(&self, user_id: Uuid, id: Uuid) -> StoreResult<bool> {
                let _turn = self.write_turn().await;
                let done = sqlx::query("DELETE FROM api_keys WHERE id = $1 AND user_id = $2")
                    .bind($ids::id(id))
                    .bind($ids::id(user_id))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
                const SQL: &str = concat!("SELECT ", api_key_cols!(), " FROM api_keys WHERE key_hash = $1");
                let row = sqlx::query(SQL).bind(key_hash).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::api_key_from_row).transpose()
            }

            async fn touch_api_key(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
                let _turn = self.write_turn().await;
                sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind($ids::id(id))
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn get_code(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
                let row = sqlx::query("SELECT data FROM code_blobs WHERE sha256 = $1")
                    .bind(sha256)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|r| r.try_get("data")).transpose()?)
            }

            async fn create_function(&self, f: &FunctionRecord, code: &[u8], quotas: &UserQuotas) -> StoreResult<()> {
                let _turn = self.write_turn().await;
                let mut tx = self.pool.begin_with($begin_write).await?;
                if quotas.max_functions.is_some() || quotas.max_code_bytes.is_some() {
                    Self::lock_user(&mut tx, f.user_id).await?;
                    let row = sqlx::query(concat!(
                        "SELECT (SELECT COUNT(*) FROM functions WHERE user_id = $1) AS functions, ",
                        user_code_bytes!(),
                        " AS code_bytes"
                    ))
                    .bind($ids::id(f.user_id))
                    .fetch_one(&mut *tx)
                    .await?;
                    let refused = within(Quota::Functions, quotas.max_functions, row.try_get("functions")?, 1)
                        .and_then(|()| within(Quota::CodeBytes, quotas.max_code_bytes, row.try_get("code_bytes")?, f.code_size_bytes));
                    if let Err(e) = refused {
                        tx.rollback().await?;
                        return Err(e);
                    }
                }
                Self::put_code(&mut tx, &f.code_sha256, code, f.created_at).await?;
                sqlx::query(
                    "INSERT INTO functions (id, user_id, name, description, runtime, handler, code_sha256, \
                     code_size_bytes, code_kind, code_filename, memory_mb, timeout_s, env_ciphertext, version, \
                     created_at, updated_at, max_retries, max_concurrency, min_instances, log_format, log_level, layers) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)",
                )
                .bind($ids::id(f.id))
                .bind($ids::id(f.user_id))
                .bind(&f.name)
                .bind(&f.description)
                .bind(&f.runtime)
                .bind(&f.handler)
                .bind(&f.code_sha256)
                .bind(f.code_size_bytes)
                .bind(f.code_kind.as_str())
                .bind(&f.code_filename)
                .bind(f.memory_mb)
                .bind(f.timeout_s)
                .bind(&f.env_ciphertext)
                .bind(f.version)
                .bind(f.created_at)
                .bind(f.updated_at)
                .bind(f.max_retries)
                .bind(f.max_concurrency)
                .bind(f.min_instances)
                .bind(f.log_format.as_str())
                .bind(f.log_level.map(LogLevel::as_str))
                .bind(layers_json(&f.layers)?)
                .execute(&mut *tx)
                .await
                .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict("function name") } else { e.into() })?;
                Self::link_layers(&mut tx, f).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_function(&self, user_id: Uuid, id: Uuid) -> StoreResult<Option<FunctionRecord>> {
                const SQL: &str = concat!("SELECT ", function_cols!(), " FROM functions WHERE id = $1 AND user_id = $2");
                let row = sqlx::query(SQL)
                    .bind($ids::id(id))
                    .bind($ids::id(user_id))
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::function_from_row).transpose()
            }

            async fn list_functions(&self, user_id: Uuid, page: Page) -> StoreResult<Vec<FunctionRecord>> {
                const SQL: &str = concat!("SELECT ", function_cols!(), " FROM functions WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3");
                let rows = sqlx::query(SQL)
                    .bind($ids::id(user_id))
                    .bind($ids::id(page.before.unwrap_or(ABOVE_ALL_IDS)))
                    .bind(i64::from(page.limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::function_from_row).collect()
            }

            async fn update_function(
                &self,
                f: &FunctionRecord,
                expected_version: i64,
                new_code: Option<&[u8]>,
                quotas: &UserQuotas,
            ) -> StoreResult<bool> {
                let _turn = self.write_turn().await;
                let mut tx = self.pool.begin_with($begin_write).await?;
                if new_code.is_some() && quotas.max_code_bytes.is_some() {
                    Self::lock_user(&mut tx, f.user_id).await?;
                    let row = sqlx::query(concat!(
                        "SELECT ",
                        user_code_bytes!(),
                        " - CAST(COALESCE((SELECT code_size_bytes FROM functions WHERE id = $2 AND user_id = $1), 0) AS BIGINT) AS others, \
                         CAST(COALESCE((SELECT code_size_bytes FROM functions WHERE id = $2 AND user_id = $1), 0) AS BIGINT) AS own"
                    ))
                    .bind($ids::id(f.user_id))
                    .bind($ids::id(f.id))
                    .fetch_one(&mut *tx)
                    .await?;
                    let (others, own): (i64, i64) = (row.try_get("others")?, row.try_get("own")?);
                    // Code that does not grow always passes, so a user over a lowered limit can
                    // still shrink or fix a function.
                    if f.code_size_bytes > own {
                        if let Err(e) = within(Quota::CodeBytes, quotas.max_code_bytes, others + own, f.code_size_bytes - own) {
                            tx.rollback().await?;
                            return Err(e);
                        }
                    }
                }
                if let Some(code) = new_code {
                    Self::put_code(&mut tx, &f.code_sha256, code, f.updated_at).await?;
                }
                let old_sha: Option<String> =
                    sqlx::query("SELECT code_sha256 FROM functions WHERE id = $1 AND user_id = $2")
                        .bind($ids::id(f.id))
                        .bind($ids::id(f.user_id))
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| r.try_get("code_sha256"))
                        .transpose()?;
                let done = sqlx::query(
                    "UPDATE functions SET name = $1, description = $2, runtime = $3, handler = $4, \
                     code_sha256 = $5, code_size_bytes = $6, code_kind = $7, code_filename = $8, memory_mb = $9, \
                     timeout_s = $10, env_ciphertext = $11, version = $12, updated_at = $13, max_retries = $17, \
                     max_concurrency = $18, min_instances = $19, log_format = $20, log_level = $21, layers = $22 \
                     WHERE id = $14 AND user_id = $15 AND version = $16",
                )
                .bind(&f.name)
                .bind(&f.description)
                .bind(&f.runtime)
                .bind(&f.handler)
                .bind(&f.code_sha256)
                .bind(f.code_size_bytes)
                .bind(f.code_kind.as_str())
                .bind(&f.code_filename)
                .bind(f.memory_mb)
                .bind(f.timeout_s)
                .bind(&f.env_ciphertext)
                .bind(f.version)
                .bind(f.updated_at)
                .bind($ids::id(f.id))
                .bind($ids::id(f.user_id))
                .bind(expected_version)
                .bind(f.max_retries)
                .bind(f.max_concurrency)
                .bind(f.min_instances)
                .bind(f.log_format.as_str())
                .bind(f.log_level.map(LogLevel::as_str))
                .bind(layers_json(&f.layers)?)
                .execute(&mut *tx)
                .await
                .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict("function name") } else { e.into() })?;
                if done.rows_affected() == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                Self::link_layers(&mut tx, f).await?;
                if let Some(old) = old_sha.filter(|old| *old != f.code_sha256) {
                    Self::delete_unreferenced_code(&mut tx, &old).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn delete_function(&self, user_id: Uuid, id: Uuid) -> StoreResult<bool> {
                let _turn = self.write_turn().await;
                let mut tx = self.pool.begin_with($begin_write).await?;
                let deleted = sqlx::query("DELETE FROM functions WHERE id = $1 AND user_id = $2 RETURNING code_sha256")
                    .bind($ids::id(id))
                    .bind($ids::id(user_id))
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = deleted else {
                    tx.rollback().await?;
                    return Ok(false);
                };
                let sha: String = row.try_get("code_sha256")?;
                Self::delete_unreferenced_code(&mut tx, &sha).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn publish_layer(&self, layer: &LayerRecord, code: &[u8], quotas: &UserQuotas) -> StoreResult<LayerRecord> {
                let _turn = self.write_turn().await;
                let mut tx = self.pool.begin_with($begin_write).await?;
                Self::lock_user(&mut tx, layer.user_id).await?;
                let row = sqlx::query(concat!(
                    "SELECT (SELECT COUNT(*) FROM layers WHERE user_id = $1) AS versions, ",
                    user_code_bytes!(),
                    " AS code_bytes"
                ))
                .bind($ids::id(layer.user_id))
                .fetch_one(&mut *tx)
                .await?;
                let refused = within(Quota::LayerVersions, Some(MAX_LAYER_VERSIONS_PER_USER as u64), row.try_get("versions")?, 1)
                    .and_then(|()| within(Quota::CodeBytes, quotas.max_code_bytes, row.try_get("code_bytes")?, layer.code_size_bytes));
                if let Err(e) = refused {
                    tx.rollback().await?;
                    return Err(e);
                }
                let version: i64 = sqlx::query_scalar(
                    "INSERT INTO layer_names (user_id, name, last_version) VALUES ($1, $2, 1) \
                     ON CONFLICT (user_id, name) DO UPDATE SET last_version = layer_names.last_version + 1 \
                     RETURNING last_version",
                )
                .bind($ids::id(layer.user_id))
                .bind(&layer.name)
                .fetch_one(&mut *tx)
                .await?;
                Self::put_code(&mut tx, &layer.code_sha256, code, layer.created_at).await?;
                sqlx::query(
                    "INSERT INTO layers (id, user_id, name, version, description, code_sha256, code_size_bytes, \
                     unzipped_bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind($ids::id(layer.id))
                .bind($ids::id(layer.user_id))
                .bind(&layer.name)
                .bind(version)
                .bind(&layer.description)
                .bind(&layer.code_sha256)
                .bind(layer.code_size_bytes)
                .bind(layer.unzipped_bytes)
                .bind(layer.created_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(LayerRecord { version, ..layer.clone() })
            }

            async fn get_layer(&self, user_id: Uuid, name: &str, version: i64) -> StoreResult<Option<LayerRecord>> {
                const SQL: &str = concat!("SELECT ", layer_cols!(), " FROM layers WHERE user_id = $1 AND name = $2 AND version = $3");
                let row = sqlx::query(SQL)
                    .bind($ids::id(user_id))
                    .bind(name)
                    .bind(version)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::layer_from_row).transpose()
            }

            async fn list_layers(&self, user_id: Uuid, page: Page) -> StoreResult<Vec<LayerRecord>> {
                const SQL: &str = concat!("SELECT ", layer_cols!(), " FROM layers WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3");
                let rows = sqlx::query(SQL)
                    .bind($ids::id(user_id))
                    .bind($ids::id(page.before.unwrap_or(ABOVE_ALL_IDS)))
                    .bind(i64::from(page.limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::layer_from_row).collect()
            }

            async fn delete_layer(&self, user_id: Uuid, name: &str, version: i64) -> StoreResult<bool> {
                let _turn = self.write_turn().await;
                let mut tx = self.pool.begin_with($begin_write).await?;
                let Some(layer) = sqlx::query("SELECT id, code_sha256 FROM layers WHERE user_id = $1 AND name = $2 AND version = $3")
                    .bind($ids::id(user_id))
                    .bind(name)
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?
                else {
                    tx.rollback().await?;
                    return Ok(false);
                };
                let id: Uuid = $ids::get(&layer, "id")?;
                let user: Option<String> = sqlx::query_scalar(
                    "SELECT f.name FROM function_layers fl JOIN functions f ON f.id = fl.function_id \
                     WHERE fl.layer_id = $1 ORDER BY f.name LIMIT 1",
                )
                .bind($ids::id(id))
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(function) = user {
                    tx.rollback().await?;
                    return Err(StoreError::InUse(function));
                }
                // A function that started using it since (PostgreSQL) makes the foreign key refuse.
                sqlx::query("DELETE FROM layers WHERE id = $1")
                    .bind($ids::id(id))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| if is_foreign_key_violation(&e) { StoreError::InUse("a function".into()) } else { e.into() })?;
                let sha: String = layer.try_get("code_sha256")?;
                Self::delete_unreferenced_code(&mut tx, &sha).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn insert_execution(&self, e: &ExecutionRecord) -> StoreResult<()> {
                let _turn = self.write_turn().await;
                Self::bind_new_execution(sqlx::query(INSERT_EXECUTION), e)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn enqueue_execution(&self, e: &ExecutionRecord, quotas: &UserQuotas) -> StoreResult<()> {
                let Some(limit) = quotas.max_queued_executions else {
                    return self.insert_execution(e).await;
                };
                let _turn = self.write_turn().await;
                let mut tx = self.pool.begin_with($begin_write).await?;
                // With the user's row locked, a concurrent enqueue of the same user waits here and
                // then counts this one (PostgreSQL's READ COMMITTED takes a new snapshot for each
                // statement); SQLite's writers take turns anyway.
                Self::lock_user(&mut tx, e.user_id).await?;
                let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM executions WHERE user_id = $1 AND status = 'queued'")
                    .bind($ids::id(e.user_id))
                    .fetch_one(&mut *tx)
                    .await?;
                if let Err(refused) = within(Quota::QueuedExecutions, Some(limit), queued, 1) {
                    tx.rollback().await?;
                    return Err(refused);
                }
                Self::bind_new_execution(sqlx::query(INSERT_EXECUTION), e)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_execution(&self, user_id: Uuid, id: Uuid) -> StoreResult<Option<ExecutionRecord>> {
                const SQL: &str = concat!("SELECT ", execution_cols!(), " FROM executions WHERE id = $1 AND user_id = $2");
                let row = sqlx::query(SQL)
                    .bind($ids::id(id))
                    .bind($ids::id(user_id))
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::execution_from_row).transpose()
            }

            async fn list_executions(
                &self,
                user_id: Uuid,
                filter: &ExecutionFilter,
                page: Page,
            ) -> StoreResult<Vec<ExecutionRecord>> {
                const SQL: &str = concat!(
                    "SELECT ", execution_cols!(), " FROM executions WHERE user_id = $1 AND id < $2 \
                     AND ($3 IS NULL OR function_id = $3) AND ($4 IS NULL OR status = $4) ORDER BY id DESC LIMIT $5"
                );
                let rows = sqlx::query(SQL)
                    .bind($ids::id(user_id))
                    .bind($ids::id(page.before.unwrap_or(ABOVE_ALL_IDS)))
                    .bind($ids::opt(filter.function_id))
                    .bind(filter.status.map(ExecutionStatus::as_str))
                    .bind(i64::from(page.limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::execution_from_row).collect()
            }

            async fn mark_execution_running(&self, id: Uuid, started_at: DateTime<Utc>, node: &str) -> StoreResult<()> {
                let _turn = self.write_turn().await;
                sqlx::query(
                    "UPDATE executions SET status = 'running', started_at = $1, node = $2, attempts = attempts + 1 \
                     WHERE id = $3 AND status = 'queued'",
                )
                .bind(started_at)
                .bind(node)
                .bind($ids::id(id))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn claim_async(&self, node: &str, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<ExecutionRecord>> {
                let _turn = self.write_turn().await;
                // Users with fewer executions running now go first (so a backlog cannot keep the
                // slots as they free one at a time); then each due execution is ranked within its
                // user's (oldest first), and the first of every user comes before anyone's second.
                let due = sqlx::query(
                    "SELECT due.id FROM (SELECT id, user_id, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY id) AS turn \
                     FROM executions WHERE status = 'queued' AND invocation_type = 'async' \
                     AND (not_before IS NULL OR not_before <= $1)) AS due \
                     LEFT JOIN (SELECT user_id, COUNT(*) AS running FROM executions WHERE status = 'running' \
                     GROUP BY user_id) AS busy ON busy.user_id = due.user_id \
                     ORDER BY COALESCE(busy.running, 0), due.turn, due.id LIMIT $2",
                )
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                let mut claimed = Vec::new();
                for row in due {
                    let id = $ids::get(&row, "id")?;
                    const SQL: &str = concat!(
                        "UPDATE executions SET status = 'running', started_at = $1, node = $2, attempts = attempts + 1, \
                         not_before = NULL WHERE id = $3 AND status = 'queued' RETURNING ",
                        execution_cols!()
                    );
                    let row = match sqlx::query(SQL).bind(now).bind(node).bind($ids::id(id)).fetch_optional(&self.pool).await {
                        Ok(row) => row,
                        // Rows claimed so far are already marked running: hand them over rather than
                        // strand them; the rest stay queued for the next round.
                        Err(e) if !claimed.is_empty() => {
                            tracing::warn!(error = %e, "claiming stopped early");
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if let Some(row) = row {
                        claimed.push(Self::execution_from_row(&row)?);
                    }
                }
                Ok(claimed)
            }

            async fn requeue_execution(&self, id: Uuid, not_before: DateTime<Utc>) -> StoreResult<()> {
                let _turn = self.write_turn().await;
                sqlx::query("UPDATE executions SET status = 'queued', not_before = $1 WHERE id = $2 AND status = 'running'")
                    .bind(not_before)
                    .bind($ids::id(id))
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn release_claim(&self, id: Uuid, not_before: DateTime<Utc>) -> StoreResult<()> {
                let _turn = self.write_turn().await;
                sqlx::query(
                    "UPDATE executions SET status = 'queued', not_before = $1, attempts = attempts - 1 \
                     WHERE id = $2 AND status = 'running' AND attempts > 0",
                )
                .bind(not_before)
                .bind($ids::id(id))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn record_attempt(&self, id: Uuid, a: &AttemptRecord) -> StoreResult<()> {
                let _turn = self.write_turn().await;
                sqlx::query(
                    "INSERT INTO execution_attempts (execution_id, attempt, status, error_type, error_message, \
                     started_at, finished_at, duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (execution_id, attempt) DO NOTHING",
                )
                .bind($ids::id(id))
                .bind(a.attempt)
                .bind(a.status.as_str())
                .bind(a.error.as_ref().map(|e| e.error_type.as_str()))
                .bind(a.error.as_ref().map(|e| e.message.as_str()))
                .bind(a.started_at)
                .bind(a.finished_at)
                .bind(a.duration_ms)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn execution_attempts(&self, id: Uuid) -> StoreResult<Vec<AttemptRecord>> {
                let rows = sqlx::query(
                    "SELECT attempt, status, error_type, error_message, started_at, finished_at, duration_ms \
                     FROM execution_attempts WHERE execution_id = $1 ORDER BY attempt",
                )
                .bind($ids::id(id))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let status: String = r.try_get("status")?;
                        let error_type: Option<String> = r.try_get("error_type")?;
                        let message: Option<String> = r.try_get("error_message")?;
                        Ok(AttemptRecord {
                            attempt: r.try_get("attempt")?,
                            status: ExecutionStatus::parse(&status).ok_or_else(|| corrupt("attempt status", &status))?,
                            error: error_type.map(|error_type| ExecutionError { error_type, message: message.unwrap_or_default() }),
                            started_at: r.try_get("started_at")?,
                            finished_at: r.try_get("finished_at")?,
                            duration_ms: r.try_get("duration_ms")?,
                        })
                    })
                    .collect()
            }

            async fn functions_to_keep_warm(&self) -> StoreResult<Vec<FunctionRecord>> {
                const SQL: &str = concat!("SELECT ", function_cols!(), " FROM functions WHERE min_instances > 0");
                let rows = sqlx::query(SQL).fetch_all(&self.pool).await?;
                rows.iter().map(Self::function_from_row).collect()
            }

            async fn queued_executions(&self) -> StoreResult<u64> {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM executions WHERE status = 'queued'")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            async fn recover_interrupted(&self, node: &str, now: DateTime<Utc>) -> StoreResult<(u64, u64)> {
                let _turn = self.write_turn().await;
                let mut tx = self.pool.begin_with($begin_write).await?;
                let failed = sqlx::query(
                    "UPDATE executions SET status = 'failed', finished_at = $1, error_type = 'Platform.NodeLost', \
                     error_message = 'the server stopped while this execution ran; its caller has gone' \
                     WHERE status = 'running' AND invocation_type = 'sync' AND (node = $2 OR node IS NULL)",
                )
                .bind(now)
                .bind(node)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                // The attempt each interrupted asynchronous execution was on, as the history shows it.
                let interrupted = sqlx::query(
                    "SELECT id, attempts, started_at FROM executions \
                     WHERE status = 'running' AND invocation_type = 'async' AND (node = $1 OR node IS NULL)",
                )
                .bind(node)
                .fetch_all(&mut *tx)
                .await?;
                for row in &interrupted {
                    let started: Option<DateTime<Utc>> = row.try_get("started_at")?;
                    let started = started.unwrap_or(now);
                    sqlx::query(
                        "INSERT INTO execution_attempts (execution_id, attempt, status, error_type, error_message, \
                         started_at, finished_at, duration_ms) VALUES ($1, $2, 'failed', 'Platform.NodeLost', \
                         'the server stopped during this attempt', $3, $4, $5) \
                         ON CONFLICT (execution_id, attempt) DO NOTHING",
                    )
                    .bind($ids::id($ids::get(row, "id")?))
                    .bind(row.try_get::<i32, _>("attempts")?)
                    .bind(started)
                    .bind(now)
                    .bind((now - started).num_milliseconds().max(0))
                    .execute(&mut *tx)
                    .await?;
                }
                // Out of attempts (or its function is gone): it ends here.
                let exhausted = sqlx::query(
                    "UPDATE executions SET status = 'failed', finished_at = $1, error_type = 'Platform.NodeLost', \
                     error_message = 'the server stopped during each of its attempts' \
                     WHERE status = 'running' AND invocation_type = 'async' AND (node = $2 OR node IS NULL) \
                     AND attempts > COALESCE((SELECT max_retries FROM functions WHERE functions.id = executions.function_id), 0)",
                )
                .bind(now)
                .bind(node)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let requeued = sqlx::query(
                    "UPDATE executions SET status = 'queued', not_before = NULL \
                     WHERE status = 'running' AND invocation_type = 'async' AND (node = $1 OR node IS NULL)",
                )
                .bind(node)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let failed = failed + exhausted;
                tx.commit().await?;
                Ok((failed, requeued))
            }

            async fn finish_execution(&self, id: Uuid, o: &ExecutionOutcome) -> StoreResult<()> {
                let _turn = self.write_turn().await;
                Self::bind_outcome(sqlx::query(
                    "UPDATE executions SET status = $1, output = $2, error_type = $3, error_message = $4, \
                     started_at = $5, finished_at = $6, duration_ms = $7, init_duration_ms = $8, \
                     memory_peak_mb = $9, cold_start = $10, node = $11, instance_id = $12 WHERE id = $13",
                ), o)
                .bind($ids::id(id))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn append_logs(&self, id: Uuid, lines: &[LogLine], cap_bytes: usize) -> StoreResult<()> {
                let _turn = self.write_turn().await;
                let mut tx = self.pool.begin_with($begin_write).await?;
                let row = sqlx::query(
                    "SELECT logs_bytes, logs_truncated, \
                     (SELECT COUNT(*) FROM execution_logs WHERE execution_id = $1) AS line_count \
                     FROM executions WHERE id = $1",
                )
                .bind($ids::id(id))
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    tx.rollback().await?;
                    return Ok(());
                };
                let (kept, used, truncated) =
                    fit_logs(lines, row.try_get("logs_bytes")?, row.try_get("logs_truncated")?, cap_bytes);
                Self::insert_log_rows(&mut tx, id, row.try_get("line_count")?, &lines[..kept]).await?;
                sqlx::query("UPDATE executions SET logs_bytes = $1, logs_truncated = $2 WHERE id = $3")
                    .bind(used)
                    .bind(truncated)
                    .bind($ids::id(id))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn complete_execution(
                &self,
                id: Uuid,
                o: &ExecutionOutcome,
                lines: &[LogLine],
                cap_bytes: usize,
            ) -> StoreResult<bool> {
                let _turn = self.write_turn().await;
                // The execution has no log lines yet: they start at 0 bytes, sequence 0.
                let (kept, used, truncated) = fit_logs(lines, 0, false, cap_bytes);
                let mut tx = self.pool.begin_with($begin_write).await?;
                let updated = Self::bind_outcome(sqlx::query(
                    "UPDATE executions SET status = $1, output = $2, error_type = $3, error_message = $4, \
                     started_at = $5, finished_at = $6, duration_ms = $7, init_duration_ms = $8, \
                     memory_peak_mb = $9, cold_start = $10, node = $11, instance_id = $12, \
                     logs_bytes = $13, logs_truncated = $14 WHERE id = $15",
                ), o)
                .bind(used)
                .bind(truncated)
                .bind($ids::id(id))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                Self::insert_log_rows(&mut tx, id, 0, &lines[..kept]).await?;
                tx.commit().await?;
                Ok(truncated)
            }

            async fn execution_logs(&self, user_id: Uuid, id: Uuid) -> StoreResult<Option<(Vec<LogLine>, bool)>> {
                let Some(owner) = sqlx::query("SELECT logs_truncated FROM executions WHERE id = $1 AND user_id = $2")
                    .bind($ids::id(id))
                    .bind($ids::id(user_id))
                    .fetch_optional(&self.pool)
                    .await?
                else {
                    return Ok(None);
                };
                let truncated: bool = owner.try_get("logs_truncated")?;
                let rows = sqlx::query("SELECT ts, stream, line FROM execution_logs WHERE execution_id = $1 ORDER BY seq")
                    .bind($ids::id(id))
                    .fetch_all(&self.pool)
                    .await?;
                let lines = rows
                    .iter()
                    .map(|r| {
                        let stream: String = r.try_get("stream")?;
                        Ok(LogLine {
                            timestamp: r.try_get("ts")?,
                            stream: LogStream::parse(&stream).ok_or_else(|| corrupt("log stream", &stream))?,
                            line: r.try_get("line")?,
                        })
                    })
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(Some((lines, truncated)))
            }

            async fn prune_executions(&self, before: DateTime<Utc>, limit: u32) -> StoreResult<Pruned> {
                let _turn = self.write_turn().await;
                // Log lines first, a bounded number per statement: an execution may have thousands,
                // and deleting it would take them all in one statement (ON DELETE CASCADE).
                let log_lines = sqlx::query(
                    "DELETE FROM execution_logs WHERE (execution_id, seq) IN \
                     (SELECT l.execution_id, l.seq FROM execution_logs l JOIN executions e ON e.id = l.execution_id \
                      WHERE e.finished_at < $1 AND e.status NOT IN ('queued', 'running') LIMIT $2)",
                )
                .bind(before)
                .bind(i64::from(limit))
                .execute(&self.pool)
                .await?
                .rows_affected();
                if log_lines > 0 {
                    return Ok(Pruned { log_lines, executions: 0 });
                }
                // No log lines left among them: the cascade takes only their attempts (a few each).
                let executions = sqlx::query(
                    "DELETE FROM executions WHERE id IN \
                     (SELECT id FROM executions WHERE finished_at < $1 AND status NOT IN ('queued', 'running') LIMIT $2)",
                )
                .bind(before)
                .bind(i64::from(limit))
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(Pruned { log_lines: 0, executions })
            }

            async fn code_referenced(&self, sha256: &str) -> StoreResult<bool> {
                Ok(sqlx::query(
                    "SELECT 1 FROM functions WHERE code_sha256 = $1 \
                     UNION ALL SELECT 1 FROM layers WHERE code_sha256 = $1 LIMIT 1",
                )
                    .bind(sha256)
                    .fetch_optional(&self.pool)
                    .await?
                    .is_some())
            }
        }

        impl $store {
            /// Locks the user's row until the transaction ends (a write that changes nothing; on
            /// PostgreSQL a row lock that other quota-checked writes of this user wait for, and that
            /// foreign-key checks of unrelated inserts do not). Quota checks run after it.
            async fn lock_user(tx: &mut sqlx::Transaction<'static, $db>, user_id: Uuid) -> StoreResult<()> {
                sqlx::query("UPDATE users SET updated_at = updated_at WHERE id = $1")
                    .bind($ids::id(user_id))
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            /// Binds a new execution as [`INSERT_EXECUTION`]'s parameters.
            fn bind_new_execution<'q>(
                query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>,
                e: &'q ExecutionRecord,
            ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments> {
                query
                    .bind($ids::id(e.id))
                    .bind($ids::id(e.user_id))
                    .bind($ids::id(e.function_id))
                    .bind(e.function_version)
                    .bind(e.status.as_str())
                    .bind(e.invocation_type.as_str())
                    .bind(Json(&e.input))
                    .bind(e.created_at)
                    .bind(e.started_at)
                    .bind(e.node.as_deref())
                    .bind(e.attempts)
            }

            /// Binds an outcome as the finishing statements' first twelve parameters, `status` ($1)
            /// to `instance_id` ($12).
            fn bind_outcome<'q>(
                query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>,
                o: &'q ExecutionOutcome,
            ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments> {
                query
                    .bind(o.status.as_str())
                    .bind(o.output.as_ref().map(Json))
                    .bind(o.error.as_ref().map(|e| e.error_type.as_str()))
                    .bind(o.error.as_ref().map(|e| e.message.as_str()))
                    .bind(o.started_at)
                    .bind(o.finished_at)
                    .bind(o.duration_ms)
                    .bind(o.init_duration_ms)
                    .bind(o.memory_peak_mb)
                    .bind(o.cold_start)
                    .bind(&o.node)
                    .bind(&o.instance_id)
            }

            /// Inserts log lines numbered from `first_seq`, in a few statements however many there are.
            async fn insert_log_rows(
                tx: &mut sqlx::Transaction<'static, $db>,
                id: Uuid,
                first_seq: i64,
                lines: &[LogLine],
            ) -> StoreResult<()> {
                let mut seq = first_seq;
                for chunk in lines.chunks(LOG_LINES_PER_INSERT) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO execution_logs (execution_id, seq, ts, stream, line) ",
                    );
                    insert.push_values(chunk, |mut row, line| {
                        row.push_bind($ids::id(id))
                            .push_bind(seq)
                            .push_bind(line.timestamp)
                            .push_bind(line.stream.as_str())
                            .push_bind(line.line.as_str());
                        seq += 1;
                    });
                    insert.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Records which layer versions `f` uses (replacing what it used), so that none of them
            /// can be deleted while it does; [`StoreError::Gone`] if one was deleted meanwhile.
            async fn link_layers(tx: &mut sqlx::Transaction<'static, $db>, f: &FunctionRecord) -> StoreResult<()> {
                sqlx::query("DELETE FROM function_layers WHERE function_id = $1")
                    .bind($ids::id(f.id))
                    .execute(&mut **tx)
                    .await?;
                for (position, layer) in f.layers.iter().enumerate() {
                    sqlx::query("INSERT INTO function_layers (function_id, layer_id, position) VALUES ($1, $2, $3)")
                        .bind($ids::id(f.id))
                        .bind($ids::id(layer.id))
                        .bind(i64::try_from(position).unwrap_or(i64::MAX))
                        .execute(&mut **tx)
                        .await
                        .map_err(|e| if is_foreign_key_violation(&e) { StoreError::Gone("layer version") } else { e.into() })?;
                }
                Ok(())
            }

            async fn put_code(
                tx: &mut sqlx::Transaction<'static, $db>,
                sha256: &str,
                data: &[u8],
                now: DateTime<Utc>,
            ) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO code_blobs (sha256, data, size_bytes, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (sha256) DO NOTHING",
                )
                .bind(sha256)
                .bind(data)
                .bind(i64::try_from(data.len()).unwrap_or(i64::MAX))
                .bind(now)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            async fn delete_unreferenced_code(
            tx: &mut sqlx::Transaction<'static, $db>,
            sha: &str,
        ) -> StoreResult<()> {
            sqlx::query(
                "DELETE FROM code_blobs WHERE sha256 = $1 \
                 AND NOT EXISTS (SELECT 1 FROM functions WHERE code_sha256 = $1) \
                 AND NOT EXISTS (SELECT 1 FROM layers WHERE code_sha256 = $1)",
            )
            .bind(sha)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }
        }

        impl $store {
            /// `test_before_acquire`: ping a pooled connection before handing it out, to replace one
            /// the server has dropped. Every connection is also pinged when it is returned.
            /// `serialize_writes`: writes take turns in this process (see `writes`).
            pub async fn connect_with(
                opts: $opts,
                max_connections: u32,
                test_before_acquire: bool,
                serialize_writes: bool,
            ) -> StoreResult<Self> {
                let pool = sqlx::pool::PoolOptions::<$db>::new()
                    .max_connections(max_connections.max(1))
                    .acquire_timeout(std::time::Duration::from_secs(5))
                    .test_before_acquire(test_before_acquire)
                    .connect_with(opts)
                    .await?;
                migrator($flavour).run(&pool).await?;
                let writes = serialize_writes.then(|| std::sync::Arc::new(tokio::sync::Mutex::new(())));
                Ok(Self { pool, writes })
            }
        }
    };
}

store_impl!(
    PgStore,
    sqlx::Postgres,
    sqlx::PgPool,
    sqlx::postgres::PgRow,
    sqlx::postgres::PgConnectOptions,
    pg_ids,
    Flavour::Postgres,
    "postgres",
    "BEGIN"
);
store_impl!(
    SqliteStore,
    sqlx::Sqlite,
    sqlx::SqlitePool,
    sqlx::sqlite::SqliteRow,
    sqlx::sqlite::SqliteConnectOptions,
    sqlite_ids,
    Flavour::Sqlite,
    "sqlite",
    // A deferred SQLite transaction that reads and then writes fails at once with "database is locked"
    // when another connection wrote in between (the busy timeout does not apply to that upgrade).
    // Taking the write lock up front makes writers queue on the busy timeout instead.
    "BEGIN IMMEDIATE"
);

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let opts: sqlx::postgres::PgConnectOptions = url.parse()?;
        // A PostgreSQL connection can die while idle (server restart, proxy timeout): test it first.
        // Row locks: concurrent writers need no turns.
        Self::connect_with(opts, max_connections, true, false).await
    }
}

impl SqliteStore {
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
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
        // An SQLite connection is a file handle in this process, driven by its own worker thread; it
        // cannot be dropped by a server, so the ping before each acquire (a round trip to that thread
        // on every query) buys nothing. The ping on release still runs.
        // One writer at a time: take turns in the process rather than in the busy handler.
        Self::connect_with(opts, max_connections, false, true).await
    }
}

/// A function's layers as its row keeps them (an error rather than an empty list: writing `[]`
/// would silently drop them).
fn layers_json(layers: &[FunctionLayer]) -> StoreResult<String> {
    serde_json::to_string(layers).map_err(|e| StoreError::Corrupt(format!("layers: {e}")))
}
