//! The README's walkthrough, with the real `voltrun` binary as the client: register, init, deploy,
//! invoke (success, logs, a failure's exit code) for each runtime family this host offers.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::engine_app;

fn voltrun(config: &Path, server: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_voltrun"))
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .env("VOLTRUN_SERVER", server)
        .env_remove("VOLTRUN_API_KEY")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthrough_with_the_cli() {
    let Some(app) = engine_app("readme_walkthrough_with_the_cli", |_| {}).await else {
        return;
    };
    let work =
        std::env::temp_dir().join(format!("voltrun-walkthrough-{}", crate::helpers::unique()));
    std::fs::create_dir_all(&work).unwrap();
    let config = work.join("config");
    let server = app.base.clone();
    let email = format!("walk-{}@example.com", crate::helpers::unique());

    let (config2, server2) = (config.clone(), server.clone());
    let run = move |args: Vec<String>, stdin: Option<String>| {
        let (config, server) = (config2.clone(), server2.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                voltrun(&config, &server, &args, stdin.as_deref())
            })
            .await
            .unwrap()
        }
    };
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();

    ok(&run(
        s(&["register", "--email", &email]),
        Some("correct horse battery\n".into()),
    )
    .await);
    let mut families = vec!["provided".to_string()];
    for family in ["python", "nodejs"] {
        match app.runtime(family).await {
            Some(runtime) => families.push(runtime),
            None => crate::skip(
                &format!("the walkthrough's {family} part"),
                &format!("this host has no {family} runtime"),
            ),
        }
    }
    for runtime in families {
        let name = format!("hello-{}", runtime.replace('.', "-"));
        let dir = work.join(&name);
        ok(&run(
            s(&[
                "functions",
                "init",
                &name,
                "--runtime",
                &runtime,
                "--dir",
                dir.to_str().unwrap(),
            ]),
            None,
        )
        .await);
        let deployed = ok(&run(s(&["deploy", dir.to_str().unwrap()]), None).await);
        assert!(deployed.contains("version 1"), "{deployed}");
        let out = ok(&run(s(&["invoke", &name, "--data", r#"{"name": "Ada"}"#]), None).await);
        let output: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|_| panic!("{runtime}: not JSON: {out}"));
        assert!(output.to_string().contains("Ada"), "{runtime}: {output}");
        let event = format!("@{}", dir.join("event.json").display());
        let with_logs = run(s(&["invoke", &name, "--data", &event, "--logs"]), None).await;
        ok(&with_logs);
        let stderr = String::from_utf8_lossy(&with_logs.stderr);
        assert!(
            stderr.contains("REPORT RequestId"),
            "{runtime}: logs are shown with --logs: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}
