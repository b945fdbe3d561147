//! The Firecracker backend (`ENGINE_BACKEND=firecracker`) driven over HTTP with the real Firecracker
//! binary, up to the boot: this suite's hosts cannot boot a Linux guest (docs/firecracker.md), so
//! the image set's "kernel" is a tiny guest that spins ([`voltrun_vm::guest_probe::spin_kernel`]).
//! The server checks the images, starts a VMM per instance, configures it (memory, vCPUs, kernel,
//! read-only root image, scratch disk, the function's code as a read-only drive, vsock), starts it,
//! and waits for the guest agent; the agent never answers, so the invocation fails with an error that
//! names that step, and nothing of the VM is left behind. What happens after a boot — the agent, the
//! bootstraps, the Runtime API, pools, errors, timeouts and logs through guest instances — is tested
//! in crates/agent/tests/engine_guests.rs. `auto` is tested here too: with no bootable guest it
//! picks the namespace sandbox and says why in /health.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use voltrun_vm::binaries::BinarySearch;
use voltrun_vm::images::{FORMAT, ImageFile, Manifest, RootImage};

use super::helpers::{Backend, TestApp};
use super::{deploy, engine_app, invoke, skip};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What keeps a Firecracker test from running here.
enum Missing {
    /// The binary, which `scripts/install-firecracker.sh` installs.
    Binary(String),
    /// A usable /dev/kvm, which nothing the project installs provides.
    Kvm(String),
}

impl Missing {
    fn report(self, test: &str) {
        match self {
            Self::Binary(why) => skip(test, &why),
            Self::Kvm(why) => voltrun_test_support::skip_without_hardware_kvm(test, &why),
        }
    }
}

/// The real Firecracker binary and a usable /dev/kvm, or why not.
fn firecracker() -> Result<PathBuf, Missing> {
    let mut search = BinarySearch::from_env();
    search.install_dir = Some(repo_root().join("target/firecracker/bin"));
    let binary = search
        .firecracker()
        .map_err(|e| Missing::Binary(e.to_string()))?
        .path;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| Missing::Kvm(format!("/dev/kvm is not usable: {e}")))?;
    Ok(binary)
}

/// An image set whose kernel spins and whose one root image (for `provided`) is an empty ext4.
fn spinning_image_set(dir: &Path) -> PathBuf {
    let images = dir.join("spin-images");
    std::fs::create_dir_all(images.join("empty-root")).unwrap();
    std::fs::write(
        images.join("vmlinux"),
        voltrun_vm::guest_probe::spin_kernel(),
    )
    .unwrap();
    voltrun_vm::image_build::make_ext4(
        &images.join("empty-root"),
        &images.join("provided.ext4"),
        "provided",
    )
    .unwrap();
    Manifest {
        format: FORMAT,
        kernel: Some(ImageFile::describe(&images, "vmlinux").unwrap()),
        bzimage: None,
        initrd: None,
        boot_args: voltrun_vm::image_build::BOOT_ARGS.into(),
        rootfs: vec![RootImage {
            runtime: "provided".into(),
            image: ImageFile::describe(&images, "provided.ext4").unwrap(),
        }],
        agent_sha256: String::new(),
        inputs_sha256: String::new(),
    }
    .save(&images)
    .unwrap();
    images
}

/// What a test up to the boot needs: the real binary, a scratch directory of its own, and the
/// spinning image set in it.
struct Spinning {
    binary: PathBuf,
    scratch: PathBuf,
    images: PathBuf,
}

/// [`Spinning`] for `test`; `None`, after saying why, where this host lacks the binary or KVM (or,
/// for a `jailed` test, root and the sandbox tools).
fn spinning(test: &str, jailed: bool) -> Option<Spinning> {
    let binary = match firecracker() {
        Ok(binary) => binary,
        Err(missing) => {
            missing.report(test);
            return None;
        }
    };
    if jailed && let Some(why) = super::unavailable() {
        skip(test, &why);
        return None;
    }
    let scratch = std::env::temp_dir().join(format!("vfc-{}", uuid::Uuid::new_v4().simple()));
    let images = spinning_image_set(&scratch);
    Some(Spinning {
        binary,
        scratch,
        images,
    })
}

