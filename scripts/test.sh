#!/usr/bin/env bash
# Runs VoltRun's whole test suite: unit tests, the HTTP API suite against SQLite and PostgreSQL, the
# CLI suite, the execution-engine suite (real functions in the namespace sandbox, and the microVM guest
# booted under QEMU's emulation), and then the
# contract run (scripts/contract-test.sh: the real server fuzzed against its own OpenAPI document
# for about a minute).
#
# The engine suite needs root and bubblewrap; where they are missing its tests print
# "SKIPPED <test>: <why>" and this script repeats why at the end. It never counts them as run.
#
# PostgreSQL: uses VOLTRUN_TEST_DATABASE_URL when set (a server where the user may CREATE DATABASE);
# otherwise starts a throwaway cluster from the installed PostgreSQL server binaries (initdb in a
# temporary directory, a random port on 127.0.0.1) and removes it afterwards. It never skips the
# PostgreSQL half: without binaries it stops and prints the command that installs them.
#
# Extra arguments go to `cargo test` (e.g. scripts/test.sh auth:: to run a subset); a subset skips
# the contract run, which says so.
set -euo pipefail
cd "$(dirname "$0")/.."

# start_throwaway_postgres / stop_throwaway_postgres
source scripts/lib/postgres.sh

if [ -z "${VOLTRUN_TEST_DATABASE_URL:-}" ]; then
  trap stop_throwaway_postgres EXIT
  start_throwaway_postgres VOLTRUN_TEST_DATABASE_URL
  export VOLTRUN_TEST_DATABASE_URL="$PG_URL"
else
  echo "test.sh: PostgreSQL from VOLTRUN_TEST_DATABASE_URL"
fi

# What the suites run besides our own code, installed once into target/ (each script skips what is
# already there): the pinned Firecracker + jailer (crates/vm tests), the static guest agent (image
# builder tests), AWS's official runtime interface clients (engine suite), and Schemathesis (the
# contract run).
./scripts/install-firecracker.sh
./scripts/build-agent.sh >/dev/null
./scripts/install-rics.sh
./scripts/install-schemathesis.sh

# The emulated guest (crates/voltrun/tests/engine/emulated.rs boots the microVM guest under QEMU):
# QEMU, vhost-device-vsock, the guest kernel and the images, built once into target/ (several minutes
# the first time). It needs root with apt-get; elsewhere those tests say why they did not run.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  ./scripts/build-emulated-guest.sh
else
  echo "test.sh: not root with apt-get: the emulated guest is not built, and its tests will say so" >&2
fi

sandbox_missing=""
if [ "$(id -u)" != 0 ]; then
  sandbox_missing="not running as root"
elif ! command -v bwrap >/dev/null 2>&1; then
  sandbox_missing="bubblewrap is not installed (apt-get install bubblewrap)"
fi

# Tests that cannot run on this host print "SKIPPED <test>: <why>"; they are listed again at the end.
test_log=$(mktemp)
trap 'rm -f "$test_log"; stop_throwaway_postgres' EXIT
cargo test --workspace "$@" 2>&1 | tee "$test_log"

if grep -q '^SKIPPED ' "$test_log"; then
  echo "test.sh: these tests did NOT run on this host (they are not counted as passed):" >&2
  grep '^SKIPPED ' "$test_log" | sort -u | sed 's/^/  /' >&2
fi

if [ -n "$sandbox_missing" ]; then
  echo "test.sh: NOTE: the execution-engine tests (crates/voltrun/tests/engine) did not run: $sandbox_missing." >&2
  echo "test.sh: they need root and bubblewrap; run this script as root to include them." >&2
fi

# The contract run fails the suite on any response that breaks the OpenAPI document; it prints its
# own summary (and, without root and bubblewrap, runs the server without an engine).
if [ $# -eq 0 ]; then
  echo "== scripts/contract-test.sh (the server fuzzed against its OpenAPI document)"
  ./scripts/contract-test.sh
else
  echo "test.sh: a subset was asked for, so the contract run was skipped (run scripts/contract-test.sh)" >&2
fi
