#!/usr/bin/env bash
# Contract test: fuzzes the real server against its own OpenAPI document with Schemathesis
# (property-based: requests generated from the document's schemas, valid and invalid) and fails on
# any response that breaks the document:
#
#   not_a_server_error           no 5xx (without an engine, invocations' documented 503 excepted)
#   status_code_conformance      every status answered is documented for that operation
#   content_type_conformance     every response's content type is one the document gives it
#   response_schema_conformance  every body matches the schema documented for its status
#   ignored_auth                 an operation that requires credentials refuses requests without them
#                                or with wrong ones
#
# It builds the server (debug, as the test suites do), starts it on a free port with a throwaway
# SQLite data directory, registers a user, and runs every operation of the document with the user's
# access token: the examples and coverage phases, then fuzzing and stateful sequences (created ids
# fed to the operations that take them) until the time limit. As root with bubblewrap the server
# runs functions in the namespace sandbox, so invocations, executions and logs are exercised too;
# elsewhere it runs without an engine (ENGINE_BACKEND=none), functions deploy and invocations answer
# the documented `503 engine_unavailable`, which is then the one 5xx the run accepts (there only).
#
# No operation is excluded. Logout, the one that could end the run's session, takes a refresh token
# in its body, and the run's is never given to the fuzzer: generated logouts end only sessions the
# fuzzer made itself (through register and login). The fuzzer gets no API key, for the reason in
# scripts/contract/schemathesis.toml.
#
# Settings (environment): VOLTRUN_CONTRACT_ENGINE (namespace or none, instead of the choice above),
# VOLTRUN_CONTRACT_MAX_TIME_S (default 60: the fuzzing budget; the whole script takes 5 to 20 s
# more once built), VOLTRUN_CONTRACT_MAX_EXAMPLES (default 30 per operation and phase),
# VOLTRUN_CONTRACT_SEED (replays a run: its seed is printed at the end). Failing examples are kept
# in target/contract/examples and tried first on the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

max_time=${VOLTRUN_CONTRACT_MAX_TIME_S:-60}
max_examples=${VOLTRUN_CONTRACT_MAX_EXAMPLES:-30}
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth

say() { echo "contract-test: $*"; }
die() { echo "contract-test: $*" >&2; exit 1; }

started=$SECONDS
./scripts/install-schemathesis.sh
st=$(cd "${VOLTRUN_SCHEMATHESIS_DIR:-target/schemathesis}" && pwd)/st

say "building the server"
cargo build --quiet -p voltrun
target_dir=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
server_bin="$target_dir/debug/voltrun"
[ -x "$server_bin" ] || die "no server binary at $server_bin"

work=$(mktemp -d "${TMPDIR:-/tmp}/voltrun-contract.XXXXXX")
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

engine=${VOLTRUN_CONTRACT_ENGINE:-}
if [ -z "$engine" ]; then
  if [ "$(id -u)" = 0 ] && command -v bwrap >/dev/null 2>&1; then
    engine=namespace
  else
    engine=none
  fi
fi
config="$work/schemathesis.toml"
cp scripts/contract/schemathesis.toml "$config"
if [ "$engine" = none ]; then
  cat >>"$config" <<'TOML'

# Added by contract-test.sh for a server without an execution engine: invoking an existing function
# is answered with the documented `503 engine_unavailable`. Every other 5xx there is still a failure.
[[operations]]
include-path = "/api/functions/{id}/execute"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
TOML
fi

secret() { python3 -c 'import secrets; print(secrets.token_hex(32))'; }
metrics_token=$(secret)

# A clean environment and a working directory of its own (no .env there), so that nothing of the
# caller's configuration reaches the server. Port 0: the server reports the port it was given.
# The address limiter would refuse the fuzzer's register and login calls after 30 a minute, and the
# account lockout its logins after 10 failures, before they reach the code under test (their 429s
# stay documented, and the API suite tests them).
: >"$work/server.log" # there before the server opens it, for the wait below
(
  cd "$work"
  exec env -i PATH="$PATH" HOME="${HOME:-$work}" \
    ENVIRONMENT=development PORT=0 BIND_ADDRESS=127.0.0.1 \
    DATA_DIR="$work/data" DATABASE_URL="sqlite://$work/data/voltrun.db" \
    JWT_SECRET="$(secret)" METRICS_TOKEN="$metrics_token" ENGINE_BACKEND="$engine" \
    AUTH_ATTEMPTS_PER_MINUTE=1000000 LOGIN_FAILURES_PER_ACCOUNT=1000000 SHUTDOWN_TIMEOUT_S=1 \
    LOG_FORMAT=json LOG_LEVEL=info \
    "$server_bin" server
) >"$work/server.log" 2>&1 &
server_pid=$!

port=""
for _ in $(seq 1 300); do
  port=$(sed -n 's/.*"message":"listening","address":"127\.0\.0\.1:\([0-9]*\)".*/\1/p' "$work/server.log" | head -n 1)
  [ -n "$port" ] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    cat "$work/server.log" >&2
    die "the server exited before it listened"
  fi
  sleep 0.1
done
[ -n "$port" ] || { cat "$work/server.log" >&2; die "the server did not listen within 30 s"; }
base="http://127.0.0.1:$port"
say "server on $base (SQLite in a temporary directory, ENGINE_BACKEND=$engine)"

