//! Executions and their logs: recording an execution, its attempts, its outcome and its log lines
//! (within a per-execution cap), reading them back, and retention. Taking queued executions off
//! the queue is `queue.rs`'s.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;
use voltrun_domain::execution::{
    AttemptRecord, ExecutionOutcome, ExecutionRecord, ExecutionStatus, LogLine,
};

use crate::dialect::{Columns, Dialect, Stmt, Tx};
use crate::rows::{self, execution_cols};
use crate::store::{ABOVE_ALL_IDS, SqlStore};
use crate::{ExecutionFilter, Page, Pruned, StoreResult};

/// Executions, their attempts and logs.
#[async_trait]
pub trait Executions: Send + Sync {
    /// Inserts a new execution as given: queued, or already running (a synchronous call starts at
    /// once, so it is recorded running in one write: `started_at`, `node` and `attempts` are stored).
    async fn insert_execution(&self, e: &ExecutionRecord) -> StoreResult<()>;
    async fn get_execution(&self, user_id: Uuid, id: Uuid) -> StoreResult<Option<ExecutionRecord>>;
    async fn list_executions(
        &self,
        user_id: Uuid,
        filter: &ExecutionFilter,
        page: Page,
    ) -> StoreResult<Vec<ExecutionRecord>>;
    async fn record_attempt(&self, id: Uuid, attempt: &AttemptRecord) -> StoreResult<()>;
    async fn execution_attempts(&self, id: Uuid) -> StoreResult<Vec<AttemptRecord>>;
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
}

/// Log lines per multi-row INSERT: 5 parameters each, well within SQLite's 32,766 and PostgreSQL's
/// 65,535 bound parameters per statement.
const LOG_LINES_PER_INSERT: usize = 1000;

pub(crate) const INSERT_EXECUTION: &str = "INSERT INTO executions (id, user_id, function_id, function_version, status, \
     invocation_type, input, created_at, started_at, node, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// Binds a new execution as [`INSERT_EXECUTION`]'s parameters.
pub(crate) fn bind_new_execution<'q, D: Dialect>(
    stmt: Stmt<'q, D>,
    e: &ExecutionRecord,
) -> Stmt<'q, D> {
    stmt.id(e.id)
        .id(e.user_id)
        .id(e.function_id)
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
fn bind_outcome<'q, D: Dialect>(stmt: Stmt<'q, D>, o: &ExecutionOutcome) -> Stmt<'q, D> {
    stmt.bind(o.status.as_str())
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

#[async_trait]
impl<D: Dialect> Executions for SqlStore<D> {
    async fn insert_execution(&self, e: &ExecutionRecord) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        bind_new_execution(D::sql(INSERT_EXECUTION), e)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_execution(&self, user_id: Uuid, id: Uuid) -> StoreResult<Option<ExecutionRecord>> {
        const SQL: &str = concat!(
            "SELECT ",
            execution_cols!(),
            " FROM executions WHERE id = $1 AND user_id = $2"
        );
        let row = D::sql(SQL)
            .id(id)
            .id(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::execution).transpose()
    }

    async fn list_executions(
        &self,
        user_id: Uuid,
        filter: &ExecutionFilter,
        page: Page,
    ) -> StoreResult<Vec<ExecutionRecord>> {
        const SQL: &str = concat!(
            "SELECT ",
            execution_cols!(),
            " FROM executions WHERE user_id = $1 AND id < $2 \
             AND ($3 IS NULL OR function_id = $3) AND ($4 IS NULL OR status = $4) ORDER BY id DESC LIMIT $5"
        );
        let rows = D::sql(SQL)
            .id(user_id)
            .id(page.before.unwrap_or(ABOVE_ALL_IDS))
            .opt_id(filter.function_id)
            .bind(filter.status.map(ExecutionStatus::as_str))
            .bind(i64::from(page.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::execution).collect()
    }

    async fn record_attempt(&self, id: Uuid, a: &AttemptRecord) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        D::sql(
            "INSERT INTO execution_attempts (execution_id, attempt, status, error_type, error_message, \
             started_at, finished_at, duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (execution_id, attempt) DO NOTHING",
        )
        .id(id)
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
        let rows = D::sql(
            "SELECT attempt, status, error_type, error_message, started_at, finished_at, duration_ms \
             FROM execution_attempts WHERE execution_id = $1 ORDER BY attempt",
        )
        .id(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::attempt).collect()
    }

