//! `voltrun vm images build`: the root images are read back with debugfs (e2fsprogs) — the agent is
//! there, executable, static and byte-identical; the runtimes and bootstraps are there; the manifest's
//! checksums are true — and, as root, the Python and Node.js trees extracted from the images run
//! their interpreters chrooted, and the Python image's own agent, bootstrap and interpreter run a
//! function through the vsock protocol: the guest's whole userland, without the guest kernel.
//!
//! The full build needs the static agent from scripts/build-agent.sh (CI builds it); without it the
//! test prints `SKIPPED …` and why.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use voltrun_vm::image_build::{self, BuildConfig, BuildError, RuntimeSource, is_static_elf};
use voltrun_vm::images::{Manifest, sha256_file};

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "vi-{name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs) is needed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dump(image: &Path, inside: &str, to: &Path) -> Vec<u8> {
    debugfs(image, &format!("dump {inside} {}", to.display()));
    std::fs::read(to).unwrap_or_default()
}

#[test]
fn a_dynamically_linked_agent_or_a_compressed_kernel_is_refused() {
    let dir = TempDir::new("refuse");
    let mut config = BuildConfig {
        out_dir: dir.0.join("out"),
        agent: PathBuf::from("/bin/sh"),
        runtimes: vec![RuntimeSource::Provided],
        kernel: None,
        bzimage: None,
        initrd: None,
    };
    assert!(matches!(
        image_build::build(&config),
        Err(BuildError::AgentNotStatic(_))
    ));

    let fake_static = dir.0.join("agent");
    std::fs::write(&fake_static, voltrun_vm::guest_probe::spin_kernel()).unwrap();
    let bzimage = dir.0.join("vmlinuz");
    std::fs::write(&bzimage, b"MZ\x00\x00 a bzImage is not an ELF").unwrap();
    config.agent = fake_static;
    config.kernel = Some(bzimage);
    let error = image_build::build(&config).unwrap_err();
    assert!(matches!(error, BuildError::KernelNotElf(_)), "{error}");
}

#[test]
fn images_hold_the_static_agent_the_runtimes_and_a_true_manifest() {
    let test = "images_hold_the_static_agent_the_runtimes_and_a_true_manifest";
    let agent = repo().join("target/x86_64-unknown-linux-gnu/release/voltrun-agent");
    if !is_static_elf(&agent) {
        return voltrun_test_support::skip(
            test,
            &format!(
                "no static agent at {} (run scripts/build-agent.sh)",
                agent.display()
            ),
        );
    }
    let dir = TempDir::new("build");
    // A stand-in kernel (a tiny ELF): this test checks packaging, not booting.
    let kernel = dir.0.join("vmlinux-standin");
    std::fs::write(&kernel, voltrun_vm::guest_probe::spin_kernel()).unwrap();
    let config = BuildConfig {
        out_dir: dir.0.join("images"),
        agent: agent.clone(),
        runtimes: vec![
            RuntimeSource::Python("/usr/bin/python3".into()),
            RuntimeSource::Node("/usr/bin/node".into()),
            RuntimeSource::Provided,
        ],
        kernel: Some(kernel.clone()),
        bzimage: None,
        initrd: None,
    };

    let started = std::time::Instant::now();
    let report = image_build::build(&config).unwrap();
    say(&format!(
        "MEASURED images build (python, node, provided): {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    assert!(report.rebuilt);
    let out = &config.out_dir;
    let manifest = Manifest::load(out).unwrap();
    assert_eq!(manifest, report.manifest);
    let runtimes: Vec<&str> = manifest.rootfs.iter().map(|r| r.runtime.as_str()).collect();
    assert!(runtimes[0].starts_with("python3."), "{runtimes:?}");
    assert!(runtimes[1].starts_with("nodejs"), "{runtimes:?}");
    assert_eq!(runtimes[2], "provided");
    assert_eq!(manifest.agent_sha256, sha256_file(&agent).unwrap());
    assert_eq!(
        manifest.kernel.as_ref().unwrap().sha256,
        sha256_file(&kernel).unwrap()
    );
    for file in manifest
        .rootfs
        .iter()
        .map(|r| &r.image)
        .chain(manifest.kernel.iter())
    {
        assert_eq!(
            sha256_file(&out.join(&file.file)).unwrap(),
            file.sha256,
            "{}",
            file.file
        );
        assert_eq!(
            std::fs::metadata(out.join(&file.file)).unwrap().len(),
            file.bytes
        );
    }
    assert!(manifest.verify(out).is_ok());

    let scratch = dir.0.join("dumped");
    for root in &manifest.rootfs {
        let image = out.join(&root.image.file);
        // The agent is init: present, executable, static, identical.
        let stat = debugfs(&image, "stat /usr/sbin/init");
        assert!(stat.contains("Mode:  0755"), "{}: {stat}", root.runtime);
        let init = dump(&image, "/usr/sbin/init", &scratch);
        assert_eq!(init, std::fs::read(&agent).unwrap(), "{}", root.runtime);
        assert!(is_static_elf(&scratch));
        assert!(debugfs(&image, "stat /sbin").contains("Type: symlink"));
        let bootstrap = dump(&image, "/var/runtime/bootstrap.py", &scratch);
        assert_eq!(
            bootstrap,
            std::fs::read(repo().join("crates/engine/bootstraps/bootstrap.py")).unwrap()
        );
        let listing = debugfs(&image, "ls -p /");
        for dir in ["proc", "sys", "dev", "tmp", "var", "etc", "usr"] {
            assert!(
                listing.contains(&format!("/{dir}/")),
                "{}: no /{dir}: {listing}",
                root.runtime
            );
        }
        assert_eq!(
            String::from_utf8(dump(&image, "/etc/voltrun-runtime", &scratch)).unwrap(),
            root.runtime
        );
    }
    let python = out.join(&manifest.rootfs[0].image.file);
    assert!(debugfs(&python, "ls -p /usr/lib/python3.11/json").contains("/__init__.py/"));
    assert!(debugfs(&python, "stat /usr/bin/python3").contains("Type: symlink"));
    assert!(!debugfs(&python, "ls -p /usr/lib/python3.11").contains("/test/"));
    let node = out.join(&manifest.rootfs[1].image.file);
    assert!(debugfs(&node, "stat /usr/bin/node").contains("Mode:  0755"));
    let provided = out.join(&manifest.rootfs[2].image.file);
    assert!(!debugfs(&provided, "ls -p /usr/bin").contains("python"));

    // Nothing changed: nothing is rebuilt.
    let before = std::fs::metadata(&python).unwrap().modified().unwrap();
    let again = image_build::build(&config).unwrap();
    assert!(!again.rebuilt);
    assert_eq!(
        std::fs::metadata(&python).unwrap().modified().unwrap(),
        before
    );

    // The extracted trees run their interpreters on their own (chroot needs root).
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if uid.ok() != Some(0) {
        return voltrun_test_support::skip(
            &format!("{test} (chroot part)"),
            "not root (the image contents were checked above)",
        );
    }
    for (root, command) in [
        (
            &python,
            vec![
                "/usr/bin/python3",
                "-c",
                "import json, ssl, sqlite3; print(json.dumps('ok'))",
            ],
        ),
        (
            &node,
            vec!["/usr/bin/node", "-e", "console.log(JSON.stringify('ok'))"],
        ),
    ] {
        let tree = dir.0.join("tree");
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(&tree).unwrap();
        debugfs(root, &format!("rdump / {}", tree.display()));
        let out = Command::new("chroot")
            .arg(&tree)
            .args(&command)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command:?} in {}: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"ok\"");
    }

    // The Python image's whole guest userland — its agent as init (minus the mounts), its
    // bootstrap, its interpreter — runs a function, chrooted, through the vsock protocol.
    let tree = dir.0.join("python-tree");
    std::fs::create_dir_all(&tree).unwrap();
    debugfs(&python, &format!("rdump / {}", tree.display()));
    std::fs::write(
        tree.join("var/task/app.py"),
        "def handler(event, context):\n    print('in the image')\n    return {'echo': event}\n",
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run_function_in_tree(&tree));
}

