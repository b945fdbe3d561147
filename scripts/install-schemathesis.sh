#!/usr/bin/env bash
# Installs Schemathesis (PyPI), the property-based API tester that scripts/contract-test.sh drives
# from the server's own OpenAPI document, into a cache directory:
#
#   $VOLTRUN_SCHEMATHESIS_DIR/lib   schemathesis and its dependencies, `pip install --target`, at the
#                                   versions pinned in scripts/contract/requirements.txt
#   $VOLTRUN_SCHEMATHESIS_DIR/st    a launcher: runs the CLI with the interpreter it was installed for
#
# VOLTRUN_SCHEMATHESIS_DIR defaults to target/schemathesis under the repository root. Idempotent: an
# install of the pinned version is left alone. Schemathesis needs Python 3.11 or later (Debian 12's
# python3); without pip the script installs python3-pip with apt-get when running as root, otherwise
# it prints the command and exits 1. Needs PyPI (and, for pip, Debian's packages) and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
REQUIREMENTS=scripts/contract/requirements.txt
DIR=${VOLTRUN_SCHEMATHESIS_DIR:-target/schemathesis}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

say() { echo "install-schemathesis: $*"; }
die() { echo "install-schemathesis: $*" >&2; exit 1; }

grep -qx "schemathesis==$SCHEMATHESIS_VERSION" "$REQUIREMENTS" \
  || die "$REQUIREMENTS does not pin schemathesis==$SCHEMATHESIS_VERSION"

# The marker is written last, so an interrupted install is redone rather than half used.
marker="$DIR/installed"
if [ -x "$DIR/st" ] && [ "$(cat "$marker" 2>/dev/null)" = "schemathesis==$SCHEMATHESIS_VERSION" ] \
    && "$DIR/st" --version >/dev/null 2>&1; then
  say "schemathesis $SCHEMATHESIS_VERSION already in $DIR"
  exit 0
fi

# An interpreter of 3.11 or later with pip: Debian's own first, then whatever python3 is on PATH.
python=""
for py in /usr/bin/python3 python3; do
  if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python=$(command -v "$py")
    break
  fi
done
[ -n "$python" ] || die "Schemathesis needs Python 3.11 or later (apt-get install python3)"
if ! "$python" -m pip --version >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$python" = /usr/bin/python3 ]; then
    say "installing python3-pip"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  else
    die "no pip for $python; install it with:  sudo apt-get install -y python3-pip"
  fi
fi

say "installing schemathesis==$SCHEMATHESIS_VERSION for $python ($("$python" --version 2>&1))"
start=$SECONDS
rm -rf "$DIR/lib" "$DIR/st" "$marker"
# --target ignores what the interpreter already has, so the pins decide every version; Debian's pip
# refuses to install into the system without --break-system-packages, which --target never touches.
"$python" -m pip install --quiet --no-input --disable-pip-version-check --root-user-action=ignore \
  --no-compile --only-binary=:all: --target "$DIR/lib" -r "$REQUIREMENTS"
cat >"$DIR/st" <<LAUNCHER
#!/bin/sh
# Runs the Schemathesis CLI installed beside this file (scripts/install-schemathesis.sh wrote it).
PYTHONPATH="$DIR/lib" exec "$python" -s -m schemathesis.cli "\$@"
LAUNCHER
chmod +x "$DIR/st"
installed=$("$DIR/st" --version 2>&1) || die "the installed schemathesis does not start: $installed"
case "$installed" in
  *"$SCHEMATHESIS_VERSION"*) ;;
  *) die "expected schemathesis $SCHEMATHESIS_VERSION, found: $installed" ;;
esac
echo "schemathesis==$SCHEMATHESIS_VERSION" >"$marker"
say "schemathesis $SCHEMATHESIS_VERSION installed in $((SECONDS - start)) s"
