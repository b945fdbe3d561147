//! functions init, deploy, functions list/get/delete, and invoke.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::helpers::{Cli, TestServer, dead_server, write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_scaffolds_each_runtime_family_and_dry_run_contacts_no_server() {
    // Nothing listens here: a dry run must not need a server.
    let cli = Cli::new(&dead_server());
    for (name, runtime, handler_file, handler) in [
        ("py", "python3.12", "main.py", "main.handler"),
        ("node", "nodejs20", "index.js", "index.handler"),
        ("shell", "provided", "bootstrap", "function.handler"),
    ] {
        let dir = cli.init(name, runtime).await;
        for file in [handler_file, "event.json", "voltrun.toml", ".voltrunignore"] {
            assert!(dir.join(file).is_file(), "{name}: {file} missing");
        }
        let manifest = std::fs::read_to_string(dir.join("voltrun.toml")).unwrap();
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{manifest}"
        );
        assert!(
            manifest.contains(&format!("runtime = \"{runtime}\"")),
            "{manifest}"
        );
        assert!(
            manifest.contains(&format!("handler = \"{handler}\"")),
            "{manifest}"
        );
        assert!(
            manifest.contains("memory_mb")
                && manifest.contains("timeout_s")
                && manifest.contains("[env]")
        );
        let event: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("event.json")).unwrap())
                .unwrap();
        assert!(event.is_object());

        let dry = cli.run(&["deploy", name, "--dry-run"]).await.ok();
        assert!(dry.stdout.contains(handler_file), "{}", dry.stdout);
        assert!(!dry.stdout.contains("voltrun.toml"), "{}", dry.stdout);
        assert!(
            !dry.stdout.contains("event.json"),
            "ignored by .voltrunignore: {}",
            dry.stdout
        );
        assert!(dry.stdout.contains("1 file, "), "{}", dry.stdout);
        let json = cli
            .run(&["deploy", name, "--dry-run", "-o", "json"])
            .await
            .ok()
            .json();
        assert_eq!(json["files"][0]["path"], handler_file);
        assert!(json["total_bytes"].as_u64().unwrap() > 0);
    }
    let handler = std::fs::read_to_string(cli.work.join("py/main.py")).unwrap();
    assert!(handler.contains("def handler(event, context)"));
    let handler = std::fs::read_to_string(cli.work.join("node/index.js")).unwrap();
    assert!(handler.contains("exports.handler = async (event, context)"));
    let bootstrap = cli.work.join("shell/bootstrap");
    assert!(
        std::fs::read_to_string(&bootstrap)
            .unwrap()
            .contains("invocation/next")
    );
    assert_eq!(
        std::fs::metadata(&bootstrap).unwrap().permissions().mode() & 0o111,
        0o111
    );

    // Refusals: a taken directory, a bad name, a runtime without a template.
    cli.run(&["functions", "init", "py", "--runtime", "python3.12"])
        .await
        .fails(64);
    cli.run(&["functions", "init", "Bad_Name", "--runtime", "provided"])
        .await
        .fails(64);
    let run = cli
        .run(&["functions", "init", "rb", "--runtime", "ruby3.3"])
        .await
        .fails(64);
    assert!(run.stderr.contains("ruby3.3"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_creates_then_updates_and_functions_list_and_get_show_it() {
    let server = TestServer::spawn().await;
    let user = server.register().await;
    let cli = Cli::new(&server.url);
    cli.login(&user).await.ok();
    let dir = cli.init("hello", "provided").await;

    let created = cli.run(&["deploy", "hello"]).await.ok();
    assert!(
        created.stdout.starts_with("Created function hello"),
        "{}",
        created.stdout
    );
    assert!(
        created.stdout.trim_end().ends_with("version 1"),
        "{}",
        created.stdout
    );

    // The same files make the same archive: nothing changes.
    let again = cli.run(&["deploy", "hello"]).await.ok();
    assert!(
        again.stdout.starts_with("Unchanged function hello"),
        "{}",
        again.stdout
    );
    assert!(
        again.stdout.trim_end().ends_with("version 1"),
        "{}",
        again.stdout
    );

    write(&dir.join("bootstrap"), "#!/bin/sh\necho changed\n");
    let updated = cli.run(&["deploy", "hello"]).await.ok();
    assert!(
        updated.stdout.starts_with("Updated function hello"),
        "{}",
        updated.stdout
    );
    assert!(
        updated.stdout.trim_end().ends_with("version 2"),
        "{}",
        updated.stdout
    );
    // The executable bit survives the trip (the server requires bootstrap; it must stay runnable).
    assert!(
        std::fs::metadata(dir.join("bootstrap"))
            .unwrap()
            .permissions()
            .mode()
            & 0o100
            != 0
    );

    // Lambda's logging controls from the manifest.
    let manifest = std::fs::read_to_string(dir.join("voltrun.toml")).unwrap();
    let with_logs = manifest.replacen(
        "\n[env]",
        "\nlog_format = \"json\"\nlog_level = \"warn\"\n\n[env]",
        1,
    );
    assert_ne!(with_logs, manifest, "the template has an [env] table");
    write(&dir.join("voltrun.toml"), &with_logs);
    let logged = cli.run(&["deploy", "hello"]).await.ok();
    assert!(
        logged.stdout.trim_end().ends_with("version 3"),
        "{}",
        logged.stdout
    );
    write(&dir.join("voltrun.toml"), &manifest);

    let list = cli.run(&["functions", "list"]).await.ok();
    let header = list.stdout.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("RUNTIME") && header.contains("VERSION"),
        "{}",
        list.stdout
    );
    let row = list.stdout.lines().nth(1).unwrap();
    assert!(
        row.starts_with("hello") && row.contains("provided") && row.contains(" 3 "),
        "{}",
        list.stdout
    );
    // Columns line up: every row's second column starts where the header's does.
    let column = header.find("RUNTIME").unwrap();
    assert_eq!(
        &row[column..column + "provided".len()],
        "provided",
        "{}",
        list.stdout
    );

    let listed = cli
        .run(&["functions", "list", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let got = cli
        .run(&["functions", "get", "hello", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(got["version"], 3);
    assert_eq!(
        (&got["log_format"], &got["log_level"]),
        (&serde_json::json!("json"), &serde_json::json!("warn"))
    );
    assert_eq!(got["runtime"], "provided");
    assert_eq!(got["code_kind"], "zip");
    assert_eq!(got["env"]["GREETING"], "hello");
    let by_id = cli
        .run(&["functions", "get", got["id"].as_str().unwrap()])
        .await
        .ok();
    assert!(by_id.stdout.contains("Version:"), "{}", by_id.stdout);
    assert!(by_id.stdout.contains("GREETING"), "{}", by_id.stdout);
    assert!(!by_id.stdout.contains("\x1b["), "no colour when piped");

    cli.run(&["functions", "delete", "hello"]).await.ok();
    let empty = cli
        .run(&["functions", "list", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(empty, serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_runtime_the_server_offers_deploys_from_its_template() {
    let server = TestServer::spawn().await;
    let user = server.register().await;
    let cli = Cli::new(&server.url);
    cli.login(&user).await.ok();
    let runtimes: Value = reqwest::get(format!("{}/api/runtimes", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for runtime in runtimes.as_array().unwrap() {
        let id = runtime["id"].as_str().unwrap();
        let name = format!("fn-{}", id.replace('.', "-"));
        cli.init(&name, id).await;
        let run = cli.run(&["deploy", &name]).await.ok();
        assert!(run.stdout.contains("version 1"), "{id}: {}", run.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_and_unknown_functions_are_one_line_errors() {
    let server = TestServer::spawn().await;
    let user = server.register().await;
    let cli = Cli::new(&server.url);
    cli.login(&user).await.ok();
    let dir = cli.init("broken", "provided").await;

    let manifest = std::fs::read_to_string(dir.join("voltrun.toml")).unwrap();
    write(
        &dir.join("voltrun.toml"),
        &manifest.replace("memory_mb", "memroy_mb"),
    );
    let run = cli.run(&["deploy", "broken"]).await.fails(64);
    assert!(run.stderr.contains("voltrun.toml: line "), "{}", run.stderr);
    assert!(run.stderr.contains("memroy_mb"), "{}", run.stderr);

    write(
        &dir.join("voltrun.toml"),
        "name = \"broken\"\nruntime = \"provided\"\n",
    );
    let run = cli.run(&["deploy", "broken"]).await.fails(64);
    assert!(run.stderr.contains("handler"), "{}", run.stderr);

    std::fs::remove_file(dir.join("voltrun.toml")).unwrap();
    let run = cli.run(&["deploy", "broken"]).await.fails(64);
    assert!(
        run.stderr.contains("voltrun.toml not found"),
        "{}",
        run.stderr
    );

    // The server's own checks come back as one line with the field, the code and the request id.
    write(
        &dir.join("voltrun.toml"),
        "name = \"broken\"\nruntime = \"cobol85\"\nhandler = \"f.handler\"\n",
    );
    let run = cli.run(&["deploy", "broken"]).await.fails(3);
    assert!(run.stderr.contains("runtime"), "{}", run.stderr);
    assert!(
        run.stderr.contains("validation_failed, request id "),
        "{}",
        run.stderr
    );

    let run = cli.run(&["functions", "get", "nope"]).await.fails(3);
    assert!(
        run.stderr.contains("no function named \"nope\""),
        "{}",
        run.stderr
    );
    let run = cli.run(&["invoke", "nope"]).await.fails(3);
    assert!(
        run.stderr.contains("no function named \"nope\""),
        "{}",
        run.stderr
    );
    let missing = uuid::Uuid::new_v4().to_string();
    let run = cli.run(&["functions", "delete", &missing]).await.fails(3);
    assert!(
        run.stderr.contains("(not_found, request id "),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_reports_the_missing_engine_as_a_platform_error() {
    let server = TestServer::spawn().await;
    let user = server.register().await;
    let cli = Cli::new(&server.url);
    cli.login(&user).await.ok();
    cli.init("runner", "provided").await;
    cli.run(&["deploy", "runner"]).await.ok();

    for args in [
        vec!["invoke", "runner", "--data", "{\"n\": 1}"],
        vec!["invoke", "runner", "--data", "@runner/event.json", "--logs"],
        vec!["invoke", "runner", "--async"],
    ] {
        let run = cli.run(&args).await.fails(3);
        assert!(
            run.stderr.contains("(engine_unavailable, request id "),
            "{args:?}: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
    // The event from stdin.
    let run = cli
        .run_with_stdin(&["invoke", "runner"], Some("{\"from\": \"stdin\"}"))
        .await
        .fails(3);
    assert!(run.stderr.contains("engine_unavailable"), "{}", run.stderr);

    // An event that is not JSON never leaves the machine.
    let run = cli
        .run(&["invoke", "runner", "--data", "{nope"])
        .await
        .fails(64);
    assert!(run.stderr.contains("not valid JSON"), "{}", run.stderr);
    assert_eq!(
        cli.run(&["invoke", "runner", "--async", "--logs"])
            .await
            .code,
        64
    );
}
