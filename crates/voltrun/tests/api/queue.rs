//! The asynchronous queue's bookkeeping in storage, on both databases (these servers run no engine,
//! so no dispatcher claims behind the test's back): tenants take turns when executions are claimed,
//! a claim released for lack of capacity gives its attempt back, and an execution interrupted by a
//! crash has that attempt counted, so one that kills the server does not run after every restart.

use serde_json::json;
use uuid::Uuid;
use voltrun_domain::execution::{ExecutionRecord, ExecutionStatus, InvocationType};

use crate::helpers::{TestApp, function_body};

/// Queues `n` asynchronous executions of `function` for `user`, oldest first.
async fn queue(app: &TestApp, user: &str, function: &str, n: usize) -> Vec<Uuid> {
    let store = app.store().await;
    let mut ids = Vec::new();
    for _ in 0..n {
        let record = ExecutionRecord::new_queued(
            user.parse().unwrap(),
            function.parse().unwrap(),
            1,
            InvocationType::Async,
            json!({}),
            voltrun_storage::now(),
        );
        ids.push(record.id);
        store.insert_execution(&record).await.unwrap();
    }
    store.close().await;
    ids
}

async fn function_with_retries(app: &TestApp, token: &str, name: &str, retries: i64) -> String {
    let mut body = function_body(name);
    body["max_retries"] = json!(retries);
    app.post("/api/functions", token, body)
        .await
        .expect(201)
        .body["id"]
        .as_str()
        .unwrap()
        .to_string()
}

