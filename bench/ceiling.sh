#!/usr/bin/env bash
# Sentinel's Slack acknowledgements against their ceiling, in the same run (issue 14): a bare
# axum server (bench/ceiling) that only verifies the signature, parses the form and answers
# fixed JSON, and Sentinel, each under the same wrk load with the same signed requests,
# interleaved round by round so both see the same machine. Prints every run, then the
# medians, Sentinel's share of the ceiling's throughput and its p99 against the ceiling's,
# and both servers' idle and peak RSS.
#
#   cargo build --release
#   cargo build --release --manifest-path bench/ceiling/Cargo.toml --target-dir target
#   bench/ceiling.sh [seconds per run] [rounds]          # defaults: 15 s, 3 rounds
#
# Targets (issue 14): throughput >= 80 % of the ceiling's, p99 <= 1.5x the ceiling's,
# Sentinel's idle RSS <= 15 MiB after start and one incident, peak <= 32 MiB.
# Needs: wrk, curl, python3. Loopback only; bounded by seconds x rounds x 4. Run it on a
# quiet machine: the load generator shares the cores with the servers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/lib.sh

BIN=${SENTINEL_BIN:-target/release/sentinel}
CEILING=${CEILING_BIN:-target/release/sentinel-ceiling}
SECONDS_RUN=${1:-15}
ROUNDS=${2:-3}
PORT=${BENCH_PORT:-28474}
CEILING_PORT=$((PORT + 1))
SECRET=bench-signing-secret
for b in "$BIN" "$CEILING"; do
    [[ -x $b ]] || { echo "build first: $b is missing (see the header of $0)" >&2; exit 1; }
done

bench_workdir
bench_admin_key
{
    cat "$work/key.toml"
    printf '[rbac]\noperators = ["UBENCHOP"]\n[monitor]\nenabled = false\n[actions]\nenabled = false\n'
} >"$work/sentinel.toml"
env -i RUST_LOG=error SENTINEL_CONFIG="$work/sentinel.toml" SENTINEL_LISTEN="127.0.0.1:$PORT" \
    SENTINEL_DATA_DIR="$work/data" SENTINEL_SANDBOX_DIR="$work" SLACK_SIGNING_SECRET="$SECRET" \
    "$BIN" serve &
pid=$!
"$CEILING" "127.0.0.1:$CEILING_PORT" "$SECRET" &
ceiling_pid=$!
trap 'kill $ceiling_pid 2>/dev/null; bench_cleanup' EXIT
wait_for "Sentinel to be ready" ready_at "http://127.0.0.1:$PORT"
for _ in $(seq 100); do
    curl -s -o /dev/null -m 1 -X POST "http://127.0.0.1:$CEILING_PORT/slack/commands" && break
    sleep 0.05
done

# One incident for the button to point at (remediation is off, so it stays `detected`).
id=$(curl -sf -X POST -H "x-api-key: $key" -H 'content-type: application/json' \
    -d '{"scenario":"cpu"}' "http://127.0.0.1:$PORT/api/trigger-alert" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
sleep 1
rss() { awk -v f="$2" '$1 == f ":" {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
idle_sentinel=$(rss "$pid" VmRSS)
idle_ceiling=$(rss "$ceiling_pid" VmRSS)


# run server kind → "req/s p99_ms non2xx" from one wrk run
run() {
    local port path out
    [[ $1 == sentinel ]] && port=$PORT || port=$CEILING_PORT
    [[ $2 == status ]] && path=/slack/commands || path=/slack/interactions
    out=$(wrk -t2 -c32 -d"${SECONDS_RUN}s" --latency -s "$work/$2.lua" "http://127.0.0.1:$port$path")
    python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
errors = re.search(r"Socket errors:.*", out)
print(f"{rps:.0f} {p99:.2f} {bad.group(1) if bad else 0}{' ' + errors.group(0) if errors else ''}")
PY
}

results=$work/results
: >"$results"
for round in $(seq "$ROUNDS"); do
    # Signed afresh each round: a signature is valid for 300 s.
    bench_sign status 1
    bench_sign click 50000
    for kind in status click; do
        for server in ceiling sentinel; do
            line=$(run "$server" "$kind")
            echo "round $round  $kind  $server  req/s p99_ms non2xx: $line"
            echo "$kind $server $line" >>"$results"
        done
    done
done
peak_sentinel=$(rss "$pid" VmHWM)
peak_ceiling=$(rss "$ceiling_pid" VmHWM)

python3 - "$results" "$idle_ceiling" "$peak_ceiling" "$idle_sentinel" "$peak_sentinel" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
idle_c, peak_c, idle_s, peak_s = sys.argv[2:6]
med = {}
for kind in ("status", "click"):
    for server in ("ceiling", "sentinel"):
        runs = [r for r in rows if r[0] == kind and r[1] == server]
        med[kind, server] = (statistics.median(float(r[2]) for r in runs),
                             statistics.median(float(r[3]) for r in runs),
                             sum(int(r[4]) for r in runs))
print()
print("| server | /sentinel status req/s | p99 ms | button click req/s | p99 ms | idle RSS MiB | peak RSS MiB |")
print("|---|---:|---:|---:|---:|---:|---:|")
for server, idle, peak in (("bare axum + HMAC (ceiling)", idle_c, peak_c), ("Sentinel", idle_s, peak_s)):
    key = "ceiling" if server.startswith("bare") else "sentinel"
    s, c = med["status", key], med["click", key]
    print(f"| {server} | {s[0]:.0f} | {s[1]:.2f} | {c[0]:.0f} | {c[1]:.2f} | {idle} | {peak} |")
print()
for kind in ("status", "click"):
    (cr, cp, _), (sr, sp, bad) = med[kind, "ceiling"], med[kind, "sentinel"]
    share, ratio = sr / cr, sp / cp
    verdict = "met" if share >= 0.8 and ratio <= 1.5 else "MISSED"
    print(f"{kind}: Sentinel at {share:.0%} of the ceiling's throughput (target >= 80 %), "
          f"p99 {ratio:.2f}x the ceiling's (target <= 1.5x), {bad} non-2xx: {verdict}")
print(f"memory: idle {idle_s} MiB (target <= 15), peak {peak_s} MiB (target <= 32): "
      f"{'met' if float(idle_s) <= 15 and float(peak_s) <= 32 else 'MISSED'}")
PY
