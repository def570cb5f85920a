#!/usr/bin/env bash
# The status page's server time under load on loopback: GET / with six open incidents, under
#
#   wrk -t2 -c32 -d10s --latency http://127.0.0.1:28476/
#
# (2 threads, 32 connections, 10 s by default), plus one cold GET / timed with curl
# -w '%{time_total}' (the first render after start, which also compiles the template), one warm
# one, and the server's CPU time per request during the wrk run (from /proc/<pid>/stat).
#
#   cargo build --release && bench/page.sh [seconds]
#
# The server runs the release binary on 127.0.0.1 with a temporary config and data directory,
# mode "approve-all" with actions on: every incident is analyzed (rules) and nothing is ever
# executed without an approval, which never comes. The monitor is on with interval "1h", so
# exactly one cycle runs, at start, filling the signal tiles with this host's readings (host
# cpu, memory, disk, latency, the sandbox; a tile per running container when Docker answers);
# a single sample opens nothing (`for = 2`), and no cycle runs during wrk. The page then holds
# the six incidents trigger-alert opens, one per scenario (memory, cpu, disk, latency,
# container, sandbox), each triggered twice (the second an update), with their timelines;
# with no containers and an almost empty sandbox the analysis proposes notify_only for each,
# so they end `escalated`. The script prints what the page holds before the run.
# Needs: wrk, curl, python3. Loopback only; bounded by [seconds].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/lib.sh

BIN=${SENTINEL_BIN:-target/release/sentinel}
SECONDS_RUN=${1:-10}
PORT=${BENCH_PORT:-28476}
URL=http://127.0.0.1:$PORT
[[ -x $BIN ]] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

bench_workdir
bench_admin_key
{
    # Top-level options come before the [[api_keys]] table.
    printf 'mode = "approve-all"\ninterval = "1h"\n'
    cat "$work/key.toml"
    printf '[monitor]\nenabled = true\nlease_ttl = "2h"\n[actions]\nenabled = true\n'
} >"$work/sentinel.toml"
env -i RUST_LOG=error SENTINEL_CONFIG="$work/sentinel.toml" SENTINEL_LISTEN="127.0.0.1:$PORT" \
    SENTINEL_DATA_DIR="$work/data" SENTINEL_SANDBOX_DIR="$work" "$BIN" serve &
pid=$!
measured() {
    local status
    status=$(curl -sf -m 5 "$URL/api/status") && grep -q '"signals":\[{' <<<"$status"
}
analyzed() {
    local status
    status=$(curl -sf -m 5 "$URL/api/status") && ! grep -qE '"status":"(detected|analyzing)"' <<<"$status"
}
# (The default port is below Linux's ephemeral range, so no outgoing connection holds it.)
wait_for "the server to be ready" ready_at "$URL"

# The monitor's first cycle, then the incidents, then their analysis.
wait_for "the first monitor cycle" measured
for round in 1 2; do
    for scenario in memory cpu disk latency container sandbox; do
        curl -sf -m 5 -o /dev/null -X POST -H "x-api-key: $key" -H 'content-type: application/json' \
            -d "{\"scenario\":\"$scenario\"}" "$URL/api/trigger-alert"
    done
done
wait_for "the incidents' analysis" analyzed

echo "== the page holds:"
curl -sf -m 5 "$URL/api/status" >"$work/status.json"
python3 - "$work/status.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print("  signals: " + ", ".join(f"{x['signal']}={x['value']} ({x['state']})" for x in s["signals"]))
for i in s["incidents"]:
    action = (i.get("proposed_action") or {}).get("action")
    print(f"  open incident {i['id']} {i['signal']:16} {i['status']:18} {action or '-':18} "
          f"{i.get('occurrences', 1)} occurrences, {len(i['timeline'])} timeline entries")
PY
echo "== cold GET / (first render after start): $(curl -sf -m 5 -o "$work/page.html" -w '%{http_code}, %{size_download} bytes, time_total %{time_total} s' "$URL/")"
shown=0
for id in $(grep -o '"id":"inc-[a-z0-9]*"' "$work/status.json" | sort -u | cut -d'"' -f4); do
    grep -q "$id" "$work/page.html" && shown=$((shown + 1))
done
echo "   the page shows $shown of the open incidents"
echo "== warm GET /: $(curl -sf -m 5 -o /dev/null -w '%{http_code}, %{size_download} bytes, time_total %{time_total} s' "$URL/")"

echo "== wrk -t2 -c32 -d${SECONDS_RUN}s --latency $URL/"
# The server's CPU time (user + system, in clock ticks) around the run, per request served.
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(cpu)
wrk -t2 -c32 -d"${SECONDS_RUN}s" --latency "$URL/" | tee "$work/wrk.txt" | sed 's/^/  /'
ticks=$(($(cpu) - before))
requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$requests" 'BEGIN {
    printf "server cpu during wrk: %.2f s for %d requests, %.0f us per request\n", t / hz, n, t / hz / n * 1e6 }'
echo "server rss after load: $(awk '/VmRSS/ {print $2, $3}' "/proc/$pid/status")"
