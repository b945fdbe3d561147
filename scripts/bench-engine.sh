#!/usr/bin/env bash
# The execution-engine benchmark: a no-op Python handler and a no-op Node.js handler, each run by a
# release VoltRun server in its namespace sandbox (ENGINE_BACKEND=namespace, SQLite), measured
#
#   cold start   N invocations that each start a NEW instance (the function's version is bumped with a
#                PUT before each): client-side end-to-end p50/p99 and the server's init_duration_ms,
#                next to the floor, the same N bare interpreter spawns (`python3 -c pass`,
#                `node -e 0`) timed in the same run, taking turns with the invocations;
#   warm         wrk POSTing a JSON event with `Authorization: Bearer` to the synchronous execute
#                endpoint at 1 connection (p50/p99) and at 8 and 32 connections (req/s), next to the
#                same handler served directly by Google's Functions Framework (functions-framework
#                from PyPI, @google-cloud/functions-framework from npm) on its own loopback port,
#                measured in turns with ours.
#
# Every VoltRun invocation authenticates (JWT), records its execution and logs in the database and
# runs in an isolated instance; the peer does none of that. Targets (from the issue): cold start
# p50 <= floor + 10 ms; warm p50 at 1 connection <= 2 ms; warm req/s >= 1.0x the peer's.
#
# Needs root (the sandbox), bubblewrap, wrk, curl, cargo, /usr/bin/python3 and node/npm; installs
# bubblewrap and wrk with apt-get when missing, and the peers into BENCH_CACHE_DIR (a venv and an npm
# prefix, reused on later runs). Everything listens on 127.0.0.1 only; every process and temporary
# file it started is removed on exit. The cold-start driver, the reading of wrk's output, the
# statistics, the verdicts and the report are `voltrun-bench` (crates/bench); this script installs,
# starts, deploys and calls wrk and it.
#
# Settings (environment):
#   BENCH_DURATION   seconds per wrk run (default 5, at most 60)
#   BENCH_REPEAT     wrk runs per figure, ours and the peer's taking turns; medians (default 3, at most 10)
#   BENCH_COLD_N     cold starts (and floor spawns) per runtime (default 40, 5 to 200)
#   BENCH_WARMUP     seconds of 32-connection load on each server and peer before the warm runs
#                    (default 10, at most 120): it starts the instances the 32-connection runs use,
#                    and gives each Node.js instance's JIT (one per instance) time to settle
#   BENCH_RUNTIMES   which runtimes (default "python node")
#   BENCH_CACHE_DIR  where the peers are installed (default target/bench-cache)
#   BENCH_RAW_DIR    if set, wrk's full output and the cold-start samples are copied there
#   BENCH_VOLTRUN    a voltrun binary to measure instead of building target/release/voltrun
#   BENCH_BASELINE   a second voltrun binary (e.g. built from an earlier commit), run as a second server
#                    and measured in turns with the first, for before/after comparisons
#
# The load generator shares the machine's cores with the server and the peer: the figures compare
# the two on one machine; they are not a capacity statement.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION=${BENCH_DURATION:-5}
REPEAT=${BENCH_REPEAT:-3}
COLD_N=${BENCH_COLD_N:-40}
WARMUP=${BENCH_WARMUP:-10}
RUNTIMES=${BENCH_RUNTIMES:-python node}
CACHE=${BENCH_CACHE_DIR:-$ROOT/target/bench-cache}
PY_PEER_VERSION=3.10.2 # functions-framework (PyPI)
NODE_PEER_VERSION=5.0.5 # @google-cloud/functions-framework (npm)
CONNECTIONS=(1 8 32)

log() { echo "bench-engine.sh: $*" >&2; }
fail() { log "$*"; exit 1; }

if ! [[ "$DURATION" =~ ^[0-9]+$ ]] || [ "$DURATION" -lt 1 ] || [ "$DURATION" -gt 60 ]; then
  fail "BENCH_DURATION must be a whole number of seconds, 1 to 60"
