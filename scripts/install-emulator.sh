#!/usr/bin/env bash
# Installs what the emulated backend (ENGINE_BACKEND=emulated) and its tests need besides the guest
# kernel and images: Debian's QEMU (qemu-system-x86, whose `microvm` machine boots the Firecracker
# backend's guests under emulation) and rust-vmm's vhost-device-vsock (the vsock device, speaking
# Firecracker's hybrid-vsock protocol on a Unix socket), built from crates.io at a pinned version.
#
#   EMULATOR_INSTALL_DIR   where vhost-device-vsock goes (default: target/emulator/bin)
#
# Idempotent: what is already installed is left alone. QEMU needs root with apt-get; without them
# the script says what to install and exits non-zero. Building vhost-device-vsock takes a few
# minutes on 2 cores (once: it is kept in target/).
set -euo pipefail
cd "$(dirname "$0")/.."

VHOST_VSOCK_VERSION=0.3.0
INSTALL_DIR=${EMULATOR_INSTALL_DIR:-target/emulator/bin}

say() { echo "install-emulator: $*"; }
die() { echo "install-emulator: $*" >&2; exit 1; }

[ "$(uname -m)" = x86_64 ] || die "the emulated guests are x86_64 (this machine is $(uname -m))"

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing qemu-system-x86 (Debian)"
    { apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null; }; } \
      || die "apt-get could not install qemu-system-x86"
  else
    die "qemu-system-x86_64 is missing: apt-get install qemu-system-x86 (as root)"
  fi
fi
say "$(qemu-system-x86_64 --version | head -n 1)"

mkdir -p "$INSTALL_DIR"
INSTALL_DIR=$(cd "$INSTALL_DIR" && pwd)
installed=$("$INSTALL_DIR/vhost-device-vsock" --version 2>/dev/null || true)
if [ "$installed" = "vhost-device-vsock $VHOST_VSOCK_VERSION" ]; then
  say "vhost-device-vsock $VHOST_VSOCK_VERSION already in $INSTALL_DIR"
  exit 0
fi
say "building vhost-device-vsock $VHOST_VSOCK_VERSION from crates.io (a few minutes, once)"
started=$(date +%s)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# Its own target directory: the workspace's build is left alone.
CARGO_TARGET_DIR="$root/target" cargo install --quiet --locked --root "$root" \
  vhost-device-vsock --version "$VHOST_VSOCK_VERSION"
install -m 0755 "$root/bin/vhost-device-vsock" "$INSTALL_DIR/vhost-device-vsock"
say "installed $INSTALL_DIR/vhost-device-vsock in $(( $(date +%s) - started )) s"
