#!/usr/bin/env bash
# Builds the guest agent (crates/agent) as a static x86-64 executable: glibc linked in with
# `-C target-feature=+crt-static`, nothing beyond the Rust toolchain and libc6-dev needed.
#
# The explicit --target keeps RUSTFLAGS away from the host's own build (build scripts, proc macros
# and the debug build other crates share are untouched); the result lands in
#   target/x86_64-unknown-linux-gnu/release/voltrun-agent
# and its path is printed last. Fails if the output is not a static executable.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --locked \
  -p voltrun-agent --bin voltrun-agent --target "$TARGET"
out=target/$TARGET/release/voltrun-agent
# A static executable has no program interpreter (PT_INTERP) and no dynamic section.
if readelf -l "$out" 2>/dev/null | grep -q 'Requesting program interpreter'; then
  echo "build-agent: $out is dynamically linked" >&2
  exit 1
fi
echo "$out"
