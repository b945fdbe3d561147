//! The `voltrun` binary itself: configuration errors, `voltrun migrate`, and graceful shutdown.

use std::process::{Command, Stdio};
use std::time::Duration;

fn voltrun() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voltrun"));
    // Keep a developer's own .env and environment out of these tests.
    for var in [
        "PORT",
        "DATABASE_URL",
        "JWT_SECRET",
        "ENCRYPTION_KEY",
        "ENVIRONMENT",
        "LOG_FORMAT",
        "LOG_LEVEL",
        "DATA_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(std::env::temp_dir());
    cmd
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("voltrun-bin-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn bad_configuration_fails_with_one_line_naming_the_variable() {
    let dir = temp_dir();
    for (var, value) in [
        ("PORT", "eighty"),
        ("ENVIRONMENT", "staging"),
        ("DATABASE_URL", "mysql://x"),
        ("LOG_FORMAT", "xml"),
    ] {
        let out = voltrun()
            .arg("server")
            .env("DATA_DIR", &dir)
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
    let out = voltrun()
        .arg("server")
        .env("DATA_DIR", &dir)
        .env("ENVIRONMENT", "production")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JWT_SECRET"));
}

#[test]
fn migrate_creates_the_schema_and_is_idempotent() {
    let dir = temp_dir();
    for _ in 0..2 {
        let out = voltrun()
            .arg("migrate")
            .env("DATA_DIR", &dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(dir.join("voltrun.db").exists());
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let dir = temp_dir();
    let mut child = voltrun()
        .args(["server", "--port", "0", "--bind-address", "127.0.0.1"])
        .env("DATA_DIR", &dir)
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for "listening" in the log (the signal handlers are in place by then), then send
    // SIGTERM. Polling the log rather than sleeping: a loaded machine may take seconds to start.
    let stderr = child.stderr.take().unwrap();
    let (listening_tx, listening) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("listening") {
                let _ = listening_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    if listening.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        panic!(
            "the server did not log listening within 60 s: {}",
            reader.join().unwrap()
        );
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    let log = reader.join().unwrap();
    assert!(exit.success(), "exit {exit:?}; log: {log}");
    assert!(log.contains("listening"), "{log}");
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("\"stopped\""), "{log}");
}