fi
if ! [[ "$REPEAT" =~ ^[0-9]+$ ]] || [ "$REPEAT" -lt 1 ] || [ "$REPEAT" -gt 10 ]; then
  fail "BENCH_REPEAT must be 1 to 10"
fi
if ! [[ "$WARMUP" =~ ^[0-9]+$ ]] || [ "$WARMUP" -lt 1 ] || [ "$WARMUP" -gt 120 ]; then
  fail "BENCH_WARMUP must be a whole number of seconds, 1 to 120"
fi
if ! [[ "$COLD_N" =~ ^[0-9]+$ ]] || [ "$COLD_N" -lt 5 ] || [ "$COLD_N" -gt 200 ]; then
  fail "BENCH_COLD_N must be 5 to 200"
fi
for rt in $RUNTIMES; do
  case $rt in python | node) ;; *) fail "BENCH_RUNTIMES: unknown runtime $rt (python, node)" ;; esac
done

# --- tools -----------------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "runs as root: the namespace sandbox needs root"
apt_install() {
  command -v apt-get >/dev/null 2>&1 || fail "needs $1 (install it with your package manager)"
  log "installing $1: apt-get install -y $1"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null; } \
    || fail "apt-get install -y $1 failed"
}
command -v bwrap >/dev/null 2>&1 || apt_install bubblewrap
command -v wrk >/dev/null 2>&1 || apt_install wrk
for tool in curl cargo; do
  command -v "$tool" >/dev/null 2>&1 || fail "needs $tool on PATH"
done
# The server's Python runtime is /usr/bin/python3 when it exists (see crates/engine/src/runtimes.rs):
# the floor and the peer use the same interpreter.
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON=$(command -v python3) || fail "needs python3"
NODE=/usr/bin/node
[ -x "$NODE" ] || NODE=$(command -v node 2>/dev/null || true)
case " $RUNTIMES " in *" node "*)
  [ -n "$NODE" ] || fail "needs node for the Node.js half (or BENCH_RUNTIMES=python)"
  command -v npm >/dev/null 2>&1 || fail "needs npm for the Node.js peer (or BENCH_RUNTIMES=python)" ;;
esac

# --- the peers (cached) ----------------------------------------------------------------------------
mkdir -p "$CACHE"
PY_FF="$CACHE/py-functions-framework-$PY_PEER_VERSION"
NODE_FF="$CACHE/node-functions-framework-$NODE_PEER_VERSION"
case " $RUNTIMES " in *" python "*)
  if [ ! -x "$PY_FF/bin/functions-framework" ]; then
    log "installing functions-framework==$PY_PEER_VERSION (PyPI) into $PY_FF"
    rm -rf "$PY_FF"
    "$PYTHON" -m venv "$PY_FF" 2>/dev/null || { apt_install python3-venv; "$PYTHON" -m venv "$PY_FF"; }
    "$PY_FF/bin/pip" install -q --disable-pip-version-check "functions-framework==$PY_PEER_VERSION" \
      || fail "pip install functions-framework failed"
  fi ;;
esac
case " $RUNTIMES " in *" node "*)
  if [ ! -x "$NODE_FF/node_modules/.bin/functions-framework" ]; then
    log "installing @google-cloud/functions-framework@$NODE_PEER_VERSION (npm) into $NODE_FF"
    rm -rf "$NODE_FF"
    mkdir -p "$NODE_FF"
    npm install --prefix "$NODE_FF" --no-audit --no-fund --loglevel=error \
      "@google-cloud/functions-framework@$NODE_PEER_VERSION" >/dev/null \
      || fail "npm install @google-cloud/functions-framework failed"
  fi ;;
esac

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -n "${BENCH_VOLTRUN:-}" ]; then
  VOLTRUN=$(realpath "$BENCH_VOLTRUN")
  log "building the benchmark tool: cargo build --release -p voltrun-bench"
  cargo build --release -p voltrun-bench
