#!/usr/bin/env bash
# Measures Sentinel on the embedded store: time from exec to ready (GET /readyz answers 200),
# idle resident memory, and GET /api/status throughput under wrk. Loopback only; bounded.
#
#   cargo build --release && bench/startup.sh [runs]
#
# Needs: curl, wrk (Debian packages). Prints one line per measurement.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${SENTINEL_BIN:-target/release/sentinel}
RUNS=${1:-20}
PORT=${BENCH_PORT:-28471}
[[ -x $BIN ]] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

work=$(mktemp -d)
pid=
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

start() {
    env -i RUST_LOG=warn SENTINEL_LISTEN="127.0.0.1:$PORT" SENTINEL_DATA_DIR="$work/data" \
        SENTINEL_CONFIG="$work/sentinel.toml" "$BIN" serve &
    pid=$!
}

# An admin key so the benchmark can open an incident; /api/status itself needs none.
"$BIN" keys new --role admin --name bench >"$work/key"
tail -n +2 "$work/key" >"$work/sentinel.toml"
key=$(head -n 1 "$work/key")

# 1. Time to ready, over several cold starts (a fresh data directory each time).
times=()
for ((i = 0; i < RUNS; i++)); do
    rm -rf "$work/data"
    t0=$(date +%s%N)
    start
    until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do
        if ((($(date +%s%N) - t0) > 10000000000)); then echo "not ready after 10 s" >&2; exit 1; fi
        sleep 0.002
    done
    t1=$(date +%s%N)
    times+=($(((t1 - t0) / 1000)))
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
worst=$(echo "$sorted" | tail -n 1)
echo "ready: median $((median / 1000)).$(printf '%03d' $((median % 1000))) ms, worst $((worst / 1000)).$(printf '%03d' $((worst % 1000))) ms over $RUNS cold starts (exec to first 200 from /readyz, curl polling every 2 ms)"

# 2. Idle RSS, after one incident exists so the store has been written.
rm -rf "$work/data"
start
for ((i = 0; ; i++)); do
    curl -sf -m 2 "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    ((i < 1000)) || { echo "not ready after 10 s" >&2; exit 1; }
    sleep 0.01
done
curl -sf -X POST -H "x-api-key: $key" -H 'content-type: application/json' \
    -d '{"scenario":"memory"}' "http://127.0.0.1:$PORT/api/trigger-alert" >/dev/null
sleep 2
echo "idle rss: $(awk '/VmRSS/ {print $2, $3}' "/proc/$pid/status") (VmRSS after start, one incident, 2 s idle)"

# 3. Throughput of GET /api/status (one open incident), 2 threads, 64 connections, 10 s.
echo "wrk -t2 -c64 -d10s http://127.0.0.1:$PORT/api/status"
wrk -t2 -c64 -d10s --latency "http://127.0.0.1:$PORT/api/status" | sed 's/^/  /'
echo "rss after load: $(awk '/VmRSS/ {print $2, $3}' "/proc/$pid/status")"
