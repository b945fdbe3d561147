#!/usr/bin/env bash
# Installs AWS's official Lambda runtime interface clients into a cache directory, for the engine
# suite's tests that run them unmodified as `provided` functions (crates/voltrun/tests/engine/ric.rs):
#
#   $VOLTRUN_RIC_DIR/python   awslambdaric (PyPI), `pip install --target`, a wheel for the sandbox's
#                             interpreter (Debian's /usr/bin/python3, 3.11)
#   $VOLTRUN_RIC_DIR/node     aws-lambda-ric (npm), `npm install --prefix`; it builds a native addon
#                             (aws-lambda-cpp and curl) with cmake, autoconf, automake, libtool, g++,
#                             make and libcurl4-openssl-dev
#
# VOLTRUN_RIC_DIR defaults to target/rics under the repository root. Idempotent: a client already
# installed at the pinned version is left alone. Missing Debian build packages are installed with
# apt-get when running as root; otherwise the script prints the command and exits 1.
# Needs the package registries (PyPI, npm and, for the build packages, Debian) and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

PY_RIC_VERSION=4.2.2
NODE_RIC_VERSION=4.0.2
RIC_DIR=${VOLTRUN_RIC_DIR:-target/rics}
mkdir -p "$RIC_DIR"
RIC_DIR=$(cd "$RIC_DIR" && pwd)

say() { echo "install-rics: $*"; }
die() { echo "install-rics: $*" >&2; exit 1; }

# --- awslambdaric (Python) -------------------------------------------------------------------------
py_dir="$RIC_DIR/python"
if [ -d "$py_dir/awslambdaric-$PY_RIC_VERSION.dist-info" ] && [ -d "$py_dir/awslambdaric" ]; then
  say "awslambdaric $PY_RIC_VERSION already in $py_dir"
else
  # A pip that can install wheels for Python 3.11 (the sandbox runs /usr/bin/python3): Debian's own
  # pip first, then whatever python3 is on PATH; the target version is pinned either way.
  pip_cmd=()
  for py in /usr/bin/python3 python3; do
    if "$py" -m pip --version >/dev/null 2>&1; then
      pip_cmd=("$py" -m pip)
      break
    fi
  done
  if [ ${#pip_cmd[@]} -eq 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing python3-pip"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
      pip_cmd=(/usr/bin/python3 -m pip)
    else
      die "no pip for Python 3 found; install it with:  sudo apt-get install -y python3-pip"
    fi
  fi
  sandbox_py=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo 3.11)
  say "installing awslambdaric==$PY_RIC_VERSION for Python $sandbox_py with ${pip_cmd[*]}"
  start=$SECONDS
  rm -rf "$py_dir"
  "${pip_cmd[@]}" install --quiet --no-input --disable-pip-version-check --root-user-action=ignore --no-compile \
    --python-version "$sandbox_py" --only-binary=:all: \
    --target "$py_dir" "awslambdaric==$PY_RIC_VERSION"
  [ -d "$py_dir/awslambdaric-$PY_RIC_VERSION.dist-info" ] || die "pip did not install awslambdaric $PY_RIC_VERSION"
  say "awslambdaric $PY_RIC_VERSION installed in $((SECONDS - start)) s"
fi

# --- aws-lambda-ric (Node.js) ----------------------------------------------------------------------
node_dir="$RIC_DIR/node"
node_pkg="$node_dir/node_modules/aws-lambda-ric"
installed_node_version() {
  [ -f "$node_pkg/package.json" ] || return 0
  node -e 'process.stdout.write(require(process.argv[1]).version)' "$node_pkg/package.json" 2>/dev/null || true
}
# The native addon (rapid-client.node, copied to the package root by its postinstall) is the part
# that fails to build without the Debian packages: check it is there.
node_addon_built() {
  find "$node_pkg" -name '*.node' -type f 2>/dev/null | grep -q .
}
if [ "$(installed_node_version)" = "$NODE_RIC_VERSION" ] && node_addon_built; then
  say "aws-lambda-ric $NODE_RIC_VERSION already in $node_dir"
else
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || die "node and npm are needed (apt-get install nodejs npm)"
  # Build tools for the addon: Debian package => a file or command that shows it is installed.
  missing=()
  for pair in cmake:cmake autoconf:autoconf automake:automake libtool:libtoolize g++:g++ make:make; do
    command -v "${pair#*:}" >/dev/null 2>&1 || missing+=("${pair%%:*}")
  done
  if ! dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 && ! [ -f /usr/include/x86_64-linux-gnu/curl/curl.h ] \
      && ! [ -f /usr/include/curl/curl.h ]; then
    missing+=(libcurl4-openssl-dev)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing build packages: ${missing[*]}"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "install-rics: aws-lambda-ric builds a native addon and needs: ${missing[*]}" >&2
      echo "install-rics: install them with:  sudo apt-get install -y ${missing[*]}" >&2
      exit 1
    fi
  fi
  say "installing aws-lambda-ric@$NODE_RIC_VERSION (builds a native addon, about a minute)"
  start=$SECONDS
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  echo '{"name":"voltrun-ric-cache","private":true}' >"$node_dir/package.json"
  npm install --prefix "$node_dir" --no-audit --no-fund --omit=dev --loglevel=error \
    "aws-lambda-ric@$NODE_RIC_VERSION"
  [ "$(installed_node_version)" = "$NODE_RIC_VERSION" ] && node_addon_built \
    || die "npm did not install aws-lambda-ric $NODE_RIC_VERSION with its native addon"
  say "aws-lambda-ric $NODE_RIC_VERSION installed in $((SECONDS - start)) s"
fi
