//! The command line itself: help, exit codes, completions, output format.

use crate::helpers::Cli;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_documents_the_exit_codes_and_bad_usage_exits_64() {
    let cli = Cli::without_server();
    let help = cli.run(&["invoke", "--help"]).await.ok();
    for text in ["Exit codes", "64", "timed_out", "engine_unavailable"] {
        assert!(help.stdout.contains(text), "{text}: {}", help.stdout);
    }
    let top = cli.run(&["--help"]).await.ok();
    for command in [
        "server",
        "migrate",
        "login",
        "deploy",
        "invoke",
        "executions",
        "keys",
        "completions",
        "VOLTRUN_API_KEY",
    ] {
        assert!(top.stdout.contains(command), "{command}: {}", top.stdout);
    }
    assert_eq!(cli.run(&["functions", "frobnicate"]).await.code, 64);
    assert_eq!(
        cli.run(&["--output", "yaml", "functions", "list"])
            .await
            .code,
        64
    );
    let run = cli
        .run(&["--server", "localhost:8080", "functions", "list"])
        .await
        .fails(64);
    assert!(run.stderr.contains("http://"), "{}", run.stderr);
    let run = cli.run(&["whoami"]).await.fails(64);
    assert!(
        run.stderr
            .contains("not logged in to http://127.0.0.1:8080"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_are_generated_for_each_shell() {
    let cli = Cli::without_server();
    for (shell, marker) in [
        ("bash", "_voltrun()"),
        ("zsh", "#compdef voltrun"),
        ("fish", "complete -c voltrun"),
    ] {
        let run = cli.run(&["completions", shell]).await.ok();
        assert!(
            run.stdout.contains(marker),
            "{shell}: {}",
            &run.stdout[..run.stdout.len().min(300)]
        );
        assert!(run.stdout.contains("deploy"), "{shell}");
    }
}