/// The VM jails under a chroot base (`<base>/<exec name>/<vm id>`): none may outlive its VM.
fn jails_left(base: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|exec| {
            std::fs::read_dir(exec.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|vm| vm.path())
        .collect()
}

/// Firecracker processes whose command line mentions `needle`.
fn vmms_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("firecracker") && cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_backend_brings_a_vm_up_to_the_boot_and_names_the_step_that_failed() {
    up_to_the_boot(
        "firecracker_backend_brings_a_vm_up_to_the_boot_and_names_the_step_that_failed",
        false,
    )
    .await;
}

/// The same through the jailer (`VM_JAILER=true`): a chroot, an unprivileged uid, a cgroup and a
/// network namespace per VM; the jail is gone after the failed start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_jailed_firecracker_backend_brings_a_vm_up_to_the_boot_and_removes_the_jail() {
    up_to_the_boot(
        "root_jailed_firecracker_backend_brings_a_vm_up_to_the_boot_and_removes_the_jail",
        true,
    )
    .await;
}

async fn up_to_the_boot(test: &str, jailed: bool) {
    let Some(Spinning {
        binary,
        scratch,
        images,
    }) = spinning(test, jailed)
    else {
        return;
    };
    let app = TestApp::spawn_with(Backend::Sqlite, |raw| {
        raw.engine.backend = voltrun::config::EngineBackend::Firecracker;
        raw.vm.firecracker_bin = Some(binary.clone());
        raw.vm.images_dir = Some(images.clone());
        raw.vm.boot_timeout_ms = 1500;
        raw.vm.jailer = jailed;
    })
    .await;
    let health = app.operator_get("/health").await.expect(200);
    let engine = &health.body["engine"];
    assert_eq!(engine["backend"], "firecracker", "{health:?}");
    let detail = engine["detail"].as_str().unwrap();
    assert!(detail.contains("Firecracker microVMs"), "{engine}");
    assert_eq!(detail.contains("(jailed"), jailed, "{detail}");
    assert!(
        detail.contains("cold starts restore snapshots, 0 ready"),
        "{detail}"
    );
    let user = app.register().await;
    let token = &user.access_token;
    // Only runtimes with a guest image are offered.
    let runtimes = app.get("/api/runtimes", token).await.expect(200).body;
    let ids: Vec<&str> = runtimes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["provided"]);

    let id = deploy(
        &app,
        token,
        "spins",
        "provided",
        "function.handler",
        &[("bootstrap", "#!/bin/sh\nexit 0\n")],
        json!({}),
    )
    .await;
    let started = Instant::now();
    let execution = invoke(&app, token, &id, json!({})).await;
    let took = started.elapsed();
    assert_eq!(execution["status"], "failed", "{execution}");
    assert_eq!(
        execution["error"]["type"], "Platform.SandboxError",
        "{execution}"
    );
    let message = execution["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("vm.agent_connect") && message.contains("did not answer"),
        "{message}"
    );
    // The boot deadline (1.5 s), not the function's timeout, bounded the wait.
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // The VM went with the failed start: no VMM, no VM directory, no socket or scratch disk.
    let run_dir = app.data_dir().join("vm").join("run");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = std::fs::read_dir(&run_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("vm-"))
            .collect();
        let vmms = vmms_mentioning(&app.data_dir().display().to_string());
        let jails = jails_left(&app.data_dir().join("vm").join("jail"));
        if left.is_empty() && vmms.is_empty() && jails.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {left:?}, {vmms:?}, {jails:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The template VM that would have made a snapshot failed at the agent too, and staged nothing.
    let snapshots: Vec<_> = std::fs::read_dir(app.data_dir().join("vm").join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(snapshots.is_empty(), "{snapshots:?}");
    // The code drive was made once, next to the code, for every VM with that code.
    let code_images = std::fs::read_dir(app.data_dir().join("engine").join("code"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "ext4"))
        .count();
    assert_eq!(code_images, 1);
    drop(app);
    let _ = std::fs::remove_dir_all(&scratch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_backend_refuses_to_start_without_verified_images() {
    let Some(Spinning {
        binary,
        scratch,
        images,
    }) = spinning(
        "firecracker_backend_refuses_to_start_without_verified_images",
        false,
    )
    else {
        return;
    };
    // A root image that no longer matches its checksum.
    std::fs::write(images.join("provided.ext4"), b"tampered").unwrap();
    let data_dir = scratch.join("data");
    let mut raw = voltrun::config::SettingsArgs::default();
    raw.server.port = 0;
    raw.server.bind_address = [127, 0, 0, 1].into();
    raw.server.data_dir = data_dir.clone();
    raw.auth.jwt_secret = Some(voltrun::config::Secret::new(b"x".repeat(40)));
    raw.engine.backend = voltrun::config::EngineBackend::Firecracker;
    raw.vm.firecracker_bin = Some(binary.clone());
    raw.vm.images_dir = Some(images.clone());
    let settings =
        voltrun::config::Settings::from_args(raw, &voltrun::startup::read_host()).unwrap();
    let error = voltrun::startup::Application::build(&settings)
        .await
        .expect_err("a server with tampered images started");
    let message = format!("{error:#}");
    assert!(
        message.contains("ENGINE_BACKEND=firecracker") && message.contains("sha256"),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_without_a_bootable_guest_picks_the_namespace_sandbox_and_says_why() {
    let Some(app) = engine_app(
        "auto_without_a_bootable_guest_picks_the_namespace_sandbox_and_says_why",
        |raw| raw.engine.backend = voltrun::config::EngineBackend::Auto,
    )
    .await
    else {
        return;
    };
    let health = app.operator_get("/health").await.expect(200);
    let engine = &health.body["engine"];
    assert_eq!(engine["backend"], "namespace", "{engine}");
    let detail = engine["detail"].as_str().unwrap();
    assert!(
        detail.contains("ENGINE_BACKEND=auto; not Firecracker:"),
        "{detail}"
    );
}

/// The full boot: runs only where `voltrun vm doctor`'s boot probe passes with the images in
/// `VM_IMAGES_DIR` (default `data/vm/images`, as `voltrun vm images build` writes them, else
/// `target/emulated-guest/images`); elsewhere
/// it prints the probe's reason and does not count as passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_boot_runs_python_and_node_functions_in_microvms() {
    let test = "full_boot_runs_python_and_node_functions_in_microvms";
    let binary = match firecracker() {
        Ok(binary) => binary,
        Err(missing) => return missing.report(test),
    };
    // The images `voltrun vm images build` writes by default, else those the test command builds for
    // the emulated guest (the same kernel and root images), so that the probe's reason is the host's.
    let images = std::env::var_os("VM_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let built = repo_root().join("data/vm/images");
            let emulated = repo_root().join("target/emulated-guest/images");
            if !built.join("manifest.json").exists() && emulated.join("manifest.json").exists() {
                emulated
            } else {
                built
            }
        });
    let mut search = BinarySearch::from_env();
    search.firecracker_bin = Some(binary.clone());
    let probe = voltrun_vm::doctor::capability(&voltrun_vm::doctor::DoctorConfig {
        search,
        images_dir: images.clone(),
        boot_deadline: Duration::from_secs(30),
    })
    .await;
    // The images are built by the test command, so what stops a boot here is the host's KVM.
    if !probe.usable {
        return voltrun_test_support::skip_without_hardware_kvm(
            test,
            &format!("no guest boots on this host: {}", probe.reason),
        );
    }
    let app = TestApp::spawn_with(Backend::Sqlite, |raw| {
        raw.engine.backend = voltrun::config::EngineBackend::Firecracker;
        raw.vm.firecracker_bin = Some(binary.clone());
        raw.vm.images_dir = Some(images.clone());
        raw.vm.boot_timeout_ms = 30000;
    })
    .await;
    let user = app.register().await;
    let token = &user.access_token;
    let runtimes = app.get("/api/runtimes", token).await.expect(200).body;
    for runtime in runtimes.as_array().unwrap() {
        let runtime = runtime["id"].as_str().unwrap();
        let (file, source, handler) = if runtime.starts_with("python") {
            (
                "app.py",
                "import time\ndef handler(event, context):\n    time.sleep(event.get('sleep', 0))\n    print('in a guest')\n    return {'n': event['n'] + 1}\n",
                "app.handler",
            )
        } else if runtime.starts_with("nodejs") {
            (
                "index.js",
                "exports.handler = async (event) => { await new Promise((r) => setTimeout(r, (event.sleep || 0) * 1000)); console.log('in a guest'); return { n: event.n + 1 }; };",
                "index.handler",
            )
        } else {
            continue;
        };
        let id = deploy(
            &app,
            token,
            &format!("boot-{}", runtime.replace('.', "-")),
            runtime,
            handler,
            &[(file, source)],
            json!({}),
        )
        .await;
        let cold = invoke(&app, token, &id, json!({"n": 1})).await;
        assert_eq!(cold["status"], "succeeded", "{cold}");
        assert_eq!(cold["output"]["n"], 2);
        assert_eq!(cold["cold_start"], true);
        let warm = invoke(&app, token, &id, json!({"n": 2})).await;
        assert_eq!(warm["output"]["n"], 3);
        assert_eq!(warm["cold_start"], false, "the warm microVM was not reused");
        let logs = super::logs(&app, token, warm["id"].as_str().unwrap()).await;
        assert!(logs.contains("in a guest"), "{logs}");

        // A template VM beside the first cold start snapshots an initialised guest; two invocations
        // at once then need a second instance, restored from it.
        let ready = snapshots_ready(&app).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while snapshots_ready(&app).await == ready {
            assert!(
                Instant::now() < deadline,
                "no snapshot was made for {runtime}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (a, b) = tokio::join!(
            invoke(&app, token, &id, json!({"n": 3, "sleep": 1})),
            invoke(&app, token, &id, json!({"n": 4, "sleep": 1})),
        );
        assert_eq!(a["output"]["n"], 4, "{a}");
        assert_eq!(b["output"]["n"], 5, "{b}");
        let second = if a["cold_start"] == true { &a } else { &b };
        assert_eq!(second["cold_start"], true, "no second instance: {a} {b}");
        let logs = super::logs(&app, token, second["id"].as_str().unwrap()).await;
        assert!(
            logs.contains("Restore Duration"),
            "the second instance was not restored from the snapshot: {logs}"
        );
    }
}

/// How many snapshots the backend says it has ready (`/health`).
async fn snapshots_ready(app: &TestApp) -> usize {
    let health = app.operator_get("/health").await.expect(200);
    let detail = health.body["engine"]["detail"]
        .as_str()
        .unwrap_or("")
        .to_string();
    detail
        .split("snapshots, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Snapshots with the real binary, up to the boot: a snapshot of a guest of the same configuration
/// is restored into a fresh VMM for the next cold start (Firecracker loads it and resumes); its
/// guest has no agent to answer, so the launcher discards the snapshot and boots, and says both.
/// The template VM that would make a snapshot for another configuration fails at the agent too:
/// the failure is recorded, nothing staged is left, and no VMM outlives either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_restored_for_a_cold_start_and_discarded_when_its_guest_does_not_answer() {
    snapshots_up_to_the_boot(
        "a_snapshot_is_restored_for_a_cold_start_and_discarded_when_its_guest_does_not_answer",
        false,
    )
    .await;
}

/// The same with every VM in a jail: snapshots are written inside one jail and restored into
/// another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_jailed_snapshots_are_restored_for_cold_starts() {
    snapshots_up_to_the_boot("root_jailed_snapshots_are_restored_for_cold_starts", true).await;
}

async fn snapshots_up_to_the_boot(test: &str, jailed: bool) {
    use voltrun_engine::isolation::guest::{
        FirecrackerConfig, FirecrackerLauncher, GuestLauncher, GuestSpec,
    };
    use voltrun_engine::isolation::{Capacity, Reservation};

    /// A scheduler whose memory budget has no room left.
    #[derive(Debug)]
    struct NoRoom;
    impl Capacity for NoRoom {
        fn try_reserve(&self, _mib: u32) -> Option<Reservation> {
            None
        }
    }
    let Some(Spinning {
        binary,
        scratch,
        images,
    }) = spinning(test, jailed)
    else {
        return;
    };
    let jailer = jailed.then(|| {
        let mut search = BinarySearch::from_env();
        search.install_dir = Some(repo_root().join("target/firecracker/bin"));
        voltrun_vm::jailer::JailerConfig::new(
            search.jailer().unwrap().path,
            scratch.join("jail"),
            199_999,
            199_999,
        )
    });
    let code_dir = scratch.join("code").join("c0de");
    std::fs::create_dir_all(&code_dir).unwrap();
    std::fs::write(code_dir.join("bootstrap"), "#!/bin/sh\nexit 0\n").unwrap();
    let snapshots = scratch.join("snapshots");
    let launcher = FirecrackerLauncher::new(FirecrackerConfig {
        firecracker: binary,
        jailer,
        run_dir: scratch.join("run"),
        images_dir: images,
        boot_timeout: Duration::from_millis(1500),
        verified_manifest: None,
        snapshot_dir: Some(snapshots.clone()),
        max_snapshots: 4,
    })
    .await
    .unwrap();
    let spec = |instance: &str, memory_mb: u32| GuestSpec {
        name: instance.into(),
        runtime: "provided".into(),
        memory_mb,
        tmp_mb: 16,
        code_dir: code_dir.clone(),
        opt_dir: None,
        command: vec!["/var/task/bootstrap".into()],
        env: vec![
            (
                "AWS_LAMBDA_LOG_STREAM_NAME".into(),
                format!("[1]{instance}"),
            ),
            ("AWS_LAMBDA_INITIALIZATION_TYPE".into(), "on-demand".into()),
        ],
        runtime_api_port: 9001,
        max_processes: 64,
        capacity: None,
    };

    // A snapshot of a running guest of this configuration, where the launcher looks for it.
    let first = spec("i-first", 128);
    let path = launcher.snapshot_path(&first).await.unwrap().unwrap();
    let mut vm = launcher
        .manager()
        .spawn(launcher.vm_spec(&first).await.unwrap())
        .await
        .unwrap();
    vm.configure().await.unwrap();
    vm.start().await.unwrap();
    std::fs::create_dir(&path).unwrap();
    vm.snapshot(&path).await.unwrap();
    vm.stop().await;
    assert!(
        launcher.describe().contains("1 ready"),
        "{}",
        launcher.describe()
    );

    // Another instance of the same configuration (its own name): restored, then booted.
    let started = Instant::now();
    let error = launcher
        .launch(&spec("i-second", 128))
        .await
        .expect_err("a spinning guest answered");
    assert!(
        matches!(
            error,
            voltrun_engine::isolation::guest::GuestError::AfterRestore { .. }
        ),
        "{error}"
    );
    let error = error.to_string();
    assert!(
        error.contains("vm.agent_connect")
            && error.contains("booted after restoring its snapshot failed"),
        "{error}"
    );
    // Two agent deadlines: the restored guest's, then the booted one's.
    assert!(
        started.elapsed() >= Duration::from_millis(3000),
        "{:?}: {error}",
        started.elapsed()
    );
    assert!(!path.exists(), "the snapshot that failed was kept");
    assert!(launcher.snapshot_failure(&first).await.is_some());

    // A configuration without a snapshot: its cold start boots, and a template VM beside it tries
    // to make one, fails at the agent as well, and records why.
    let other = spec("i-other", 256);
    let error = launcher
        .launch(&other)
        .await
        .expect_err("a spinning guest answered")
        .to_string();
    assert!(!error.contains("snapshot"), "{error}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let why = loop {
        if let Some(why) = launcher.snapshot_failure(&other).await {
            break why;
        }
        assert!(Instant::now() < deadline, "the template VM never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(why.contains("vm.agent_connect"), "{why}");

    // An engine memory budget with no room for a template VM: the cold start boots, no template.
    let mut starved = spec("i-starved", 512);
    starved.capacity = Some(std::sync::Arc::new(NoRoom));
    launcher
        .launch(&starved)
        .await
        .expect_err("a spinning guest answered");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        launcher.snapshot_failure(&starved).await,
        None,
        "a template VM ran"
    );
    let left: Vec<_> = std::fs::read_dir(&snapshots)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left in the snapshot directory: {left:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let jails = jails_left(&scratch.join("jail"));
        if vmms_mentioning(&scratch.display().to_string()).is_empty() && jails.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "VMMs or jails outlived their guests: {jails:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(launcher);
    let _ = std::fs::remove_dir_all(&scratch);
}