    async fn finish_execution(&self, id: Uuid, o: &ExecutionOutcome) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        bind_outcome(
            D::sql(
                "UPDATE executions SET status = $1, output = $2, error_type = $3, error_message = $4, \
                 started_at = $5, finished_at = $6, duration_ms = $7, init_duration_ms = $8, \
                 memory_peak_mb = $9, cold_start = $10, node = $11, instance_id = $12 WHERE id = $13",
            ),
            o,
        )
        .id(id)
        .execute(&self.pool)
        .await?;
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
        let mut tx = self.begin_write().await?;
        let updated = bind_outcome(
            D::sql(
                "UPDATE executions SET status = $1, output = $2, error_type = $3, error_message = $4, \
                 started_at = $5, finished_at = $6, duration_ms = $7, init_duration_ms = $8, \
                 memory_peak_mb = $9, cold_start = $10, node = $11, instance_id = $12, \
                 logs_bytes = $13, logs_truncated = $14 WHERE id = $15",
            ),
            o,
        )
        .bind(used)
        .bind(truncated)
        .id(id)
        .execute(&mut tx)
        .await?;
        if updated == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_log_rows::<D>(&mut tx, id, 0, &lines[..kept]).await?;
        tx.commit().await?;
        Ok(truncated)
    }

    async fn append_logs(&self, id: Uuid, lines: &[LogLine], cap_bytes: usize) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        let row = D::sql(
            "SELECT logs_bytes, logs_truncated, \
             (SELECT COUNT(*) FROM execution_logs WHERE execution_id = $1) AS line_count \
             FROM executions WHERE id = $1",
        )
        .id(id)
        .fetch_optional(&mut tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(());
        };
        let (kept, used, truncated) = fit_logs(
            lines,
            row.col("logs_bytes")?,
            row.col("logs_truncated")?,
            cap_bytes,
        );
        insert_log_rows::<D>(&mut tx, id, row.col("line_count")?, &lines[..kept]).await?;
        D::sql("UPDATE executions SET logs_bytes = $1, logs_truncated = $2 WHERE id = $3")
            .bind(used)
            .bind(truncated)
            .id(id)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn execution_logs(
        &self,
        user_id: Uuid,
        id: Uuid,
    ) -> StoreResult<Option<(Vec<LogLine>, bool)>> {
        let Some(owner) =
            D::sql("SELECT logs_truncated FROM executions WHERE id = $1 AND user_id = $2")
                .id(id)
                .id(user_id)
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let truncated: bool = owner.col("logs_truncated")?;
        let rows = D::sql(
            "SELECT ts, stream, line FROM execution_logs WHERE execution_id = $1 ORDER BY seq",
        )
        .id(id)
        .fetch_all(&self.pool)
        .await?;
        let lines = rows
            .iter()
            .map(rows::log_line)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Some((lines, truncated)))
    }

    async fn prune_executions(&self, before: DateTime<Utc>, limit: u32) -> StoreResult<Pruned> {
        let _turn = self.write_turn().await;
        // Log lines first, a bounded number per statement: an execution may have thousands,
        // and deleting it would take them all in one statement (ON DELETE CASCADE).
        let log_lines = D::sql(
            "DELETE FROM execution_logs WHERE (execution_id, seq) IN \
             (SELECT l.execution_id, l.seq FROM execution_logs l JOIN executions e ON e.id = l.execution_id \
              WHERE e.finished_at < $1 AND e.status NOT IN ('queued', 'running') LIMIT $2)",
        )
        .bind(before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        if log_lines > 0 {
            return Ok(Pruned {
                log_lines,
                executions: 0,
            });
        }
        // No log lines left among them: the cascade takes only their attempts (a few each).
        let executions = D::sql(
            "DELETE FROM executions WHERE id IN \
             (SELECT id FROM executions WHERE finished_at < $1 AND status NOT IN ('queued', 'running') LIMIT $2)",
        )
        .bind(before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(Pruned {
            log_lines: 0,
            executions,
        })
    }
}

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

/// Inserts log lines numbered from `first_seq`, in a few statements however many there are.
async fn insert_log_rows<D: Dialect>(
    tx: &mut Tx<D>,
    id: Uuid,
    first_seq: i64,
    lines: &[LogLine],
) -> StoreResult<()> {
    let mut seq = first_seq;
    for chunk in lines.chunks(LOG_LINES_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::<D::Db>::new(
            "INSERT INTO execution_logs (execution_id, seq, ts, stream, line) ",
        );
        insert.push_values(chunk, |mut row, line| {
            D::push_id(&mut row, id);
            D::push_bind(&mut row, seq);
            D::push_bind(&mut row, line.timestamp);
            D::push_bind(&mut row, line.stream.as_str());
            D::push_bind(&mut row, line.line.as_str());
            seq += 1;
        });
        Stmt::<D>(insert.build()).execute(&mut *tx).await?;
    }
    Ok(())
}
