//! Execution retention: the server deletes executions that finished more than
//! `EXECUTION_RETENTION_DAYS` ago with their logs and attempts, in bounded steps, and never touches
//! queued or running ones. History is seeded through the store, with finish times in the past.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;
use voltrun_domain::execution::{
    AttemptRecord, ExecutionRecord, ExecutionStatus, InvocationType, LogLine, LogStream,
};
use voltrun_storage::{Pruned, Store};

use crate::helpers::{TestApp, sample_outcome};

/// Records an execution of `function_id` whose outcome says `status`, finished `days_ago` days ago
/// (however odd for a queued or running one: it shows that the status alone keeps those), with
/// `lines` log lines and one attempt.
async fn seed(
    store: &dyn Store,
    user_id: &str,
    function_id: &str,
    status: ExecutionStatus,
    days_ago: i64,
    lines: usize,
) -> Uuid {
    let record = ExecutionRecord::new_queued(
        user_id.parse().unwrap(),
        function_id.parse().unwrap(),
        1,
        InvocationType::Async,
        json!({"n": 1}),
        voltrun_storage::now() - chrono::Duration::days(days_ago),
    );
    store.insert_execution(&record).await.unwrap();
    let mut outcome = sample_outcome(status);
    outcome.started_at = record.created_at;
    outcome.finished_at = record.created_at;
    store.finish_execution(record.id, &outcome).await.unwrap();
    let logs: Vec<LogLine> = (0..lines)
        .map(|i| LogLine {
            timestamp: record.created_at,
            stream: LogStream::Stdout,
            line: format!("line {i}"),
        })
        .collect();
    store.append_logs(record.id, &logs, 1 << 20).await.unwrap();
    let attempt = AttemptRecord {
        attempt: 1,
        status: ExecutionStatus::Failed,
        error: None,
        started_at: record.created_at,
        finished_at: record.created_at,
        duration_ms: 1,
    };
    store.record_attempt(record.id, &attempt).await.unwrap();
    record.id
}

/// Rows of `table` (`execution_logs` or `execution_attempts`) that belong to execution `id`, read
/// from the database itself: a deleted execution must not leave orphans behind.
async fn rows(app: &TestApp, table: &str, id: Uuid) -> i64 {
    use sqlx::Connection;
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE execution_id = $1");
    match app.backend {
        crate::helpers::Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(id.hyphenated().to_string())
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
        crate::helpers::Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
    }
}

mod by_the_server {
    use super::*;

    both_databases_with! {
        |raw| {
            raw.retention.days = 30;
            raw.retention.interval_s = 1;
        }

        async fn the_server_prunes_finished_executions_past_retention_with_their_logs(app) {
            let user = app.register().await;
            let token = user.access_token.as_str();
            let f = app.create_function(token, "history").await["id"].as_str().unwrap().to_string();
            let store = app.store().await;
            let s = store.as_ref();
            let old_ok = seed(s, &user.id, &f, ExecutionStatus::Succeeded, 40, 5).await;
            let old_failed = seed(s, &user.id, &f, ExecutionStatus::Failed, 31, 3).await;
            let recent = seed(s, &user.id, &f, ExecutionStatus::Succeeded, 0, 4).await;
            let within = seed(s, &user.id, &f, ExecutionStatus::TimedOut, 29, 2).await;
            let queued = seed(s, &user.id, &f, ExecutionStatus::Queued, 40, 2).await;
            let running = seed(s, &user.id, &f, ExecutionStatus::Running, 40, 2).await;

            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let gone = app.get(&format!("/api/executions/{old_ok}"), token).await.status == 404
                    && app.get(&format!("/api/executions/{old_failed}"), token).await.status == 404;
                if gone {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "old executions were not pruned");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            for old in [old_ok, old_failed] {
                assert_eq!(rows(&app, "execution_logs", old).await, 0, "logs left behind");
                assert_eq!(rows(&app, "execution_attempts", old).await, 0, "attempts left behind");
            }
            for (kept, lines) in [(recent, 4), (within, 2), (queued, 2), (running, 2)] {
                let reply = app.get(&format!("/api/executions/{kept}"), token).await.expect(200);
                assert_eq!(reply.body["attempt_history"].as_array().unwrap().len(), 1);
                let logs = app.get(&format!("/api/executions/{kept}/logs"), token).await.expect(200);
                assert_eq!(logs.body["lines"].as_array().unwrap().len(), lines, "{kept}");
            }
            store.close().await;
        }
    }
}

/// The server's own pruning is off here (0 keeps executions forever): these tests take the steps.
mod step_by_step {
    use super::*;

    both_databases_with! {
        |raw| { raw.retention.days = 0; }

        async fn pruning_goes_in_bounded_steps_logs_first(app) {
            let user = app.register().await;
            let f = app.create_function(&user.access_token, "steps").await["id"].as_str().unwrap().to_string();
            let store = app.store().await;
            let mut old = Vec::new();
            for _ in 0..3 {
                old.push(seed(store.as_ref(), &user.id, &f, ExecutionStatus::Succeeded, 40, 3).await);
            }
            let recent = seed(store.as_ref(), &user.id, &f, ExecutionStatus::Succeeded, 1, 3).await;

            let before = voltrun_storage::now() - chrono::Duration::days(30);
            let mut steps = Vec::new();
            loop {
                let step = store.prune_executions(before, 2).await.unwrap();
                if step == Pruned::default() {
                    break;
                }
                steps.push((step.log_lines, step.executions));
            }
            // Nine log lines two at a time, then the three executions two at a time.
            assert_eq!(steps, [(2, 0), (2, 0), (2, 0), (2, 0), (1, 0), (0, 2), (0, 1)]);
            for id in old {
                app.get(&format!("/api/executions/{id}"), &user.access_token).await.expect(404);
            }
            app.get(&format!("/api/executions/{recent}"), &user.access_token).await.expect(200);
            assert_eq!(rows(&app, "execution_logs", recent).await, 3);

            // A whole run, as the server's task makes one (keeping 0 days: all that has finished goes).
            let pruned = voltrun::retention::prune(store.as_ref(), 0).await.unwrap();
            assert_eq!(pruned, Pruned { log_lines: 3, executions: 1 });
            app.get(&format!("/api/executions/{recent}"), &user.access_token).await.expect(404);
            store.close().await;
        }
    }
}
