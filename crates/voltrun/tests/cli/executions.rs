//! executions list/get and logs. This build has no engine, so executions are arranged through the
//! storage layer, as the engine will write them.

use chrono::Utc;
use serde_json::json;
use uuid::Uuid;
use voltrun_domain::execution::{ExecutionStatus, LogLine, LogStream};

use crate::helpers::{Cli, TestServer};

async fn seed(
    server: &TestServer,
    user_id: &str,
    function_id: &str,
    status: ExecutionStatus,
) -> Uuid {
    crate::api_helpers::seed_execution(server.app(), user_id, function_id, status).await
}

fn line(stream: LogStream, text: &str) -> LogLine {
    LogLine {
        timestamp: Utc::now(),
        stream,
        line: text.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_list_get_and_logs() {
    let server = TestServer::spawn().await;
    let user = server.register().await;
    let cli = Cli::new(&server.url);
    cli.login(&user).await.ok();

    let empty = cli.run(&["executions", "list"]).await.ok();
    assert!(empty.stdout.is_empty(), "{}", empty.stdout);
    assert!(empty.stderr.contains("No executions"), "{}", empty.stderr);

    cli.init("worker", "provided").await;
    cli.init("other", "provided").await;
    cli.run(&["deploy", "worker"]).await.ok();
    cli.run(&["deploy", "other"]).await.ok();
    let worker = cli
        .run(&["functions", "get", "worker", "-o", "json"])
        .await
        .ok()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = cli
        .run(&["functions", "get", "other", "-o", "json"])
        .await
        .ok()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ok = seed(&server, &user.id, &worker, ExecutionStatus::Succeeded).await;
    let failed = seed(&server, &user.id, &worker, ExecutionStatus::Failed).await;
    let elsewhere = seed(&server, &user.id, &other, ExecutionStatus::Succeeded).await;

    let list = cli.run(&["executions", "list"]).await.ok();
    let rows: Vec<&str> = list.stdout.lines().collect();
    assert!(
        rows[0].starts_with("ID") && rows[0].contains("STATUS"),
        "{}",
        list.stdout
    );
    assert_eq!(rows.len(), 4, "{}", list.stdout);
    assert!(
        rows[1].starts_with(&elsewhere.to_string()) && rows[1].contains("other"),
        "{}",
        list.stdout
    );
    assert!(
        rows[2].contains("failed") && rows[2].contains("worker"),
        "{}",
        list.stdout
    );

    let filtered = cli
        .run(&[
            "executions",
            "list",
            "--function",
            "worker",
            "--status",
            "failed",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    let ids: Vec<&str> = filtered["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [failed.to_string()]);
    let page = cli.run(&["executions", "list", "--limit", "1"]).await.ok();
    assert!(page.stderr.contains("--cursor"), "{}", page.stderr);
    assert_eq!(
        cli.run(&["executions", "list", "--status", "exploded"])
            .await
            .code,
        64
    );

    let shown = cli
        .run(&["executions", "get", &failed.to_string()])
        .await
        .ok();
    assert!(
        shown.stdout.contains("Runtime.Unhandled: boom"),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.contains("worker"), "{}", shown.stdout);
    let json = cli
        .run(&["executions", "get", &ok.to_string(), "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(json["status"], "succeeded");
    assert_eq!(json["output"], json!({"ok": true}));
    cli.run(&["executions", "get", "not-an-id"]).await.fails(64);
    let run = cli
        .run(&["executions", "get", &Uuid::now_v7().to_string()])
        .await
        .fails(3);
    assert!(run.stderr.contains("not_found"), "{}", run.stderr);

    let store = server.store().await;
    store
        .append_logs(
            ok,
            &[
                line(LogStream::Stdout, "hello"),
                line(LogStream::Stderr, "warn ✓"),
            ],
            4096,
        )
        .await
        .unwrap();
    store.close().await;
    let logs = cli.run(&["logs", &ok.to_string()]).await.ok();
    let lines: Vec<&str> = logs.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", logs.stdout);
    assert!(lines[0].ends_with("stdout hello"), "{}", logs.stdout);
    assert!(lines[1].ends_with("stderr warn ✓"), "{}", logs.stdout);
    let json = cli
        .run(&["logs", &ok.to_string(), "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(json["lines"][0]["line"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_prints_new_lines_until_the_execution_ends() {
    let server = TestServer::spawn().await;
    let user = server.register().await;
    let cli = Cli::new(&server.url);
    cli.login(&user).await.ok();
    cli.init("slow", "provided").await;
    cli.run(&["deploy", "slow"]).await.ok();
    let function = cli
        .run(&["functions", "get", "slow", "-o", "json"])
        .await
        .ok()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = seed(&server, &user.id, &function, ExecutionStatus::Running).await;
    let store = server.store().await;
    store
        .append_logs(id, &[line(LogStream::Stdout, "first")], 4096)
        .await
        .unwrap();

    // The engine's part, played by the test: more output, then the end.
    let finisher = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        store
            .append_logs(id, &[line(LogStream::Stdout, "second")], 4096)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        store
            .append_logs(id, &[line(LogStream::Stderr, "third")], 4096)
            .await
            .unwrap();
        store
            .finish_execution(
                id,
                &crate::api_helpers::sample_outcome(ExecutionStatus::TimedOut),
            )
            .await
            .unwrap();
        store.close().await;
    });
    let run = cli
        .run(&["logs", &id.to_string(), "--follow", "--interval", "0.1"])
        .await
        .ok();
    finisher.await.unwrap();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "each line once: {}", run.stdout);
    assert!(
        lines[0].ends_with("first") && lines[1].ends_with("second") && lines[2].ends_with("third"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("timed_out"), "{}", run.stderr);
}
