//! Disk: the code cache removes code no function references once nothing uses it (and never from
//! under a running instance), and writes that fail on a full disk (the code cache, the database)
//! answer `503 storage_full`, record what they can, keep what was committed, and leave the server
//! serving. Full disks are small tmpfs mounts made here, so these tests need root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, unique};
use crate::{deploy, deploy_python, engine_app, invoke, skip};

/// A tmpfs of `size` mounted at `dir` (made if missing), unmounted and removed on drop.
struct Tmpfs {
    dir: PathBuf,
    /// Removed after the unmount (the directory the mount point was made in).
    remove: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str, remove: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs at {}", dir.display());
        Self {
            dir: dir.to_path_buf(),
            remove: remove.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: the server this test started may still be stopping an instance that mounts it.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.remove);
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

async fn code_sha256(app: &TestApp, token: &str, id: &str) -> String {
    app.get(&format!("/api/functions/{id}"), token)
        .await
        .expect(200)
        .body["code_sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < Duration::from_secs(30), "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const KEPT: &str = "def handler(e, c):\n    return 'kept'\n";
/// Reads a file of its code after a pause: after its function was deleted.
const LATE_READER: &str = "import time\ndef handler(e, c):\n    time.sleep(e['sleep'])\n    return open('/var/task/data.txt').read()\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_code_is_collected_but_never_from_under_an_instance() {
    let test = "unreferenced_code_is_collected_but_never_from_under_an_instance";
    let Some(app) = engine_app(test, |raw| {
        raw.engine.code_gc_after_s = 1;
        raw.engine.keep_alive_s = 1;
    })
    .await
    else {
        return;
    };
    let python = app.runtime("python").await.unwrap();
    let user = app.register().await;
    let token = user.access_token.as_str();
    let kept = deploy_python(&app, token, "kept", KEPT, json!({})).await;
    let late = deploy(
        &app,
        token,
        "late",
        &python,
        "main.handler",
        &[("main.py", LATE_READER), ("data.txt", "still here")],
        json!({"timeout_s": 60}),
    )
    .await;
    let kept_dir = crate::code_entry(
        &app,
        &code_sha256(&app, token, &kept).await,
        Some("main.py"),
    );
    let late_dir = crate::code_entry(&app, &code_sha256(&app, token, &late).await, None);
    assert_eq!(
        invoke(&app, token, &kept, json!({})).await["output"],
        "kept"
    );
    assert!(kept_dir.is_dir());

    // The function is deleted while an invocation runs that reads its code afterwards.
    let request = app
        .client
        .post(format!("{}/api/functions/{late}/execute", app.base))
        .bearer_auth(token)
        .json(&json!({"sleep": 4}));
    let running = tokio::spawn(async move { TestApp::read(request.send().await.unwrap()).await });
    let path = format!("/api/executions?function_id={late}&status=running");
    wait_until("the invocation never started", async || {
        late_dir.is_dir()
            && !app.get(&path, token).await.body["data"]
                .as_array()
                .unwrap()
                .is_empty()
    })
    .await;
    app.delete(&format!("/api/functions/{late}"), token)
        .await
        .expect(204);
    // Unreferenced now, and collections run every 250 ms: the instance's use keeps it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        late_dir.is_dir(),
        "code removed from under a running instance"
    );
    let done = running.await.unwrap().expect(200).body;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"], "still here");

    // Its instance stops after the 1 s keep-alive; a second later its code goes.
    wait_until("unreferenced code was never collected", async || {
        !late_dir.exists()
    })
    .await;
    // Referenced code stays, though its instance stopped and nothing has used it for seconds.
    assert!(kept_dir.is_dir(), "code a function references was removed");
    assert_eq!(
        invoke(&app, token, &kept, json!({})).await["output"],
        "kept"
    );
}

const HELLO: &str = "def handler(e, c):\n    return 'hello'\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_code_cache_answers_503_storage_full_and_the_server_carries_on() {
    let test = "a_full_code_cache_answers_503_storage_full_and_the_server_carries_on";
    if crate::unavailable().is_some() {
        skip(test, &crate::unavailable().unwrap_or_default());
        return;
    }
    let data_dir = std::env::temp_dir().join(format!("voltrun-disk-{}", unique()));
    // The code cache lives on 1 MiB; the database (in the test's own directory) does not.
    let _full = Tmpfs::mount(&data_dir.join("engine").join("code"), "1m", &data_dir);
    let dir = data_dir.clone();
    let Some(app) = engine_app(test, |raw| raw.server.data_dir = dir).await else {
        return;
    };
    let python = app.runtime("python").await.unwrap();
    let user = app.register().await;
    let token = user.access_token.as_str();
    let big = "0".repeat(2 << 20);
    let id = deploy(
        &app,
        token,
        "big",
        &python,
        "main.handler",
        &[("main.py", HELLO), ("big.txt", &big)],
        json!({}),
    )
    .await;

