//! Test harness: `TestServer::spawn` starts the real server in-process on port 0 with a SQLite
//! database of its own; `Cli` runs the real `voltrun` binary against it with a config directory of
//! its own (`XDG_CONFIG_HOME`), so no test sees another's credentials.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::api_helpers::{Backend, TestApp};
pub use crate::api_helpers::{TestUser, unique};

/// The server the client talks to: the API suite's test server (SQLite, no engine: invoke answers
/// 503 engine_unavailable).
pub struct TestServer {
    pub url: String,
    app: TestApp,
}

impl TestServer {
    pub async fn spawn() -> Self {
        let app = TestApp::spawn_with(Backend::Sqlite, |_| {}).await;
        Self {
            url: app.base.clone(),
            app,
        }
    }

    pub fn app(&self) -> &TestApp {
        &self.app
    }

    /// Registers an account over the API (the CLI has no `register`).
    pub async fn register(&self) -> TestUser {
        self.app.register().await
    }

    /// A second connection to this server's database, for arranging what the API cannot create
    /// (executions: this build has no engine).
    pub async fn store(&self) -> std::sync::Arc<dyn voltrun_storage::Store> {
        self.app.store().await
    }
}

/// A URL where nothing listens.
pub fn dead_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// What a run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts the exit code and that stderr is exactly one line (and no panic or debug dump).
    #[track_caller]
    pub fn fails(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "unexpected exit code\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one error line, got: {}",
            self.stderr
        );
        assert!(lines[0].starts_with("error: "), "{}", self.stderr);
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// The client as one user on one machine: its own config directory and working directory.
pub struct Cli {
    pub config_home: PathBuf,
    pub work: PathBuf,
    env: Vec<(String, String)>,
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.config_home);
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

impl Cli {
    /// A client whose commands go to `server` (through `VOLTRUN_SERVER`).
    pub fn new(server: &str) -> Self {
        let mut cli = Self::without_server();
        cli.env.push(("VOLTRUN_SERVER".into(), server.into()));
        cli
    }

    /// A client with no server configured (it uses the one it logged in to).
    pub fn without_server() -> Self {
        let root = std::env::temp_dir().join(format!("voltrun-cli-{}", unique()));
        let config_home = root.join("config");
        let work = root.join("work");
        std::fs::create_dir_all(&config_home).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        Self {
            config_home,
            work,
            env: Vec::new(),
        }
    }

    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn credentials_path(&self) -> PathBuf {
        self.config_home.join("voltrun").join("credentials.json")
    }

    pub fn credentials(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.credentials_path()).unwrap()).unwrap()
    }

    pub fn credentials_mode(&self) -> u32 {
        std::fs::metadata(self.credentials_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, None).await
    }

    /// Runs `voltrun ARGS` in the work directory; stdin is `input`, or empty.
    pub async fn run_with_stdin(&self, args: &[&str], input: Option<&str>) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_voltrun"));
        command
            .args(args)
            .current_dir(&self.work)
            .env_remove("VOLTRUN_SERVER")
            .env_remove("VOLTRUN_API_KEY")
            .env_remove("NO_COLOR")
            .env("XDG_CONFIG_HOME", &self.config_home)
            .env("HOME", self.config_home.parent().unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let input = input.unwrap_or_default().to_string();
        // The server runs on this test's runtime: wait for the child on a blocking thread.
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = command.spawn().expect("voltrun starts");
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(input.as_bytes());
            drop(stdin);
            let output = child.wait_with_output().unwrap();
            Run {
                code: output.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        })
        .await
        .unwrap()
    }

    /// Logs in with email and password (the password on stdin).
    pub async fn login(&self, user: &TestUser) -> Run {
        self.run_with_stdin(
            &["login", "--email", &user.email],
            Some(&format!("{}\n", user.password)),
        )
        .await
    }

    /// `functions init NAME --runtime RUNTIME` in the work directory; returns the directory.
    pub async fn init(&self, name: &str, runtime: &str) -> PathBuf {
        self.run(&["functions", "init", name, "--runtime", runtime])
            .await
            .ok();
        self.work.join(name)
    }
}

pub fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
}
