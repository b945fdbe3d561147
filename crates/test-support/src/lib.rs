//! What the workspace's test suites share: how a test that cannot run on this host says so.
//!
//! A test that needs something the host lacks prints `SKIPPED <test>: <why>` on the real stderr
//! (the test harness's output capture does not hide it) and returns; `scripts/test.sh` lists those
//! lines again at the end, so a skip is never mistaken for a pass.
//!
//! With `VOLTRUN_REQUIRE_SANDBOX=1` in the environment (`.ci/run` sets it), [`skip`] fails the test
//! instead: a CI host that lost root, bubblewrap, a cgroup controller or a built guest cannot go
//! green by skipping what it was meant to prove. Hardware virtualisation is the one exception
//! ([`skip_without_hardware_kvm`]): where `/dev/kvm` is missing or is a paravirtualised KVM that
//! boots no stock guest kernel, nothing the project installs can provide it.

use std::io::Write;

/// The environment variable that turns [`skip`] into a failure.
pub const REQUIRE_SANDBOX: &str = "VOLTRUN_REQUIRE_SANDBOX";

/// Whether every test that needs the sandbox must run here.
pub fn sandbox_required() -> bool {
    std::env::var(REQUIRE_SANDBOX).is_ok_and(|v| v == "1")
}

/// Reports that `test` cannot run here because of `why`: a failure under `VOLTRUN_REQUIRE_SANDBOX=1`,
/// else a `SKIPPED` line. The caller returns after it.
#[track_caller]
pub fn skip(test: &str, why: &str) {
    skip_unless_required(sandbox_required(), test, why);
}

#[track_caller]
fn skip_unless_required(required: bool, test: &str, why: &str) {
    if required {
        panic!("{test} cannot run here: {why}, and {REQUIRE_SANDBOX}=1 requires it to");
    }
    say_skipped(test, why);
}

/// Reports that `test` did not run because this host has no hardware KVM (`why` says what it has).
/// Never a failure: the project cannot install hardware virtualisation.
pub fn skip_without_hardware_kvm(test: &str, why: &str) {
    say_skipped(test, why);
}

fn say_skipped(test: &str, why: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {why} (this test did not run)"
    );
}

#[cfg(test)]
mod tests {
    use super::skip_unless_required;

    #[test]
    #[should_panic(expected = "t cannot run here: no bubblewrap, and VOLTRUN_REQUIRE_SANDBOX=1")]
    fn a_required_test_that_cannot_run_fails() {
        skip_unless_required(true, "t", "no bubblewrap");
    }
}
