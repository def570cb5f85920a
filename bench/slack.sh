#!/usr/bin/env bash
# Slack acknowledgement latency and throughput on loopback: a signed `/sentinel status` and a
# signed Approve button click, each under wrk at 32 connections. Requests are signed shortly
# before each run (the signature stays valid for Slack's 300 s window).
#
#   cargo build --release && bench/slack.sh [seconds] [backend]     # backend: embedded | redis
#
# The click targets an incident that is not awaiting approval, so each click is fully handled
# (verified, deduplicated on its trigger_id in the store, role looked up, the decision refused
# and audited) and answered; 50 000 distinct trigger ids are pre-signed and cycled (a repeat
# takes the shorter duplicate path).
# Needs: wrk, curl, python3. Loopback only; bounded by [seconds]. Run it on a quiet machine:
# with scripts/services.sh's Prometheus, node-exporter and dockerd running alongside, the
# click's p99 here rose by 1–2 ms.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/lib.sh

BIN=${SENTINEL_BIN:-target/release/sentinel}
SECONDS_RUN=${1:-10}
BACKEND=${2:-embedded}
PORT=${BENCH_PORT:-28474}
SECRET=bench-signing-secret
[[ -x $BIN ]] || { echo "build first: cargo build --release" >&2; exit 1; }

bench_workdir
bench_admin_key
{
    cat "$work/key.toml"
    printf '[rbac]\noperators = ["UBENCHOP"]\n[monitor]\nenabled = false\n[actions]\nenabled = false\n'
    [[ $BACKEND == redis ]] && printf '[store]\nredis_prefix = "sentinel-bench:%s:"\n' "$$"
} >"$work/sentinel.toml"
extra=()
[[ $BACKEND == redis ]] && extra=(REDIS_URL=redis://127.0.0.1:6379)
env -i RUST_LOG=error SENTINEL_CONFIG="$work/sentinel.toml" SENTINEL_LISTEN="127.0.0.1:$PORT" \
    SENTINEL_DATA_DIR="$work/data" SENTINEL_SANDBOX_DIR="$work" SLACK_SIGNING_SECRET="$SECRET" \
    "${extra[@]}" "$BIN" serve &
pid=$!
# (The default port is below Linux's ephemeral range, so no outgoing connection holds it.)
wait_for "the server to be ready" ready_at "http://127.0.0.1:$PORT"

# An incident for the button to point at (remediation is off, so it stays `detected`).
id=$(curl -sf -X POST -H "x-api-key: $key" -H 'content-type: application/json' \
    -d '{"scenario":"cpu"}' "http://127.0.0.1:$PORT/api/trigger-alert" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

sign() { # kind count → a Lua file of signed requests
    python3 - "$SECRET" "$1" "$2" "$id" >"$work/$1.lua" <<'PY'
import hashlib, hmac, json, sys, time, urllib.parse
secret, kind, count, incident = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ts = str(int(time.time()))
def body(i):
    if kind == "status":
        return urllib.parse.urlencode({"command": "/sentinel", "text": "status", "user_id": "UBENCHOP",
            "channel_id": "CBENCH", "team_id": "T1", "response_url": "https://hooks.slack.com/commands/x",
            "trigger_id": f"t{i}"})
    payload = {"type": "block_actions", "user": {"id": "UBENCHOP"}, "trigger_id": f"bench-{ts}-{i}",
        "container": {"type": "message", "message_ts": "1.1", "channel_id": "CBENCH"},
        "channel": {"id": "CBENCH"}, "actions": [{"type": "button", "action_id": "approve",
        "block_id": "b", "value": json.dumps({"incident": incident, "version": 1}), "action_ts": "1.2"}]}
    return urllib.parse.urlencode({"payload": json.dumps(payload)})
print("requests = {}")
for i in range(count):
    b = body(i)
    sig = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:{b}".encode(), hashlib.sha256).hexdigest()
    print(f"requests[{i + 1}] = {{ {json.dumps(b)}, {json.dumps(sig)} }}")
print(f"timestamp = {json.dumps(ts)}")
print("""
local n = 0
request = function()
  n = n % #requests + 1
  local r = requests[n]
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["X-Slack-Request-Timestamp"] = timestamp,
    ["X-Slack-Signature"] = r[2],
  }, r[1])
end
""")
PY
}

for kind in status click; do
    case $kind in
        status) sign status 1; path=/slack/commands ;;
        click) sign click 50000; path=/slack/interactions ;;
    esac
    echo "== $kind: wrk -t2 -c32 -d${SECONDS_RUN}s --latency -s $kind.lua http://127.0.0.1:$PORT$path ($BACKEND store)"
    wrk -t2 -c32 -d"${SECONDS_RUN}s" --latency -s "$work/$kind.lua" "http://127.0.0.1:$PORT$path" |
        grep -E "Requests/sec|Latency|50%|90%|99%|Non-2xx|Socket errors" | sed 's/^/  /'
done