else
  log "building the release server: cargo build --release -p voltrun -p voltrun-bench"
  cargo build --release -p voltrun -p voltrun-bench
  # A copy: another build in the same target directory cannot replace it mid-run.
  VOLTRUN_BUILT=$TARGET_DIR/release/voltrun
fi
BASELINE=""
if [ -n "${BENCH_BASELINE:-}" ]; then
  BASELINE=$(realpath "$BENCH_BASELINE")
  [ -x "$BASELINE" ] || fail "BENCH_BASELINE: $BENCH_BASELINE is not an executable"
fi

# --- processes and clean-up ------------------------------------------------------------------------
source scripts/lib/bench.sh
bench_init voltrun-bench-engine
chmod 755 "$BENCH_TMP"
if [ -n "${VOLTRUN_BUILT:-}" ]; then
  cp "$VOLTRUN_BUILT" "$BENCH_TMP/voltrun"
  VOLTRUN=$BENCH_TMP/voltrun
fi
bench_tool "$TARGET_DIR/release/voltrun-bench"


# json_get FIELD: reads a JSON document on stdin and prints one top-level field.
json_get() { "$PYTHON" -c 'import json, sys; v = json.load(sys.stdin).get(sys.argv[1]); print("" if v is None else v)' "$1"; }

# --- the servers -----------------------------------------------------------------------------------
JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | head -c 48)
ENCRYPTION_KEY=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
HOST=127.0.0.1
# The servers measured, in turns: "voltrun" and, with BENCH_BASELINE, "baseline".
SERVERS=(voltrun)
[ -z "$BASELINE" ] || SERVERS+=(baseline)
declare -A URL TOKEN
# start_server NAME BINARY UID_BASE: starts a server (namespace engine, SQLite in a temporary
# directory) and registers a user on it.
start_server() {
  local name=$1 binary=$2 uid_base=$3 health email
  mkdir -p "$BENCH_TMP/data-$name"
  log "starting $name: $binary (namespace engine, SQLite)"
  # Run from the temporary directory so that no .env is read; every setting is given here.
  start "server-$name" GET /health env -u DATABASE_URL \
    BIND_ADDRESS=$HOST DATA_DIR="$BENCH_TMP/data-$name" LOG_LEVEL=warn LOG_FORMAT=json \
    ENVIRONMENT=development JWT_SECRET="$JWT_SECRET" ENCRYPTION_KEY="$ENCRYPTION_KEY" \
    ACCESS_TOKEN_TTL_S=3600 AUTH_ATTEMPTS_PER_MINUTE=100000 ENGINE_BACKEND=namespace \
    ENGINE_MAX_CONCURRENCY=32 ENGINE_KEEP_ALIVE_S=600 ENGINE_SANDBOX_UID_BASE="$uid_base" "$binary" server
  URL[$name]="http://$HOST:$STARTED_PORT"
  health=$(curl -fsS --max-time 5 "${URL[$name]}/health")
  case $health in *'"ready":true'*) ;; *) fail "$name: the engine is not ready: $health" ;; esac
  email="bench-$(date +%s)-$RANDOM@example.com"
  TOKEN[$name]=$(curl -fsS --max-time 10 -H 'content-type: application/json' \
    -d "{\"email\":\"$email\",\"password\":\"bench-password-$RANDOM-long\"}" "${URL[$name]}/api/auth/register" \
    | json_get access_token) || fail "$name: registering a user failed"
  [ -n "${TOKEN[$name]}" ] || fail "$name: no access token"
}
start_server voltrun "$VOLTRUN" 200000
[ -z "$BASELINE" ] || start_server baseline "$BASELINE" 300000
RUNTIME_IDS=$(curl -fsS --max-time 10 "${URL[voltrun]}/api/runtimes")

