//! The asynchronous queue: enqueueing under the user's queue quota, claiming due executions fairly
//! between tenants, handing them back, and recovering what a crashed node was running.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use voltrun_domain::execution::ExecutionRecord;

use crate::dialect::{Columns, Dialect};
use crate::executions::{Executions, INSERT_EXECUTION, bind_new_execution};
use crate::rows::{self, execution_cols};
use crate::store::{SqlStore, lock_user, within};
use crate::{Quota, StoreResult, UserQuotas};

/// The queue of asynchronous executions.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Inserts a queued asynchronous execution unless its user already has
    /// `quotas.max_queued_executions` queued ([`StoreError::QuotaExceeded`](crate::StoreError::QuotaExceeded),
    /// nothing written).
    async fn enqueue_execution(&self, e: &ExecutionRecord, quotas: &UserQuotas) -> StoreResult<()>;
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
    /// Executions waiting in the queue (for the queue-depth gauge).
    async fn queued_executions(&self) -> StoreResult<u64>;
    /// After a crash of `node`: its running synchronous executions fail with `Platform.NodeLost`
    /// (their callers are gone). Its running asynchronous ones lost an attempt: it is recorded
    /// (`Platform.NodeLost`), and they go back to the queue while their function's `max_retries`
    /// allows another, else fail, so an execution that crashes the server does not run again after
    /// every restart. Returns (failed, requeued).
    async fn recover_interrupted(&self, node: &str, now: DateTime<Utc>) -> StoreResult<(u64, u64)>;
}

#[async_trait]
impl<D: Dialect> Queue for SqlStore<D> {
    async fn enqueue_execution(&self, e: &ExecutionRecord, quotas: &UserQuotas) -> StoreResult<()> {
        let Some(limit) = quotas.max_queued_executions else {
            return self.insert_execution(e).await;
        };
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        // With the user's row locked, a concurrent enqueue of the same user waits here and
        // then counts this one (PostgreSQL's READ COMMITTED takes a new snapshot for each
        // statement); SQLite's writers take turns anyway.
        lock_user::<D>(&mut tx, e.user_id).await?;
        let queued: i64 = D::sql(
            "SELECT COUNT(*) AS queued FROM executions WHERE user_id = $1 AND status = 'queued'",
        )
        .id(e.user_id)
        .fetch_one(&mut tx)
        .await?
        .col("queued")?;
        if let Err(refused) = within(Quota::QueuedExecutions, Some(limit), queued, 1) {
            tx.rollback().await?;
            return Err(refused);
        }
        bind_new_execution(D::sql(INSERT_EXECUTION), e)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_execution_running(
        &self,
        id: Uuid,
        started_at: DateTime<Utc>,
        node: &str,
    ) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        D::sql(
            "UPDATE executions SET status = 'running', started_at = $1, node = $2, attempts = attempts + 1 \
             WHERE id = $3 AND status = 'queued'",
        )
        .bind(started_at)
        .bind(node)
        .id(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim_async(
        &self,
        node: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<ExecutionRecord>> {
        const CLAIM: &str = concat!(
            "UPDATE executions SET status = 'running', started_at = $1, node = $2, attempts = attempts + 1, \
             not_before = NULL WHERE id = $3 AND status = 'queued' RETURNING ",
            execution_cols!()
        );
        let _turn = self.write_turn().await;
        // Users with fewer executions running now go first (so a backlog cannot keep the
        // slots as they free one at a time); then each due execution is ranked within its
        // user's (oldest first), and the first of every user comes before anyone's second.
        let due = D::sql(
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
            let id = row.id("id")?;
            let claim = D::sql(CLAIM)
                .bind(now)
                .bind(node)
                .id(id)
                .fetch_optional(&self.pool)
                .await;
            let row = match claim {
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
                claimed.push(rows::execution(&row)?);
            }
        }
        Ok(claimed)
    }

    async fn requeue_execution(&self, id: Uuid, not_before: DateTime<Utc>) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        D::sql(
            "UPDATE executions SET status = 'queued', not_before = $1 WHERE id = $2 AND status = 'running'",
        )
        .bind(not_before)
        .id(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release_claim(&self, id: Uuid, not_before: DateTime<Utc>) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        D::sql(
            "UPDATE executions SET status = 'queued', not_before = $1, attempts = attempts - 1 \
             WHERE id = $2 AND status = 'running' AND attempts > 0",
        )
        .bind(not_before)
        .id(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn queued_executions(&self) -> StoreResult<u64> {
        let n: i64 = D::sql("SELECT COUNT(*) AS queued FROM executions WHERE status = 'queued'")
            .fetch_one(&self.pool)
            .await?
            .col("queued")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn recover_interrupted(&self, node: &str, now: DateTime<Utc>) -> StoreResult<(u64, u64)> {
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        let failed = D::sql(
            "UPDATE executions SET status = 'failed', finished_at = $1, error_type = 'Platform.NodeLost', \
             error_message = 'the server stopped while this execution ran; its caller has gone' \
             WHERE status = 'running' AND invocation_type = 'sync' AND (node = $2 OR node IS NULL)",
        )
        .bind(now)
        .bind(node)
        .execute(&mut tx)
        .await?;
        // The attempt each interrupted asynchronous execution was on, as the history shows it.
        let interrupted = D::sql(
            "SELECT id, attempts, started_at FROM executions \
             WHERE status = 'running' AND invocation_type = 'async' AND (node = $1 OR node IS NULL)",
        )
        .bind(node)
        .fetch_all(&mut tx)
        .await?;
        for row in &interrupted {
            let started: Option<DateTime<Utc>> = row.col("started_at")?;
            let started = started.unwrap_or(now);
            D::sql(
                "INSERT INTO execution_attempts (execution_id, attempt, status, error_type, error_message, \
                 started_at, finished_at, duration_ms) VALUES ($1, $2, 'failed', 'Platform.NodeLost', \
                 'the server stopped during this attempt', $3, $4, $5) \
                 ON CONFLICT (execution_id, attempt) DO NOTHING",
            )
            .id(row.id("id")?)
            .bind(row.col::<i32>("attempts")?)
            .bind(started)
            .bind(now)
            .bind((now - started).num_milliseconds().max(0))
            .execute(&mut tx)
            .await?;
        }
        // Out of attempts (or its function is gone): it ends here.
        let exhausted = D::sql(
            "UPDATE executions SET status = 'failed', finished_at = $1, error_type = 'Platform.NodeLost', \
             error_message = 'the server stopped during each of its attempts' \
             WHERE status = 'running' AND invocation_type = 'async' AND (node = $2 OR node IS NULL) \
             AND attempts > COALESCE((SELECT max_retries FROM functions WHERE functions.id = executions.function_id), 0)",
        )
        .bind(now)
        .bind(node)
        .execute(&mut tx)
        .await?;
        let requeued = D::sql(
            "UPDATE executions SET status = 'queued', not_before = NULL \
             WHERE status = 'running' AND invocation_type = 'async' AND (node = $1 OR node IS NULL)",
        )
        .bind(node)
        .execute(&mut tx)
        .await?;
        let failed = failed + exhausted;
        tx.commit().await?;
        Ok((failed, requeued))
    }
}
