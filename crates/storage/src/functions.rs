//! Functions and the code they run: function records, the content-addressed code blobs (shared with
//! layer versions, see `layers.rs`), and the links from a function to the layer versions it uses.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use voltrun_domain::function::{FunctionRecord, LogLevel};
use voltrun_domain::layer::FunctionLayer;

use crate::dialect::{Columns, Dialect, Tx};
use crate::rows::{self, function_cols};
use crate::store::{
    SqlStore, is_foreign_key_violation, is_unique_violation, lock_user, user_code_bytes, within,
};
use crate::{Page, Quota, StoreError, StoreResult, UserQuotas};

/// Functions and their code.
#[async_trait]
pub trait Functions: Send + Sync {
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

    /// Every user's functions with `min_instances > 0` (pre-warmed at start; not tenant-scoped, for
    /// the engine only).
    async fn functions_to_keep_warm(&self) -> StoreResult<Vec<FunctionRecord>>;
    /// Whether any function or layer version (of any user) holds the code `sha256`: the engine's
    /// code cache keeps what is referenced.
    async fn code_referenced(&self, sha256: &str) -> StoreResult<bool>;
}

/// Maps a write's error: a unique violation is a name another of the user's functions has.
fn name_conflict(e: sqlx::Error) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict("function name")
    } else {
        e.into()
    }
}

#[async_trait]
impl<D: Dialect> Functions for SqlStore<D> {
    async fn get_code(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
        let row = D::sql("SELECT data FROM code_blobs WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.col("data")).transpose()?)
    }

    async fn create_function(
        &self,
        f: &FunctionRecord,
        code: &[u8],
        quotas: &UserQuotas,
    ) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        if quotas.max_functions.is_some() || quotas.max_code_bytes.is_some() {
            lock_user::<D>(&mut tx, f.user_id).await?;
            let row = D::sql(concat!(
                "SELECT (SELECT COUNT(*) FROM functions WHERE user_id = $1) AS functions, ",
                user_code_bytes!(),
                " AS code_bytes"
            ))
            .id(f.user_id)
            .fetch_one(&mut tx)
            .await?;
            let refused = within(
                Quota::Functions,
                quotas.max_functions,
                row.col("functions")?,
                1,
            )
            .and_then(|()| {
                within(
                    Quota::CodeBytes,
                    quotas.max_code_bytes,
                    row.col("code_bytes")?,
                    f.code_size_bytes,
                )
            });
            if let Err(e) = refused {
                tx.rollback().await?;
                return Err(e);
            }
        }
        put_code::<D>(&mut tx, &f.code_sha256, code, f.created_at).await?;
        D::sql(
            "INSERT INTO functions (id, user_id, name, description, runtime, handler, code_sha256, \
             code_size_bytes, code_kind, code_filename, memory_mb, timeout_s, env_ciphertext, version, \
             created_at, updated_at, max_retries, max_concurrency, min_instances, log_format, log_level, layers) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)",
        )
        .id(f.id)
        .id(f.user_id)
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
        .execute(&mut tx)
        .await
        .map_err(name_conflict)?;
        link_layers::<D>(&mut tx, f).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_function(&self, user_id: Uuid, id: Uuid) -> StoreResult<Option<FunctionRecord>> {
        const SQL: &str = concat!(
            "SELECT ",
            function_cols!(),
            " FROM functions WHERE id = $1 AND user_id = $2"
        );
        let row = D::sql(SQL)
            .id(id)
            .id(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::function).transpose()
    }

    async fn list_functions(&self, user_id: Uuid, page: Page) -> StoreResult<Vec<FunctionRecord>> {
        const SQL: &str = concat!(
            "SELECT ",
            function_cols!(),
            " FROM functions WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
        );
        let rows = D::sql(SQL)
            .id(user_id)
            .page(page)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::function).collect()
    }

