#!/usr/bin/env bash
# Runs the VoltRun server on its embedded defaults: SQLite in ./data, the namespace sandbox.
#
# The sandbox needs bubblewrap and root. As root on Debian/Ubuntu this installs bubblewrap when it is
# missing; otherwise the server still starts, stores functions, and says in /health why it cannot run
# them. Extra arguments go to `voltrun server` (e.g. --port 9090); see `.env.example` for settings.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "server.sh: installing bubblewrap (the function sandbox)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap
  else
    echo "server.sh: bubblewrap is missing: functions will deploy but not run." >&2
    echo "server.sh: install it with: sudo apt-get install bubblewrap   (and run the server as root)" >&2
  fi
fi
if [ "$(id -u)" != 0 ]; then
  echo "server.sh: not root: functions will deploy but not run (the sandbox needs root)." >&2
fi

cargo build --release -p voltrun
exec target/release/voltrun server "$@"