    let refused = app
        .post(&format!("/api/functions/{id}/execute"), token, json!({}))
        .await
        .expect_error(503, "storage_full");
    assert!(
        !refused.text.contains("No space"),
        "the client is not told the host's details: {}",
        refused.text
    );
    let executions = app
        .get(&format!("/api/executions?function_id={id}"), token)
        .await
        .expect(200)
        .body;
    let recorded = &executions["data"][0];
    assert_eq!(recorded["status"], "failed", "{executions}");
    assert_eq!(
        recorded["error"]["type"], "Platform.StorageFull",
        "{recorded}"
    );

    // The half-unpacked code was cleared away: other code still fits, and runs.
    app.send(reqwest::Method::GET, "/health", None, None)
        .await
        .expect(200);
    let small = deploy_python(&app, token, "small", HELLO, json!({})).await;
    let done = invoke(&app, token, &small, json!({})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"], "hello");
}

/// A `provided` function with a source file of about `bytes`, random hex (which PostgreSQL's
/// compression of large values does not shrink).
fn sized_function(name: &str, bytes: usize) -> Value {
    let random: String = (0..bytes / 32).map(|_| unique()).collect();
    let source = format!("#!/bin/sh\n# {random}\n");
    json!({"name": name, "runtime": "provided", "handler": "function.handler",
           "code": {"source": source, "filename": "bootstrap"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sqlite_disk_answers_503_storage_full_and_keeps_what_was_committed() {
    let test = "a_full_sqlite_disk_answers_503_storage_full_and_keeps_what_was_committed";
    if !is_root() {
        skip(test, "mounting a small file system needs root");
        return;
    }
    let root = std::env::temp_dir().join(format!("voltrun-dbfull-{}", unique()));
    let db_dir = root.join("db");
    let _full = Tmpfs::mount(&db_dir, "1m", &root);
    let url = format!("sqlite://{}", db_dir.join("voltrun.db").display());
    let app = TestApp::spawn_with(Backend::Sqlite, |raw| {
        raw.server.database_url = Some(voltrun::config::Secret::new(url));
    })
    .await;
    fill_until_full_then_check_what_was_committed(&app).await;
}

/// A PostgreSQL tablespace on a 1 MiB tmpfs, and what was put in it: dropped (database and
/// tablespace) and unmounted on drop, as the server is shared with other tests.
struct FullTablespace {
    admin_url: String,
    name: String,
    database: Option<String>,
    mount: Option<Tmpfs>,
}

impl FullTablespace {
    /// Makes one, or says why it cannot here.
    async fn make(admin_url: &str) -> Result<Self, String> {
        use sqlx::Connection;
        use std::os::unix::fs::MetadataExt;
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .map_err(|e| e.to_string())?;
        let data_dir: String = sqlx::query_scalar("SHOW data_directory")
            .fetch_one(&mut admin)
            .await
            .map_err(|e| {
                format!("reading the server's data directory (a superuser is needed): {e}")
            })?;
        let owner = std::fs::metadata(&data_dir)
            .map_err(|e| format!("the PostgreSQL server is not on this host ({data_dir}: {e})"))?;
        let root = std::env::temp_dir().join(format!("voltrun-pgfull-{}", unique()));
        let dir = root.join("tablespace");
        let mut made = Self {
            admin_url: admin_url.to_string(),
            name: format!("voltrun_full_{}", unique()),
            database: None,
            mount: Some(Tmpfs::mount(&dir, "1m", &root)),
        };
        std::os::unix::fs::chown(&dir, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let create = format!(
            "CREATE TABLESPACE {} LOCATION '{}'",
            made.name,
            dir.display()
        );
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut admin)
            .await
            .map_err(|e| {
                made.mount.take();
                format!(
                    "the server cannot use a tablespace in {}: {e}",
                    dir.display()
                )
            })?;
        Ok(made)
    }
}

impl Drop for FullTablespace {
    fn drop(&mut self) {
        let (url, name, database) = (
            self.admin_url.clone(),
            self.name.clone(),
            self.database.take(),
        );
        // Its own thread and runtime: a drop cannot await, and this one must finish before the unmount.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    use sqlx::Connection;
                    let mut admin = sqlx::PgConnection::connect(&url).await?;
                    if let Some(database) = database {
                        let drop = format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)");
                        sqlx::query(sqlx::AssertSqlSafe(drop))
                            .execute(&mut admin)
                            .await?;
                    }
                    let drop = format!("DROP TABLESPACE IF EXISTS {name}");
                    sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut admin)
                        .await?;
                    Ok::<(), sqlx::Error>(())
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop tablespace {}: {dropped:?}", self.name);
        }
        self.mount.take();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_postgres_tablespace_answers_503_storage_full_and_keeps_what_was_committed() {
    let test = "a_full_postgres_tablespace_answers_503_storage_full_and_keeps_what_was_committed";
    if !is_root() {
        skip(test, "mounting a small file system needs root");
        return;
    }
    let admin_url = std::env::var("VOLTRUN_TEST_DATABASE_URL")
        .expect("the PostgreSQL tests need VOLTRUN_TEST_DATABASE_URL: run scripts/test.sh");
    let mut tablespace = match FullTablespace::make(&admin_url).await {
        Ok(tablespace) => tablespace,
        Err(why) => {
            skip(test, &why);
            return;
        }
    };
    let app = TestApp::spawn(Backend::Postgres).await;
    let database = app
        .database_url
        .split('?')
        .next()
        .unwrap()
        .rsplit_once('/')
        .unwrap()
        .1;
    tablespace.database = Some(database.to_string());
    // Function code (and its out-of-line storage) moves to the full disk; the rest stays put.
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&app.database_url)
            .await
            .unwrap();
        let alter = format!("ALTER TABLE code_blobs SET TABLESPACE {}", tablespace.name);
        sqlx::query(sqlx::AssertSqlSafe(alter))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    fill_until_full_then_check_what_was_committed(&app).await;
    drop(app);
}

/// Creates functions of ~150 KiB until a 503 `storage_full`; then everything committed before is
/// intact and readable, the refused function left nothing, and the server still serves.
async fn fill_until_full_then_check_what_was_committed(app: &TestApp) {
    let user = app.register().await;
    let token = user.access_token.as_str();

    // Functions of ~150 KiB each until the database's disk is full.
    let mut created = Vec::new();
    let refused = loop {
        assert!(created.len() < 20, "the 1 MiB disk never filled");
        let name = format!("f{}", created.len());
        let reply = app
            .post("/api/functions", token, sized_function(&name, 150 << 10))
            .await;
        if reply.status != 201 {
            break reply;
        }
        created.push((
            name,
            reply.body["code_sha256"].as_str().unwrap().to_string(),
        ));
    };
    refused.expect_error(503, "storage_full");
    assert!(
        !created.is_empty(),
        "the disk was full before anything was stored"
    );

    // Everything committed before is intact and readable; the refused function left nothing.
    app.send(reqwest::Method::GET, "/health", None, None)
        .await
        .expect(200);
    let listed = app
        .get("/api/functions?limit=100", token)
        .await
        .expect(200)
        .body;
    let mut names: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    let mut expected: Vec<&str> = created.iter().map(|(n, _)| n.as_str()).collect();
    expected.sort_unstable();
    assert_eq!(names, expected);
    for f in listed["data"].as_array().unwrap() {
        let code = app
            .get(
                &format!("/api/functions/{}/code", f["id"].as_str().unwrap()),
                token,
            )
            .await
            .expect(200)
            .body;
        let source = code["source"].as_str().unwrap();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(source.as_bytes()));
        assert_eq!(sha, f["code_sha256"].as_str().unwrap(), "code changed");
    }
    app.get("/api/auth/me", token).await.expect(200);
}