# runtime_id FAMILY: the id the server offers for a family (python3.11, nodejs20, ...).
runtime_id() {
  printf '%s' "$RUNTIME_IDS" | "$PYTHON" -c '
import json, sys
doc = json.load(sys.stdin)
items = doc if isinstance(doc, list) else doc.get("runtimes", doc.get("items", []))
print(next((r["id"] for r in items if r.get("family") == sys.argv[1]), ""))' "$1"
}

# deploy SERVER NAME RUNTIME FILENAME SOURCE: creates a function, prints its id.
deploy() {
  local body
  body=$("$PYTHON" -c 'import json, sys; print(json.dumps({"name": sys.argv[1], "runtime": sys.argv[2],
    "handler": sys.argv[3].split(".")[0] + ".handler", "code": {"source": sys.argv[4], "filename": sys.argv[3]}}))' \
    "$2" "$3" "$4" "$5")
  curl -fsS --max-time 30 -H 'content-type: application/json' -H "authorization: Bearer ${TOKEN[$1]}" \
    -d "$body" "${URL[$1]}/api/functions" | json_get id
}

# --- wrk -------------------------------------------------------------------------------------------
EVENT='{"bench": true, "n": 1}'
"$BENCH" wrk-script --post-json "$EVENT" >"$BENCH_TMP/post.lua"

SAMPLES="$BENCH_TMP/samples"
: >"$SAMPLES"
RUN=0
# measure RUNTIME TARGET CONNECTIONS URL [wrk args...]: one wrk run, a JSON line in SAMPLES.
measure() {
  local rt=$1 target=$2 conns=$3 url=$4
  shift 4
  RUN=$((RUN + 1))
  wrk_run "$SAMPLES" "$BENCH_TMP/wrk-$(printf '%02d' "$RUN")-$rt-$target-c$conns.txt" "$conns" \
    "$BENCH_TMP/post.lua" "$url" --tag "runtime=$rt" --tag "target=$target" -- "$@"
}

warm_up() { timeout $((WARMUP + 60)) wrk -t2 -c32 -d"$1" --timeout 10s -s "$BENCH_TMP/post.lua" "${@:2}" >/dev/null 2>&1 || true; }

# --- the runs --------------------------------------------------------------------------------------
COLD="$BENCH_TMP/cold"
: >"$COLD"
for rt in $RUNTIMES; do
  if [ "$rt" = python ]; then
    family=python
    file=main.py
    source='def handler(event, context):
    return {}
'
    floor_cmd=("$PYTHON" -c pass)
    peer_dir="$BENCH_TMP/peer-python"
    mkdir -p "$peer_dir"
    printf '%s\n' 'def handler(request):' '    request.get_json(silent=True)' '    return {}' >"$peer_dir/main.py"
    peer_cmd=("$PY_FF/bin/functions-framework" --target handler --source "$peer_dir/main.py"
      --host 127.0.0.1 --port "{PORT}")
    peer_name="functions-framework $PY_PEER_VERSION (Python)"
  else
    family=nodejs
    file=index.js
    source='exports.handler = async (event, context) => ({});
