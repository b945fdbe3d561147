#!/usr/bin/env bash
# Runs VoltRun's whole test suite: unit tests, and the HTTP API suite against SQLite and PostgreSQL.
#
# PostgreSQL: uses VOLTRUN_TEST_DATABASE_URL when set (a server where the user may CREATE DATABASE);
# otherwise starts a throwaway cluster from the installed PostgreSQL server binaries (initdb in a
# temporary directory, a random port on 127.0.0.1) and removes it afterwards. It never skips the
# PostgreSQL half: without binaries it stops and prints the command that installs them.
#
# Extra arguments go to `cargo test` (e.g. scripts/test.sh auth:: to run a subset).
set -euo pipefail
cd "$(dirname "$0")/.."

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

start_throwaway_postgres() {
  local bin
  bin=$(find_pg_bin)
  if [ -z "$bin" ]; then
    echo "test.sh: the PostgreSQL half of the suite needs PostgreSQL server binaries (initdb, pg_ctl)." >&2
    echo "test.sh: install them with:  sudo apt-get install -y postgresql   (macOS: brew install postgresql)" >&2
    echo "test.sh: or point VOLTRUN_TEST_DATABASE_URL at a server where you may CREATE DATABASE." >&2
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
      export VOLTRUN_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
      echo "test.sh: throwaway PostgreSQL ($("$bin/postgres" --version | awk '{print $NF}')) on 127.0.0.1:$port"
      return
    fi
  done
  echo "test.sh: could not start PostgreSQL; its log:" >&2
  cat "$PG_TMP/server.log" >&2 || true
  exit 1
}

stop_throwaway_postgres() {
  if [ -n "${PG_TMP:-}" ]; then
    "${PG_RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_TMP"
  fi
}

PG_TMP=""
PG_RUN_AS=()
if [ -z "${VOLTRUN_TEST_DATABASE_URL:-}" ]; then
  trap stop_throwaway_postgres EXIT
  start_throwaway_postgres
else
  echo "test.sh: PostgreSQL from VOLTRUN_TEST_DATABASE_URL"
fi

cargo test --workspace "$@"
