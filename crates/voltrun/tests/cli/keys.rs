//! API keys: create, list, use through VOLTRUN_API_KEY, delete.

use crate::helpers::{Cli, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_only_key_invokes_and_reads_executions_but_nothing_else() {
    let server = TestServer::spawn().await;
    let user = server.register().await;
    let cli = Cli::new(&server.url);
    cli.login(&user).await.ok();
    cli.init("target", "provided").await;
    cli.run(&["deploy", "target"]).await.ok();
    let function = cli
        .run(&["functions", "get", "target", "-o", "json"])
        .await
        .ok()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let created = cli
        .run(&["keys", "create", "ci", "--scope", "execute"])
        .await
        .ok();
    assert!(
        created.stdout.contains("scope execute"),
        "{}",
        created.stdout
    );
    assert!(created.stderr.contains("only time"), "{}", created.stderr);
    let key = created
        .stdout
        .lines()
        .find(|l| l.starts_with("vr_"))
        .expect("the key is printed")
        .to_string();
    let list = cli.run(&["keys", "list"]).await.ok();
    assert!(
        list.stdout
            .lines()
            .nth(1)
            .is_some_and(|row| row.starts_with("ci") && row.contains("execute")),
        "{}",
        list.stdout
    );
    assert!(!list.stdout.contains(&key));
    let listed = cli.run(&["keys", "list", "-o", "json"]).await.ok().json();
    assert_eq!(listed[0]["scopes"], serde_json::json!(["execute"]));

    // A machine with nothing stored but the key in its environment.
    let ci = Cli::new(&server.url).with_env("VOLTRUN_API_KEY", &key);
    let whoami = ci.run(&["whoami"]).await.ok();
    assert!(
        whoami.stdout.contains("API key vr_") && whoami.stdout.contains("VOLTRUN_API_KEY"),
        "{}",
        whoami.stdout
    );
    assert!(whoami.stdout.contains(&server.url), "{}", whoami.stdout);
    assert!(!whoami.stdout.contains(&key));
    ci.run(&["executions", "list"]).await.ok();
    // Invoking by id gets past authentication to the (missing) engine.
    let run = ci.run(&["invoke", &function]).await.fails(3);
    assert!(run.stderr.contains("engine_unavailable"), "{}", run.stderr);
    // Names need a function listing, which this key may not do: the error says what to do instead.
    let run = ci.run(&["invoke", "target"]).await.fails(3);
    assert!(
        run.stderr.contains("insufficient_scope") && run.stderr.contains("function's id"),
        "{}",
        run.stderr
    );
    ci.run(&["functions", "list"]).await.fails(3);
    let run = ci.run(&["keys", "list"]).await.fails(3);
    assert!(run.stderr.contains("api_key_not_allowed"), "{}", run.stderr);
    assert!(
        !ci.credentials_path().exists(),
        "nothing is stored for an environment key"
    );

    cli.run(&["keys", "delete", "ci"]).await.ok();
    let run = ci.run(&["executions", "list"]).await.fails(3);
    assert!(run.stderr.contains("unauthorized"), "{}", run.stderr);
    cli.run(&["keys", "delete", "ci"]).await.fails(3);
}