both_databases! {
    async fn tenants_take_turns_when_executions_are_claimed(app) {
        let (busy, quiet) = (app.register().await, app.register().await);
        let f = app.create_function(&busy.access_token, "backlog").await["id"].as_str().unwrap().to_string();
        let g = app.create_function(&quiet.access_token, "single").await["id"].as_str().unwrap().to_string();
        let backlog = queue(&app, &busy.id, &f, 30).await;
        let single = queue(&app, &quiet.id, &g, 1).await;
        let store = app.store().await;
        let claimed = store.claim_async("node-a", voltrun_storage::now(), 2).await.unwrap();
        let ids: Vec<Uuid> = claimed.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![backlog[0], single[0]], "the quiet tenant's only execution waits behind no backlog");
        store.close().await;
    }

    async fn a_tenant_with_work_running_waits_behind_one_with_none(app) {
        // Slots free one at a time: each claim takes one. The backlogged tenant's oldest would win
        // every time on age alone.
        let (busy, quiet) = (app.register().await, app.register().await);
        let f = app.create_function(&busy.access_token, "backlog").await["id"].as_str().unwrap().to_string();
        let g = app.create_function(&quiet.access_token, "single").await["id"].as_str().unwrap().to_string();
        queue(&app, &busy.id, &f, 10).await;
        let store = app.store().await;
        assert_eq!(store.claim_async("node-a", voltrun_storage::now(), 1).await.unwrap().len(), 1);
        let single = queue(&app, &quiet.id, &g, 1).await;
        let next = store.claim_async("node-a", voltrun_storage::now(), 1).await.unwrap();
        assert_eq!(next[0].id, single[0], "the tenant with nothing running goes next");
        store.close().await;
    }

    async fn a_claim_released_for_capacity_gives_its_attempt_back(app) {
        let user = app.register().await;
        let f = app.create_function(&user.access_token, "busy").await["id"].as_str().unwrap().to_string();
        let id = queue(&app, &user.id, &f, 1).await[0];
        let store = app.store().await;
        for _ in 0..5 {
            let claimed = store.claim_async("node-a", voltrun_storage::now(), 1).await.unwrap();
            assert_eq!(claimed[0].attempts, 1, "no earlier release counted");
            store.release_claim(id, voltrun_storage::now()).await.unwrap();
        }
        let record = store.get_execution(user.id.parse().unwrap(), id).await.unwrap().unwrap();
        assert_eq!((record.status, record.attempts), (ExecutionStatus::Queued, 0));
        store.close().await;
    }

    async fn a_crash_costs_an_attempt_and_ends_an_execution_out_of_them(app) {
        let user = app.register().await;
        let once = function_with_retries(&app, &user.access_token, "no-retries", 0).await;
        let twice = function_with_retries(&app, &user.access_token, "one-retry", 1).await;
        let doomed = queue(&app, &user.id, &once, 1).await[0];
        let survivor = queue(&app, &user.id, &twice, 1).await[0];
        let store = app.store().await;
        let user_id = user.id.parse().unwrap();
        // Both claimed by a node that then dies.
        assert_eq!(store.claim_async("lost-node", voltrun_storage::now(), 10).await.unwrap().len(), 2);
        let (failed, requeued) = store.recover_interrupted("lost-node", voltrun_storage::now()).await.unwrap();
        assert_eq!((failed, requeued), (1, 1));
        let ended = store.get_execution(user_id, doomed).await.unwrap().unwrap();
        assert_eq!(ended.status, ExecutionStatus::Failed);
        assert_eq!(ended.error.unwrap().error_type, "Platform.NodeLost");
        assert_eq!(store.get_execution(user_id, survivor).await.unwrap().unwrap().status, ExecutionStatus::Queued);
        for id in [doomed, survivor] {
            let history = store.execution_attempts(id).await.unwrap();
            assert_eq!(history.len(), 1, "the interrupted attempt is in the history");
            assert_eq!(history[0].error.as_ref().unwrap().error_type, "Platform.NodeLost");
        }
        // The retry is claimed and the node dies again: now it is out of attempts too.
        assert_eq!(store.claim_async("lost-node", voltrun_storage::now(), 10).await.unwrap()[0].attempts, 2);
        assert_eq!(store.recover_interrupted("lost-node", voltrun_storage::now()).await.unwrap(), (1, 0));
        assert_eq!(store.get_execution(user_id, survivor).await.unwrap().unwrap().status, ExecutionStatus::Failed);
        assert_eq!(store.execution_attempts(survivor).await.unwrap().len(), 2);
        store.close().await;
    }

    async fn a_run_is_stored_with_its_logs_capped_and_a_retry_goes_back_in_the_queue(app) {
        // What the engine's runs store, checked here on both databases (the engine suite runs on
        // SQLite): a synchronous run's outcome and logs in one write, cut at the cap; an
        // asynchronous retry requeued with its attempt counted.
        use voltrun_domain::execution::{LogLine, LogStream};
        let user = app.register().await;
        let f = app.create_function(&user.access_token, "runs").await["id"].as_str().unwrap().to_string();
        let user_id = user.id.parse().unwrap();
        let ids = queue(&app, &user.id, &f, 2).await;
        let store = app.store().await;
        assert_eq!(store.claim_async("node-a", voltrun_storage::now(), 2).await.unwrap().len(), 2);

        let lines: Vec<LogLine> = (0..10)
            .map(|n| LogLine {
                timestamp: voltrun_storage::now(),
                stream: LogStream::Stdout,
                line: format!("line {n} {}", "x".repeat(90)),
            })
            .collect();
        // Room for three lines of 98 bytes and their overhead, not four.
        let cap = 3 * (98 + voltrun_domain::execution::LOG_LINE_OVERHEAD_BYTES) + 10;
        let outcome = crate::helpers::sample_outcome(ExecutionStatus::Succeeded);
        assert!(store.complete_execution(ids[0], &outcome, &lines, cap).await.unwrap(), "truncated");
        let done = store.get_execution(user_id, ids[0]).await.unwrap().unwrap();
        assert_eq!(done.status, ExecutionStatus::Succeeded);
        assert_eq!(done.output, outcome.output);
        assert!(done.logs_truncated);
        let (stored, truncated) = store.execution_logs(user_id, ids[0]).await.unwrap().unwrap();
        assert!(truncated);
        let kept: Vec<&str> = stored.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(kept, lines[..3].iter().map(|l| l.line.as_str()).collect::<Vec<_>>());
        // No such execution: nothing written.
        assert!(!store.complete_execution(Uuid::now_v7(), &outcome, &lines, cap).await.unwrap());

        store.requeue_execution(ids[1], voltrun_storage::now()).await.unwrap();
        let again = store.claim_async("node-b", voltrun_storage::now(), 1).await.unwrap();
        assert_eq!((again[0].id, again[0].attempts), (ids[1], 2), "the retry counts its attempt");
        store.close().await;
    }
}
