//! `voltrun vm doctor`'s checks on this host, with the real Firecracker binary (installed by
//! scripts/install-firecracker.sh). Whatever passes or fails, every check must say why.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use voltrun_vm::binaries::BinarySearch;
use voltrun_vm::doctor::{self, DoctorConfig};

fn config(images_dir: &Path) -> DoctorConfig {
    let mut search = BinarySearch::from_env();
    search.install_dir =
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/firecracker/bin"));
    DoctorConfig {
        search,
        images_dir: images_dir.to_path_buf(),
        boot_deadline: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn without_images_the_doctor_fails_the_boot_and_says_why() {
    let missing = std::env::temp_dir().join("voltrun-no-images-here");

    let report = doctor::run(&config(&missing)).await;
    let _ = writeln!(std::io::stderr(), "{}", report.render());

    let check = |name: &str| report.checks.iter().find(|c| c.name == name).unwrap();
    let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "kvm",
            "firecracker",
            "jailer",
            "images",
            "guest-code",
            "boot"
        ]
    );
    assert!(
        check("firecracker").passed,
        "{}",
        check("firecracker").detail
    );
    assert!(check("firecracker").detail.starts_with("v1.12.1 at "));
    assert!(check("jailer").passed, "{}", check("jailer").detail);
    assert!(!check("images").passed);
    assert!(check("images").detail.contains("voltrun vm images build"));
    assert!(!check("boot").passed);
    assert!(check("boot").detail.starts_with("not attempted"));
    // Where KVM is usable, a tiny guest runs even though real guests may not boot.
    if check("kvm").passed {
        assert!(check("guest-code").passed, "{}", check("guest-code").detail);
    } else {
        assert!(check("guest-code").detail.contains("/dev/kvm"));
    }
    assert!(!report.all_passed());
    for c in &report.checks {
        assert!(!c.detail.is_empty(), "{} has no reason", c.name);
    }

    let capability = doctor::capability(&config(&missing)).await;
    assert!(!capability.usable);
    assert!(
        capability.reason.starts_with("kvm:") || capability.reason.starts_with("images:"),
        "{}",
        capability.reason
    );
}