'
    floor_cmd=("$NODE" -e 0)
    peer_dir="$BENCH_TMP/peer-node"
    mkdir -p "$peer_dir"
    printf '%s\n' 'exports.handler = (req, res) => { res.json({}); };' >"$peer_dir/index.js"
    printf '%s\n' '{"name": "peer", "version": "1.0.0", "main": "index.js"}' >"$peer_dir/package.json"
    peer_cmd=("$NODE" "$NODE_FF/node_modules/@google-cloud/functions-framework/build/src/main.js"
      --target=handler --source="$peer_dir" --port="{PORT}")
    peer_name="@google-cloud/functions-framework $NODE_PEER_VERSION (Node.js)"
  fi
  runtime=$(runtime_id "$family")
  [ -n "$runtime" ] || fail "the server offers no $family runtime"

  log "$rt: cold starts ($COLD_N, after one not counted), with as many bare spawns of ${floor_cmd[*]}"
  cold_targets=()
  for srv in "${SERVERS[@]}"; do
    cold_id=$(deploy "$srv" "cold-$rt" "$runtime" "$file" "$source")
    [ -n "$cold_id" ] || fail "$srv: deploying cold-$rt failed"
    cold_targets+=(--target "$srv,${URL[$srv]},${TOKEN[$srv]},$cold_id")
  done
  timeout 900 "$BENCH" cold --runtime "$rt" --count "$COLD_N" --out "$BENCH_TMP/cold-$rt.json" \
    "${cold_targets[@]}" -- "${floor_cmd[@]}" || fail "the cold-start run failed"
  cat "$BENCH_TMP/cold-$rt.json" >>"$COLD"
  if [ -n "${BENCH_RAW_DIR:-}" ]; then mkdir -p "$BENCH_RAW_DIR" && cp "$BENCH_TMP/cold-$rt.json" "$BENCH_RAW_DIR/"; fi

  log "$rt: warm invocations; starting $peer_name"
  declare -A WARM_URL WARM_ID
  for srv in "${SERVERS[@]}"; do
    WARM_ID[$srv]=$(deploy "$srv" "warm-$rt" "$runtime" "$file" "$source")
    [ -n "${WARM_ID[$srv]}" ] || fail "$srv: deploying warm-$rt failed"
    WARM_URL[$srv]="${URL[$srv]}/api/functions/${WARM_ID[$srv]}/execute"
    curl -fsS -o /dev/null --max-time 30 -H "authorization: Bearer ${TOKEN[$srv]}" \
      -H 'content-type: application/json' -d "$EVENT" "${WARM_URL[$srv]}" || fail "POST ${WARM_URL[$srv]} failed"
  done
  start "peer-$rt" POST / "${peer_cmd[@]}"
  peer_pid=$STARTED_PID
  peer="http://$HOST:$STARTED_PORT/"
  curl -fsS -o /dev/null --max-time 10 -H 'content-type: application/json' -d "$EVENT" "$peer" \
    || fail "POST $peer failed"
  # Warm-up: 32 connections start the instances that the 32-connection runs use.
  for srv in "${SERVERS[@]}"; do
    warm_up "${WARMUP}s" -H "Authorization: Bearer ${TOKEN[$srv]}" "${WARM_URL[$srv]}"
  done
  warm_up "${WARMUP}s" "$peer"
  for c in "${CONNECTIONS[@]}"; do
    for _ in $(seq 1 "$REPEAT"); do
      for srv in "${SERVERS[@]}"; do
        measure "$rt" "$srv" "$c" "${WARM_URL[$srv]}" -H "Authorization: Bearer ${TOKEN[$srv]}"
      done
      measure "$rt" peer "$c" "$peer"
    done
  done
  stop_pid "$peer_pid"
  # Every measured invocation must have succeeded (a function error would still be a 200).
  for srv in "${SERVERS[@]}"; do
    failed=$(curl -fsS --max-time 10 -H "authorization: Bearer ${TOKEN[$srv]}" \
      "${URL[$srv]}/api/executions?function_id=${WARM_ID[$srv]}&status=failed&limit=1" | json_get data)
    [ "$failed" = "[]" ] || fail "$srv $rt: some warm invocations failed: $failed"
  done
done

# --- the report ------------------------------------------------------------------------------------
report_args=(--samples "$SAMPLES" --cold "$COLD" --duration "$DURATION" --repeat "$REPEAT" --warmup "$WARMUP"
  --cold-n "$COLD_N" --voltrun "$VOLTRUN" --python-peer-version "$PY_PEER_VERSION"
  --node-peer-version "$NODE_PEER_VERSION")
[ -z "$BASELINE" ] || report_args+=(--baseline "$BASELINE")
"$BENCH" report engine "${report_args[@]}"
