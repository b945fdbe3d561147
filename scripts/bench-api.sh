#!/usr/bin/env bash
# The API read benchmark: drives a running VoltRun server with wrk and prints requests/s and p50/p99
# latency for `GET /health` and an authenticated `GET /api/functions/{id}` (JWT), at 1 and 64
# connections, on SQLite and PostgreSQL, next to the same figures for `voltrun-floor` (a bare hello
# server on the same HTTP stack), as a ratio of the floor's requests/s at the same connection count.
#
# It builds release binaries, starts the floor and the server on random loopback ports with a data
# directory in a temporary directory, registers a user and creates a function with curl, runs wrk,
# and removes every process and file it started on exit. Reading wrk's output, the medians, ratios,
# targets and the report are `voltrun-bench`'s (crates/bench).
#
# PostgreSQL: uses VOLTRUN_BENCH_DATABASE_URL when set (the server migrates that database and adds a
# user and a function to it); otherwise starts a throwaway cluster as scripts/test.sh does.
#
# Settings (environment):
#   BENCH_DURATION   seconds per wrk run (default 5, at most 60)
#   BENCH_REPEAT     runs per figure, taking turns; the table shows medians (default 3, at most 10)
#   BENCH_DBS        which databases (default "sqlite postgres")
#   BENCH_RAW_DIR    if set, wrk's full output for every run is copied there
#
# The load generator runs on the same machine as the server and shares its cores: the figures are a
# comparison on one machine, not a capacity statement.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION=${BENCH_DURATION:-5}
REPEAT=${BENCH_REPEAT:-3}
DBS=${BENCH_DBS:-sqlite postgres}
if ! [[ "$DURATION" =~ ^[0-9]+$ ]] || [ "$DURATION" -lt 1 ] || [ "$DURATION" -gt 60 ]; then
  echo "bench-api.sh: BENCH_DURATION must be a whole number of seconds, 1 to 60" >&2
  exit 2
fi
if ! [[ "$REPEAT" =~ ^[0-9]+$ ]] || [ "$REPEAT" -lt 1 ] || [ "$REPEAT" -gt 10 ]; then
  echo "bench-api.sh: BENCH_REPEAT must be 1 to 10" >&2
  exit 2
fi
for db in $DBS; do
  case $db in sqlite | postgres) ;; *) echo "bench-api.sh: BENCH_DBS: unknown database $db" >&2; exit 2 ;; esac
done
CONNECTIONS=(1 64)

log() { echo "bench-api.sh: $*" >&2; }

# --- tools -----------------------------------------------------------------------------------------
for tool in curl cargo; do
  command -v "$tool" >/dev/null 2>&1 || { log "needs $tool on PATH"; exit 1; }
done
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing wrk: apt-get install -y wrk"
    apt-get install -y wrk >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y wrk >/dev/null; } \
      || { log "apt-get install -y wrk failed"; exit 1; }
  else
    log "needs the wrk load generator; install it with:  sudo apt-get install -y wrk   (macOS: brew install wrk)"
    exit 1
  fi
fi

log "building release binaries: cargo build --release -p voltrun -p voltrun-floor -p voltrun-bench"
cargo build --release -p voltrun -p voltrun-floor -p voltrun-bench
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
VOLTRUN=$TARGET_DIR/release/voltrun
FLOOR=$TARGET_DIR/release/voltrun-floor

# --- processes and clean-up ------------------------------------------------------------------------
PG_PURPOSE="the PostgreSQL half of the benchmark"
# start_throwaway_postgres / stop_throwaway_postgres
source scripts/lib/postgres.sh

source scripts/lib/bench.sh
bench_init voltrun-bench
bench_cleanup_extra() { stop_throwaway_postgres; }
bench_tool "$TARGET_DIR/release/voltrun-bench"

# --- wrk -------------------------------------------------------------------------------------------
"$BENCH" wrk-script >"$BENCH_TMP/report.lua"

SAMPLES="$BENCH_TMP/samples"
: >"$SAMPLES"
# measure SECTION TARGET DB CONNECTIONS URL [wrk args...]: one wrk run, a JSON line in SAMPLES.
measure() {
  local section=$1 target=$2 db=$3 conns=$4 url=$5
  shift 5
  RUN=$((RUN + 1))
  wrk_run "$SAMPLES" "$BENCH_TMP/wrk-$(printf '%02d' "$RUN")-$section-${target//[^a-z0-9]/_}-c$conns.txt" \
    "$conns" "$BENCH_TMP/report.lua" "$url" --tag "section=$section" --tag "target=$target" --tag "db=$db" -- "$@"
}
RUN=0

