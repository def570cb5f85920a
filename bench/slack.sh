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


for kind in status click; do
    case $kind in
        status) bench_sign status 1; path=/slack/commands ;;
        click) bench_sign click 50000; path=/slack/interactions ;;
    esac
    echo "== $kind: wrk -t2 -c32 -d${SECONDS_RUN}s --latency -s $kind.lua http://127.0.0.1:$PORT$path ($BACKEND store)"
    wrk -t2 -c32 -d"${SECONDS_RUN}s" --latency -s "$work/$kind.lua" "http://127.0.0.1:$PORT$path" |
        grep -E "Requests/sec|Latency|50%|90%|99%|Non-2xx|Socket errors" | sed 's/^/  /'
done
