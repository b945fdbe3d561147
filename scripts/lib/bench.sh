# Shared by the benchmark scripts (source it; they define `log`): a temporary directory, background
# processes on free loopback ports that are all stopped on exit, and one wrk run read into figures.
#
#   bench_init PREFIX            BENCH_TMP (a new temporary directory), PIDS, and the exit trap; the
#                                trap also calls `bench_cleanup_extra` when the script defines it
#   start NAME METHOD PATH CMD…  runs CMD in the background with PORT set to a free loopback port
#                                (CMD may also name it as "{PORT}"), waits until METHOD PATH gets an
#                                HTTP answer; sets STARTED_PORT and STARTED_PID
#   stop_pid PID                 stops one of them
#   wrk_run OUT CONNS SCRIPT URL [wrk args…]
#                                one wrk run (SCRIPT: a Lua script that prints the "BENCH" summary
#                                line), its output kept in OUT (and copied to BENCH_RAW_DIR when set);
#                                sets W_RPS, W_P50, W_P99 (µs) and W_ERRORS

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
  local out=$1 conns=$2 script=$3 url=$4
  shift 4
  local threads=1
  [ "$conns" -gt 1 ] && threads=2
  timeout $((DURATION + 30)) wrk -t"$threads" -c"$conns" -d"${DURATION}s" --latency --timeout 10s \
    -s "$script" "$@" "$url" >"$out" 2>&1 || { log "wrk failed:"; cat "$out" >&2; exit 1; }
  if [ -n "${BENCH_RAW_DIR:-}" ]; then mkdir -p "$BENCH_RAW_DIR" && cp "$out" "$BENCH_RAW_DIR/"; fi
  local requests duration bad socket
  read -r requests duration W_P50 W_P99 bad socket < <(awk '$1 == "BENCH" { print $2, $3, $4, $5, $6, $7 }' "$out")
  [ -n "${requests:-}" ] || { log "could not read wrk's summary:"; cat "$out" >&2; exit 1; }
  W_RPS=$(awk -v r="$requests" -v d="$duration" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
  W_ERRORS=$((bad + socket))
}