async fn run_function_in_tree(tree: &Path) {
    use std::time::Duration;
    use voltrun_agent::host::{AgentSession, InvokeOutcome, StartOutcome};
    use voltrun_agent::protocol::StartSpec;

    let mut agent = tokio::process::Command::new("chroot")
        .arg(tree)
        .args([
            "/sbin/init",
            "--no-init",
            "--once",
            "--unix",
            "/tmp/agent.sock",
        ])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let timeout = Duration::from_secs(20);
    let mut session = AgentSession::connect(&tree.join("tmp/agent.sock"), 52, timeout)
        .await
        .unwrap();
    let spec = StartSpec {
        command: vec![
            "/usr/bin/python3".into(),
            "/var/runtime/bootstrap.py".into(),
        ],
        env: vec![
            ("_HANDLER".into(), "app.handler".into()),
            ("LAMBDA_TASK_ROOT".into(), "/var/task".into()),
            ("PATH".into(), "/usr/bin".into()),
        ],
        cwd: "/var/task".into(),
        runtime_api_port: 0,
        max_processes: 0,
    };
    let started = session.start(spec, timeout).await.unwrap();
    assert!(matches!(started, StartOutcome::Ready { .. }), "{started:?}");
    let outcome = session
        .invoke("img-1", br#"{"a":1}"#.to_vec(), i64::MAX, "arn", timeout)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        InvokeOutcome::Response(br#"{"echo": {"a": 1}}"#.to_vec())
    );
    assert!(session.take_logs().iter().any(|l| l.line == "in the image"));
    session.shutdown().await;
    let status = tokio::time::timeout(timeout, agent.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn a_code_drive_holds_thousands_of_empty_files() {
    // A bundle may hold up to 10,000 entries of no size: the image needs an inode for each, which a
    // size-based image of 16 MiB does not have by default (about a thousand).
    let dir = TempDir::new("many-files");
    let tree = dir.0.join("tree");
    for d in 0..10 {
        let sub = tree.join(format!("d{d}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..500 {
            std::fs::write(sub.join(format!("f{f}")), b"").unwrap();
        }
    }
    let image = dir.0.join("code.ext4");
    image_build::make_ext4(&tree, &image, "code").expect("the image is made");
    let listing = debugfs(&image, "ls -l /d9");
    assert!(listing.contains("f499"), "{listing}");
}