    async fn update_function(
        &self,
        f: &FunctionRecord,
        expected_version: i64,
        new_code: Option<&[u8]>,
        quotas: &UserQuotas,
    ) -> StoreResult<bool> {
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        if new_code.is_some() && quotas.max_code_bytes.is_some() {
            lock_user::<D>(&mut tx, f.user_id).await?;
            let row = D::sql(concat!(
                "SELECT ",
                user_code_bytes!(),
                " - CAST(COALESCE((SELECT code_size_bytes FROM functions WHERE id = $2 AND user_id = $1), 0) AS BIGINT) AS others, \
                 CAST(COALESCE((SELECT code_size_bytes FROM functions WHERE id = $2 AND user_id = $1), 0) AS BIGINT) AS own"
            ))
            .id(f.user_id)
            .id(f.id)
            .fetch_one(&mut tx)
            .await?;
            let (others, own): (i64, i64) = (row.col("others")?, row.col("own")?);
            // Code that does not grow always passes, so a user over a lowered limit can
            // still shrink or fix a function.
            if f.code_size_bytes > own
                && let Err(e) = within(
                    Quota::CodeBytes,
                    quotas.max_code_bytes,
                    others + own,
                    f.code_size_bytes - own,
                )
            {
                tx.rollback().await?;
                return Err(e);
            }
        }
        if let Some(code) = new_code {
            put_code::<D>(&mut tx, &f.code_sha256, code, f.updated_at).await?;
        }
        let old_sha: Option<String> =
            D::sql("SELECT code_sha256 FROM functions WHERE id = $1 AND user_id = $2")
                .id(f.id)
                .id(f.user_id)
                .fetch_optional(&mut tx)
                .await?
                .map(|r| r.col("code_sha256"))
                .transpose()?;
        let updated = D::sql(
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
        .id(f.id)
        .id(f.user_id)
        .bind(expected_version)
        .bind(f.max_retries)
        .bind(f.max_concurrency)
        .bind(f.min_instances)
        .bind(f.log_format.as_str())
        .bind(f.log_level.map(LogLevel::as_str))
        .bind(layers_json(&f.layers)?)
        .execute(&mut tx)
        .await
        .map_err(name_conflict)?;
        if updated == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        link_layers::<D>(&mut tx, f).await?;
        if let Some(old) = old_sha.filter(|old| *old != f.code_sha256) {
            delete_unreferenced_code::<D>(&mut tx, &old).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_function(&self, user_id: Uuid, id: Uuid) -> StoreResult<bool> {
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        let deleted =
            D::sql("DELETE FROM functions WHERE id = $1 AND user_id = $2 RETURNING code_sha256")
                .id(id)
                .id(user_id)
                .fetch_optional(&mut tx)
                .await?;
        let Some(row) = deleted else {
            tx.rollback().await?;
            return Ok(false);
        };
        let sha: String = row.col("code_sha256")?;
        delete_unreferenced_code::<D>(&mut tx, &sha).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn functions_to_keep_warm(&self) -> StoreResult<Vec<FunctionRecord>> {
        const SQL: &str = concat!(
            "SELECT ",
            function_cols!(),
            " FROM functions WHERE min_instances > 0"
        );
        let rows = D::sql(SQL).fetch_all(&self.pool).await?;
        rows.iter().map(rows::function).collect()
    }

    async fn code_referenced(&self, sha256: &str) -> StoreResult<bool> {
        Ok(D::sql(
            "SELECT 1 FROM functions WHERE code_sha256 = $1 \
             UNION ALL SELECT 1 FROM layers WHERE code_sha256 = $1 LIMIT 1",
        )
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }
}

/// Records which layer versions `f` uses (replacing what it used), so that none of them
/// can be deleted while it does; [`StoreError::Gone`] if one was deleted meanwhile.
async fn link_layers<D: Dialect>(tx: &mut Tx<D>, f: &FunctionRecord) -> StoreResult<()> {
    D::sql("DELETE FROM function_layers WHERE function_id = $1")
        .id(f.id)
        .execute(&mut *tx)
        .await?;
    for (position, layer) in f.layers.iter().enumerate() {
        D::sql("INSERT INTO function_layers (function_id, layer_id, position) VALUES ($1, $2, $3)")
            .id(f.id)
            .id(layer.id)
            .bind(i64::try_from(position).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if is_foreign_key_violation(&e) {
                    StoreError::Gone("layer version")
                } else {
                    e.into()
                }
            })?;
    }
    Ok(())
}

/// Stores a code blob unless one with its hash is stored already.
pub(crate) async fn put_code<D: Dialect>(
    tx: &mut Tx<D>,
    sha256: &str,
    data: &[u8],
    now: DateTime<Utc>,
) -> StoreResult<()> {
    D::sql(
        "INSERT INTO code_blobs (sha256, data, size_bytes, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (sha256) DO NOTHING",
    )
    .bind(sha256)
    .bind(data)
    .bind(i64::try_from(data.len()).unwrap_or(i64::MAX))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Deletes a code blob that no function or layer version holds any more.
pub(crate) async fn delete_unreferenced_code<D: Dialect>(
    tx: &mut Tx<D>,
    sha: &str,
) -> StoreResult<()> {
    D::sql(
        "DELETE FROM code_blobs WHERE sha256 = $1 \
         AND NOT EXISTS (SELECT 1 FROM functions WHERE code_sha256 = $1) \
         AND NOT EXISTS (SELECT 1 FROM layers WHERE code_sha256 = $1)",
    )
    .bind(sha)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A function's layers as its row keeps them (an error rather than an empty list: writing `[]`
/// would silently drop them).
fn layers_json(layers: &[FunctionLayer]) -> StoreResult<String> {
    serde_json::to_string(layers).map_err(|e| StoreError::Corrupt(format!("layers: {e}")))
}