warm_up() { timeout 30 wrk -t1 -c8 -d1s "$@" >/dev/null 2>&1 || true; }

# --- the runs --------------------------------------------------------------------------------------
JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | head -c 48)
ENCRYPTION_KEY=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
HOST=127.0.0.1

log "starting voltrun-floor"
start floor GET /hello "$FLOOR"
FLOOR_URL="http://$HOST:$STARTED_PORT"

for db in $DBS; do
  database_url=""
  if [ "$db" = postgres ]; then
    if [ -n "${VOLTRUN_BENCH_DATABASE_URL:-}" ]; then
      log "PostgreSQL from VOLTRUN_BENCH_DATABASE_URL"
      database_url=$VOLTRUN_BENCH_DATABASE_URL
    else
      start_throwaway_postgres VOLTRUN_BENCH_DATABASE_URL >&2
      database_url=$PG_URL
    fi
  fi
  mkdir -p "$BENCH_TMP/data-$db"
  log "starting voltrun server on $db"
  # Run from the temporary directory so that no .env is read; every setting is given here.
  db_env=()
  [ -z "$database_url" ] || db_env=("DATABASE_URL=$database_url")
  start "server-$db" GET /health env -u DATABASE_URL "${db_env[@]}" \
    BIND_ADDRESS=$HOST DATA_DIR="$BENCH_TMP/data-$db" LOG_LEVEL=warn LOG_FORMAT=json \
    ENVIRONMENT=development JWT_SECRET="$JWT_SECRET" ENCRYPTION_KEY="$ENCRYPTION_KEY" \
    ACCESS_TOKEN_TTL_S=3600 AUTH_ATTEMPTS_PER_MINUTE=100000 "$VOLTRUN" server
  SERVER_URL="http://$HOST:$STARTED_PORT"
  SERVER_PID=$STARTED_PID

  email="bench-$(date +%s)-$RANDOM@example.com"
  auth=$(curl -fsS --max-time 10 -H 'content-type: application/json' \
    -d "{\"email\":\"$email\",\"password\":\"bench-password-$RANDOM-long\"}" "$SERVER_URL/api/auth/register") \
    || { log "registering a user failed"; exit 1; }
  token=$(printf '%s' "$auth" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
  [ -n "$token" ] || { log "no access token in: $auth"; exit 1; }
  function=$(curl -fsS --max-time 10 -H 'content-type: application/json' -H "authorization: Bearer $token" \
    -d '{"name":"bench","runtime":"provided","handler":"function.handler","code":{"source":"#!/bin/sh\necho hi\n","filename":"bootstrap"}}' \
    "$SERVER_URL/api/functions") || { log "creating the function failed"; exit 1; }
  function_id=$(printf '%s' "$function" | sed -n 's/^{"id":"\([^"]*\)".*/\1/p')
  [ -n "$function_id" ] || { log "no function id in: $function"; exit 1; }
  read_url="$SERVER_URL/api/functions/$function_id"
  curl -fsS -o /dev/null --max-time 10 -H "authorization: Bearer $token" "$read_url" \
    || { log "GET $read_url failed"; exit 1; }

  warm_up "$FLOOR_URL/hello"
  warm_up "$SERVER_URL/health"
  warm_up -H "Authorization: Bearer $token" "$read_url"
  for c in "${CONNECTIONS[@]}"; do
    # The floor is measured next to each database's runs and the three targets take turns, so that
    # a ratio compares figures taken seconds apart on a machine whose speed drifts.
    for _ in $(seq 1 "$REPEAT"); do
      measure "$db" "floor /hello" "-" "$c" "$FLOOR_URL/hello"
      measure "$db" "GET /health" "$db" "$c" "$SERVER_URL/health"
      measure "$db" "GET /api/functions/:id" "$db" "$c" "$read_url" -H "Authorization: Bearer $token"
    done
  done
  stop_pid "$SERVER_PID"
  if [ "$db" = postgres ]; then stop_throwaway_postgres; PG_TMP=""; fi
done

# --- the report ------------------------------------------------------------------------------------
"$BENCH" report api --samples "$SAMPLES" --duration "$DURATION" --repeat "$REPEAT"
