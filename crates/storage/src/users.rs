//! Users and how they authenticate: accounts, login sessions with their rotating refresh tokens,
//! and API keys.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use voltrun_domain::user::User;

use crate::dialect::{Columns, Dialect};
use crate::rows::{self, api_key_cols, user_cols};
use crate::store::{SqlStore, is_unique_violation};
use crate::{
    ApiKeyRecord, NewSession, NextRefreshToken, Page, RefreshOutcome, StoreError, StoreResult,
};

/// Users, their sessions and refresh tokens, and their API keys.
#[async_trait]
pub trait Users: Send + Sync {
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
}

const INSERT_REFRESH_TOKEN: &str = "INSERT INTO refresh_tokens \
     (id, user_id, family_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)";

#[async_trait]
impl<D: Dialect> Users for SqlStore<D> {
    async fn create_user(&self, u: &User) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        D::sql(
            "INSERT INTO users (id, email, name, password_hash, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .id(u.id)
        .bind(&u.email)
        .bind(&u.name)
        .bind(&u.password_hash)
        .bind(u.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict("email")
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        const SQL: &str = concat!("SELECT ", user_cols!(), " FROM users WHERE email = $1");
        let row = D::sql(SQL).bind(email).fetch_optional(&self.pool).await?;
        row.as_ref().map(rows::user).transpose()
    }

    async fn user_by_id(&self, id: Uuid) -> StoreResult<Option<User>> {
        const SQL: &str = concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1");
        let row = D::sql(SQL).id(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(rows::user).transpose()
    }

    async fn create_session(
        &self,
        session: &NewSession,
        first: &NextRefreshToken,
    ) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        D::sql(
            "INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .id(session.id)
        .id(session.user_id)
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(&mut tx)
        .await?;
        D::sql(INSERT_REFRESH_TOKEN)
            .id(first.id)
            .id(session.user_id)
            .id(session.id)
            .bind(&first.token_hash)
            .bind(session.created_at)
            .bind(first.expires_at.min(session.expires_at))
            .execute(&mut tx)
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
        let mut tx = self.begin_write().await?;
        // Spending is one conditional UPDATE, so two concurrent refreshes with the same token
        // cannot both succeed: the loser finds it used and revokes the session.
        let spent = D::sql(
            "UPDATE refresh_tokens SET used_at = $1 \
             WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 \
               AND family_id IN (SELECT id FROM sessions WHERE revoked_at IS NULL AND expires_at > $1) \
             RETURNING user_id, family_id",
        )
        .bind(now)
        .bind(presented_hash)
        .fetch_optional(&mut tx)
        .await?;
        if let Some(row) = spent {
            let user_id = row.id("user_id")?;
            let session_id = row.id("family_id")?;
            let session_expires_at: DateTime<Utc> =
                D::sql("SELECT expires_at FROM sessions WHERE id = $1")
                    .id(session_id)
                    .fetch_one(&mut tx)
                    .await?
                    .col("expires_at")?;
            D::sql(INSERT_REFRESH_TOKEN)
                .id(next.id)
                .id(user_id)
                .id(session_id)
                .bind(&next.token_hash)
                .bind(now)
                .bind(next.expires_at.min(session_expires_at))
                .execute(&mut tx)
                .await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::Rotated {
                user_id,
                session_id,
                session_expires_at,
            });
        }
        let found = D::sql(
            "SELECT t.family_id, t.used_at, s.expires_at AS session_expires_at \
             FROM refresh_tokens t JOIN sessions s ON s.id = t.family_id WHERE t.token_hash = $1",
        )
        .bind(presented_hash)
        .fetch_optional(&mut tx)
        .await?;
        let Some(row) = found else {
            return Ok(RefreshOutcome::Invalid);
        };
        let session_id = row.id("family_id")?;
        let used_at: Option<DateTime<Utc>> = row.col("used_at")?;
        let session_expires_at: DateTime<Utc> = row.col("session_expires_at")?;
        if used_at.is_some() {
            // A spent token came back: someone holds a copy. The session ends, for both.
            D::sql("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .id(session_id)
                .execute(&mut tx)
                .await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::Reused { session_id });
        }
        Ok(if session_expires_at <= now {
            RefreshOutcome::SessionExpired
        } else {
            RefreshOutcome::Invalid
        })
    }

    async fn revoke_session(
        &self,
        presented_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Uuid>> {
        let _turn = self.write_turn().await;
        let row = D::sql(
            "UPDATE sessions SET revoked_at = $1 \
             WHERE revoked_at IS NULL AND id IN \
               (SELECT family_id FROM refresh_tokens WHERE token_hash = $2 AND used_at IS NULL) \
             RETURNING id",
        )
        .bind(now)
        .bind(presented_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| row.id("id")).transpose().map_err(Into::into)
    }

    async fn session_is_active(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<bool> {
        let row = D::sql(
            "SELECT 1 FROM sessions WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .id(id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn create_api_key(&self, k: &ApiKeyRecord) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        D::sql(
            "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, scopes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .id(k.id)
        .id(k.user_id)
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
        const SQL: &str = concat!(
            "SELECT ",
            api_key_cols!(),
            " FROM api_keys WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
        );
        let rows = D::sql(SQL)
            .id(user_id)
            .page(page)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::api_key).collect()
    }

    async fn delete_api_key(&self, user_id: Uuid, id: Uuid) -> StoreResult<bool> {
        let _turn = self.write_turn().await;
        let deleted = D::sql("DELETE FROM api_keys WHERE id = $1 AND user_id = $2")
            .id(id)
            .id(user_id)
            .execute(&self.pool)
            .await?;
        Ok(deleted > 0)
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        const SQL: &str = concat!(
            "SELECT ",
            api_key_cols!(),
            " FROM api_keys WHERE key_hash = $1"
        );
        let row = D::sql(SQL)
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::api_key).transpose()
    }

    async fn touch_api_key(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        D::sql("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .id(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
