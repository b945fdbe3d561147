#!/usr/bin/env bash
# Prepares everything the emulated backend (ENGINE_BACKEND=emulated) and its tests boot: QEMU and
# vhost-device-vsock (scripts/install-emulator.sh), the guest kernel as vmlinux and bzImage
# (scripts/build-guest-kernel.sh), the static guest agent (scripts/build-agent.sh), and the image set
# (`voltrun vm images build --kernel … --bzimage …`) in target/emulated-guest/images, where the
# engine suite's emulated tests look for it (VOLTRUN_EMULATED_IMAGES overrides).
#
# Each step skips what is already built, so a second run takes seconds. The first takes several
# minutes on 2 cores (the kernel about 5, vhost-device-vsock about 3). Needs root with apt-get.
#
#   scripts/build-emulated-guest.sh
#   ENGINE_BACKEND=emulated VM_IMAGES_DIR=target/emulated-guest/images VM_BOOT_TIMEOUT_MS=60000 ./scripts/server.sh
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGES=${VOLTRUN_EMULATED_IMAGES:-target/emulated-guest/images}

./scripts/install-emulator.sh
./scripts/build-guest-kernel.sh
agent=$(./scripts/build-agent.sh)
cargo run --quiet --bin voltrun -- vm images build \
  --out "$IMAGES" --agent "$agent" \
  --kernel target/guest-kernel/vmlinux --bzimage target/guest-kernel/bzImage