# The run's credential: a new user's access token (see the configuration for why no API key).
access_token=$(python3 - "$base" <<'PY'
import json, secrets, sys, urllib.request

base = sys.argv[1]

def post(path, body, token=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = "Bearer " + token
    request = urllib.request.Request(base + path, json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)

user = post("/api/auth/register", {
    "email": f"contract-{secrets.token_hex(6)}@example.com",
    "password": secrets.token_urlsafe(24),
})
print(user["access_token"])
PY
) || die "could not register the run's user"

export VOLTRUN_CONTRACT_ACCESS_TOKEN=$access_token VOLTRUN_CONTRACT_METRICS_TOKEN=$metrics_token
mkdir -p target/contract
seed_args=()
if [ -n "${VOLTRUN_CONTRACT_SEED:-}" ]; then
  seed_args=(--seed "$VOLTRUN_CONTRACT_SEED")
fi

say "fuzzing for ${max_time} s, at most ${max_examples} examples per operation and phase"
set +e
(
  cd "$work"
  "$st" --config-file "$config" --no-color run "$base/api/openapi.json" \
    --checks "$checks" --max-time "$max_time" --max-examples "$max_examples" --workers 1 \
    --generation-database "$root/target/contract/examples" \
    --report junit --report-junit-path "$work/junit.xml" "${seed_args[@]}"
) 2>&1 | tee "$work/schemathesis.log"
st_status=${PIPESTATUS[0]}
set -e

# What the server said about itself meanwhile: a panic or an error it logged is a failure even
# when the response that went with it looked fine.
server_problems=$(grep -E '"level":"ERROR"|panicked' "$work/server.log" | head -n 20 || true)
server_alive=yes
kill -0 "$server_pid" 2>/dev/null || server_alive=no

# That the run's access token worked: successes on routes that require credentials (a run whose
# token was never sent, or stopped working, would pass on documented 401s alone), and the session
# still alive at the end (an access token that stopped working does not start again).
read -r authenticated_successes session_alive < <(python3 - "$work/server.log" "$base" "$access_token" <<'PY'
import json, sys, urllib.error, urllib.request

log, base, token = sys.argv[1:]
successes = 0
with open(log, encoding="utf-8", errors="replace") as lines:
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        path = (event.get("span") or {}).get("path", "")
        status = event.get("status")
        authenticated = path.startswith(("/api/functions", "/api/keys", "/api/executions", "/api/auth/me"))
        if event.get("message") == "request" and authenticated and isinstance(status, int) and 200 <= status < 300:
            successes += 1
request = urllib.request.Request(base + "/api/auth/me", headers={"authorization": "Bearer " + token})
try:
    with urllib.request.urlopen(request, timeout=30) as response:
        alive = response.status == 200
except (urllib.error.URLError, OSError):
    alive = False
print(successes, "yes" if alive else "no")
PY
)

# The JUnit report has a test case per operation and one for the stateful phase: the operations
# run, and the cases that passed and failed.
read -r operations passed failed < <(python3 - "$work/junit.xml" <<'PY'
import sys
import xml.etree.ElementTree as ET

try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print(0, 0, 0)
    sys.exit()
operations = passed = failed = 0
for case in root.iter("testcase"):
    if not case.get("name", "").startswith("Stateful"):
        operations += 1
    if case.find("failure") is not None or case.find("error") is not None:
        failed += 1
    else:
        passed += 1
print(operations, passed, failed)
PY
)
cases_line=$(grep -E '^ *[0-9]+ generated' "$work/schemathesis.log" | tail -n 1 | sed 's/^ *//' || true)
seed_line=$(grep -E '^Seed: ' "$work/schemathesis.log" | tail -n 1 || true)

echo
say "summary: $operations operations, ${cases_line:-no test cases counted}, ${authenticated_successes:-0} authenticated successes; ${seed_line:-no seed printed}; $((SECONDS - started)) s in all"
# Each JUnit case (the operations and the stateful phase) and each of this script's own checks
# counts once in the closing line.
status=0
fail() {
  say "FAILED: $*"
  status=1
  failed=$((failed + 1))
}
check_passed() { passed=$((passed + 1)); }
if [ "$st_status" != 0 ] && [ "$failed" = 0 ]; then
  fail "schemathesis exited $st_status (a warning that fails the run, or an error: details above)"
elif [ "$st_status" != 0 ]; then
  say "FAILED: responses that break the document, in $failed of the operations and the stateful phase (details above)"
  status=1
fi
if [ -n "$server_problems" ]; then
  fail "the server logged errors or panicked during the run:"
  echo "$server_problems" | sed 's/^/  /'
else
  check_passed
fi
if [ "${authenticated_successes:-0}" = 0 ]; then
  fail "no request with the run's token succeeded on a route that requires credentials"
elif [ "$session_alive" != yes ]; then
  fail "the run's session ended during the run, so what followed tested only 401s"
else
  check_passed
fi
if [ "$server_alive" = no ]; then
  fail "the server exited during the run"
else
  check_passed
fi
if [ "$status" = 0 ]; then
  say "PASSED: every response of $operations operations matched the document"
fi
echo "contract: $passed passed, $failed failed"
exit "$status"
