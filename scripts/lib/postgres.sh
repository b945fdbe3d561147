# A throwaway PostgreSQL cluster for scripts: sourced by scripts/test.sh and scripts/bench-api.sh.
#
# start_throwaway_postgres: initdb in a temporary directory, start the server on a random port on
# 127.0.0.1 (durability off, it is deleted afterwards) and set PG_URL to its postgres:// URL.
# Without server binaries it stops the script and prints the command that installs them.
# stop_throwaway_postgres: stop it and remove its directory (safe to call when none was started).
#
# Messages are prefixed with PG_SCRIPT_NAME (default: the calling script's file name) and name what
# needs the cluster as PG_PURPOSE (default: "the PostgreSQL half of the suite"). A caller sets
# `trap stop_throwaway_postgres EXIT` (or calls it from its own trap) before starting one.

PG_SCRIPT_NAME=${PG_SCRIPT_NAME:-$(basename "$0")}
PG_PURPOSE=${PG_PURPOSE:-the PostgreSQL half of the suite}
PG_TMP=""
PG_RUN_AS=()
PG_BIN=""
PG_URL=""

find_pg_bin() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
    return
  fi
  # Debian/Ubuntu keep server binaries off PATH, one directory per major version; take the newest.
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then echo "$dir"; fi
}

# $1: the environment variable that can point at an existing server instead, for the error message.
start_throwaway_postgres() {
  local alternative=${1:-}
  local bin
  bin=$(find_pg_bin)
  if [ -z "$bin" ]; then
    echo "$PG_SCRIPT_NAME: $PG_PURPOSE needs PostgreSQL server binaries (initdb, pg_ctl)." >&2
    echo "$PG_SCRIPT_NAME: install them with:  sudo apt-get install -y postgresql   (macOS: brew install postgresql)" >&2
    if [ -n "$alternative" ]; then
      echo "$PG_SCRIPT_NAME: or point $alternative at a server where you may CREATE DATABASE." >&2
    fi
    exit 1
  fi
  PG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/voltrun-pg.XXXXXX")
  # initdb refuses to run as root; as root, run the cluster as the postgres (or nobody) user.
  local run_as=()
  if [ "$(id -u)" = 0 ]; then
    local user=postgres
    id "$user" >/dev/null 2>&1 || user=nobody
    chown "$user" "$PG_TMP"
    run_as=(runuser -u "$user" --)
  fi
  PG_RUN_AS=("${run_as[@]}")
  PG_BIN=$bin
  "${run_as[@]}" "$bin/initdb" -D "$PG_TMP/data" -U postgres --auth=trust -E UTF8 --no-sync >"$PG_TMP/initdb.log" 2>&1 \
    || { cat "$PG_TMP/initdb.log" >&2; exit 1; }
  local attempt port
  for attempt in 1 2 3 4 5 6 7 8; do
    port=$((20000 + RANDOM % 30000))
    # Durability is pointless for a cluster that is deleted afterwards; turning it off speeds tests up.
    if "${run_as[@]}" "$bin/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -w -t 30 start \
        -o "-p $port -k $PG_TMP -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
        >/dev/null 2>&1; then
      PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
      echo "$PG_SCRIPT_NAME: throwaway PostgreSQL ($("$bin/postgres" --version | awk '{print $NF}')) on 127.0.0.1:$port"
      return
    fi
  done
  echo "$PG_SCRIPT_NAME: could not start PostgreSQL; its log:" >&2
  cat "$PG_TMP/server.log" >&2 || true
  exit 1
}

stop_throwaway_postgres() {
  if [ -n "${PG_TMP:-}" ]; then
    "${PG_RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_TMP"
  fi
}
