//! Layers: a user's published layer versions (numbered per name, never reused) and their code,
//! which lives in the code blobs of `functions.rs`.

use async_trait::async_trait;
use uuid::Uuid;
use voltrun_domain::layer::{LayerRecord, MAX_LAYER_VERSIONS_PER_USER};

use crate::dialect::{Columns, Dialect};
use crate::functions::{delete_unreferenced_code, put_code};
use crate::rows::{self, layer_cols};
use crate::store::{SqlStore, is_foreign_key_violation, lock_user, user_code_bytes, within};
use crate::{Page, Quota, StoreError, StoreResult, UserQuotas};

/// Layer versions.
#[async_trait]
pub trait Layers: Send + Sync {
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
}

#[async_trait]
impl<D: Dialect> Layers for SqlStore<D> {
    async fn publish_layer(
        &self,
        layer: &LayerRecord,
        code: &[u8],
        quotas: &UserQuotas,
    ) -> StoreResult<LayerRecord> {
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        lock_user::<D>(&mut tx, layer.user_id).await?;
        let row = D::sql(concat!(
            "SELECT (SELECT COUNT(*) FROM layers WHERE user_id = $1) AS versions, ",
            user_code_bytes!(),
            " AS code_bytes"
        ))
        .id(layer.user_id)
        .fetch_one(&mut tx)
        .await?;
        let refused = within(
            Quota::LayerVersions,
            Some(MAX_LAYER_VERSIONS_PER_USER as u64),
            row.col("versions")?,
            1,
        )
        .and_then(|()| {
            within(
                Quota::CodeBytes,
                quotas.max_code_bytes,
                row.col("code_bytes")?,
                layer.code_size_bytes,
            )
        });
        if let Err(e) = refused {
            tx.rollback().await?;
            return Err(e);
        }
        let version: i64 = D::sql(
            "INSERT INTO layer_names (user_id, name, last_version) VALUES ($1, $2, 1) \
             ON CONFLICT (user_id, name) DO UPDATE SET last_version = layer_names.last_version + 1 \
             RETURNING last_version",
        )
        .id(layer.user_id)
        .bind(&layer.name)
        .fetch_one(&mut tx)
        .await?
        .col("last_version")?;
        put_code::<D>(&mut tx, &layer.code_sha256, code, layer.created_at).await?;
        D::sql(
            "INSERT INTO layers (id, user_id, name, version, description, code_sha256, code_size_bytes, \
             unzipped_bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .id(layer.id)
        .id(layer.user_id)
        .bind(&layer.name)
        .bind(version)
        .bind(&layer.description)
        .bind(&layer.code_sha256)
        .bind(layer.code_size_bytes)
        .bind(layer.unzipped_bytes)
        .bind(layer.created_at)
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(LayerRecord {
            version,
            ..layer.clone()
        })
    }

    async fn get_layer(
        &self,
        user_id: Uuid,
        name: &str,
        version: i64,
    ) -> StoreResult<Option<LayerRecord>> {
        const SQL: &str = concat!(
            "SELECT ",
            layer_cols!(),
            " FROM layers WHERE user_id = $1 AND name = $2 AND version = $3"
        );
        let row = D::sql(SQL)
            .id(user_id)
            .bind(name)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::layer).transpose()
    }

    async fn list_layers(&self, user_id: Uuid, page: Page) -> StoreResult<Vec<LayerRecord>> {
        const SQL: &str = concat!(
            "SELECT ",
            layer_cols!(),
            " FROM layers WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
        );
        let rows = D::sql(SQL)
            .id(user_id)
            .page(page)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::layer).collect()
    }

    async fn delete_layer(&self, user_id: Uuid, name: &str, version: i64) -> StoreResult<bool> {
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        let Some(layer) = D::sql(
            "SELECT id, code_sha256 FROM layers WHERE user_id = $1 AND name = $2 AND version = $3",
        )
        .id(user_id)
        .bind(name)
        .bind(version)
        .fetch_optional(&mut tx)
        .await?
        else {
            tx.rollback().await?;
            return Ok(false);
        };
        let id: Uuid = layer.id("id")?;
        let user: Option<String> = D::sql(
            "SELECT f.name AS function_name FROM function_layers fl JOIN functions f ON f.id = fl.function_id \
             WHERE fl.layer_id = $1 ORDER BY f.name LIMIT 1",
        )
        .id(id)
        .fetch_optional(&mut tx)
        .await?
        .map(|row| row.col("function_name"))
        .transpose()?;
        if let Some(function) = user {
            tx.rollback().await?;
            return Err(StoreError::InUse(function));
        }
        // A function that started using it since (PostgreSQL) makes the foreign key refuse.
        D::sql("DELETE FROM layers WHERE id = $1")
            .id(id)
            .execute(&mut tx)
            .await
            .map_err(|e| {
                if is_foreign_key_violation(&e) {
                    StoreError::InUse("a function".into())
                } else {
                    e.into()
                }
            })?;
        let sha: String = layer.col("code_sha256")?;
        delete_unreferenced_code::<D>(&mut tx, &sha).await?;
        tx.commit().await?;
        Ok(true)
    }
}
