# Shared by the benchmark scripts (source it; they define `log`): a temporary directory, background
# processes on free loopback ports that are all stopped on exit, and one wrk run. What is computed
# from wrk's output (and everything else the reports say) is crates/bench's (`voltrun-bench`).
#
#   bench_init PREFIX            BENCH_TMP (a new temporary directory), PIDS, and the exit trap; the
#                                trap also calls `bench_cleanup_extra` when the script defines it
#   bench_tool BINARY            after `cargo build --release -p voltrun-bench`: copies BINARY into
#                                BENCH_TMP (so another build cannot replace it mid-run) and sets BENCH
#   start NAME METHOD PATH CMD…  runs CMD in the background with PORT set to a free loopback port
#                                (CMD may also name it as "{PORT}"), waits until METHOD PATH gets an
#                                HTTP answer; sets STARTED_PORT and STARTED_PID
#   stop_pid PID                 stops one of them
#   wrk_run SAMPLES OUT CONNS SCRIPT URL [--tag K=V…] -- [wrk args…]
#                                one wrk run (SCRIPT: from `voltrun-bench wrk-script`), its output kept
#                                in OUT (and copied to BENCH_RAW_DIR when set), read by
#                                `voltrun-bench wrk-summary` into one JSON line appended to SAMPLES

bench_init() {
  BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if declare -F bench_cleanup_extra >/dev/null; then bench_cleanup_extra; fi
  rm -rf "$BENCH_TMP"
}

bench_tool() {
  cp "$1" "$BENCH_TMP/voltrun-bench"
  BENCH=$BENCH_TMP/voltrun-bench
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

STARTED_PORT=""
STARTED_PID=""
start() {
  local name=$1 method=$2 probe=$3
  shift 3
  local attempt port pid i args
  for attempt in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 30000))
    port_in_use "$port" && continue
    args=("${@//\{PORT\}/$port}")
    (cd "$BENCH_TMP" && PORT=$port exec "${args[@]}") >"$BENCH_TMP/$name.log" 2>&1 &
    pid=$!
    for i in $(seq 1 150); do
      if ! kill -0 "$pid" 2>/dev/null; then break; fi
      if curl -sS -o /dev/null --max-time 2 -X "$method" "http://127.0.0.1:$port$probe" 2>/dev/null; then
        PIDS+=("$pid")
        STARTED_PORT=$port
        STARTED_PID=$pid
        return
      fi
      sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  log "could not start $name; its log:"
  cat "$BENCH_TMP/$name.log" >&2 || true
  exit 1
}

stop_pid() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for i in "${!PIDS[@]}"; do
    [ "${PIDS[$i]}" != "$pid" ] || unset 'PIDS[i]'
  done
}

wrk_run() {
  local samples=$1 out=$2 conns=$3 script=$4 url=$5
  shift 5
  local tags=()
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do tags+=("$1"); shift; done
  [ "$#" -eq 0 ] || shift
  local threads=1
  [ "$conns" -gt 1 ] && threads=2
  timeout $((DURATION + 30)) wrk -t"$threads" -c"$conns" -d"${DURATION}s" --latency --timeout 10s \
    -s "$script" "$@" "$url" >"$out" 2>&1 || { log "wrk failed:"; cat "$out" >&2; exit 1; }
  if [ -n "${BENCH_RAW_DIR:-}" ]; then mkdir -p "$BENCH_RAW_DIR" && cp "$out" "$BENCH_RAW_DIR/"; fi
  "$BENCH" wrk-summary "${tags[@]}" "$out" >>"$samples" || exit 1
}
