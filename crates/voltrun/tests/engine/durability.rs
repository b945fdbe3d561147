//! Executions end terminal whatever happens around them: a sync caller that hangs up, a PostgreSQL
//! server that goes away mid-run and comes back (a cluster of the test's own, so no other test
//! loses its database), and no restart in between.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::{deploy_python, engine_app, skip};

const SLOW: &str =
    "import time\ndef handler(e, c):\n    time.sleep(e.get('s', 2))\n    return 'done'\n";

/// Polls an execution until it is neither queued nor running (at most `within`).
async fn wait_terminal(app: &TestApp, token: &str, id: &str, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let reply = app.get(&format!("/api/executions/{id}"), token).await;
        if reply.status == 200
            && !matches!(reply.body["status"].as_str(), Some("queued" | "running"))
        {
            return reply.body;
        }
        assert!(
            started.elapsed() < within,
            "execution {id} still not terminal after {within:?}: {} {}",
            reply.status,
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_caller_that_hangs_up_does_not_cut_the_run_short() {
    let Some(app) = engine_app(
        "a_sync_caller_that_hangs_up_does_not_cut_the_run_short",
        |_| {},
    )
    .await
    else {
        return;
    };
    let user = app.register().await;
    let id = deploy_python(&app, &user.access_token, "hang-up", SLOW, json!({})).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let gone = impatient
        .post(format!("{}/api/functions/{id}/execute", app.base))
        .bearer_auth(&user.access_token)
        .json(&json!({"s": 2}))
        .send()
        .await;
    assert!(gone.is_err(), "the client was meant to give up first");
    let listed = app
        .get(
            &format!("/api/executions?function_id={id}"),
            &user.access_token,
        )
        .await
        .expect(200)
        .body;
    let execution = listed["data"][0]["id"].as_str().unwrap().to_string();
    let ended = wait_terminal(
        &app,
        &user.access_token,
        &execution,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!(ended["output"], "done");
}

/// A PostgreSQL cluster of the test's own, which it can stop and start.
struct OwnPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl OwnPostgres {
    fn start() -> Result<Self, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| "PostgreSQL server binaries are not installed".to_string())?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .ok_or("PostgreSQL server binaries are not installed")?;
        let dir = std::env::temp_dir().join(format!("voltrun-own-pg-{}", crate::helpers::unique()));
        std::fs::create_dir_all(&dir).unwrap();
        run_as_postgres(Command::new("chown").arg("postgres").arg(&dir), false)?;
        run_as_postgres(
            Command::new(bin.join("initdb"))
                .arg("-D")
                .arg(dir.join("data"))
                .args(["-U", "postgres", "--auth=trust", "--no-sync"]),
            true,
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self { dir, bin, port };
        pg.pg_ctl_start()?;
        Ok(pg)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self) -> Command {
        let mut command = Command::new(self.bin.join("pg_ctl"));
        command.arg("-D").arg(self.dir.join("data"));
        command
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        run_as_postgres(
            self.pg_ctl()
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "30", "start", "-o", &options]),
            true,
        )
    }

    fn stop(&self) {
        let _ = run_as_postgres(self.pg_ctl().args(["-m", "immediate", "stop"]), true);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command` (as the postgres user when `as_postgres`: PostgreSQL refuses to run as root).
fn run_as_postgres(command: &mut Command, as_postgres: bool) -> Result<(), String> {
    let output = if as_postgres {
        let program: &Path = command.get_program().as_ref();
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(program)
            .args(command.get_args())
            .output()
    } else {
        command.output()
    }
    .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_in_flight_when_postgres_goes_away_end_once_it_is_back() {
    let test = "executions_in_flight_when_postgres_goes_away_end_once_it_is_back";
    let pg = match OwnPostgres::start() {
        Ok(pg) => pg,
        Err(why) => {
            skip(
                test,
                &format!("cannot start a PostgreSQL cluster of its own: {why}"),
            );
            return;
        }
    };
    let url = pg.url();
    let Some(app) = engine_app(test, |raw| {
        raw.server.database_url = Some(voltrun::config::Secret::new(url));
    })
    .await
    else {
        return;
    };
    let user = app.register().await;
    let id = deploy_python(
        &app,
        &user.access_token,
        "outage",
        SLOW,
        json!({"max_retries": 0}),
    )
    .await;
    let queued = app
        .post(
            &format!("/api/functions/{id}/execute?async=true"),
            &user.access_token,
            json!({"s": 2}),
        )
        .await
        .expect(202)
        .body["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sync_call = tokio::spawn({
        let (base, token, id) = (app.base.clone(), user.access_token.clone(), id.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{base}/api/functions/{id}/execute"))
                .bearer_auth(token)
                .json(&json!({"s": 2}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    // Both are running when the database goes away.
    tokio::time::sleep(Duration::from_millis(800)).await;
    pg.stop();
    app.get(&format!("/api/executions/{queued}"), &user.access_token)
        .await
        .expect_error(503, "database_unavailable");
    assert_eq!(
        sync_call.await.unwrap(),
        503,
        "the sync caller hears the record could not be stored"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.pg_ctl_start().expect("PostgreSQL starts again");

    let ended = wait_terminal(&app, &user.access_token, &queued, Duration::from_secs(30)).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let listed = app
        .get(
            &format!("/api/executions?function_id={id}"),
            &user.access_token,
        )
        .await
        .expect(200)
        .body;
    for execution in listed["data"].as_array().unwrap() {
        let e = execution["id"].as_str().unwrap();
        let ended = wait_terminal(&app, &user.access_token, e, Duration::from_secs(30)).await;
        assert_eq!(ended["status"], "succeeded", "{ended}");
    }
}
