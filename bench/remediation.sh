#!/usr/bin/env bash
# Measures the time from detection to a low-risk action executed, settle excluded: a sandbox
# over its threshold is detected by the monitor loop (interval 1 s, for = 1), analyzed, allowed
# by the policy (sandbox_cleanup is low risk) and cleaned. The times come from Sentinel's own
# incident record: opened_at (detection) to execution.finished_at (the files are in quarantine).
#
#   cargo build --release && bench/remediation.sh [runs]
#
# Evidence gathering asks Docker for its containers; BENCH_DOCKER_HOST=unix:///nonexistent.sock
# measures without Docker. Loopback only; each run uses a fresh data directory and sandbox; bounded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${SENTINEL_BIN:-target/release/sentinel}
RUNS=${1:-5}
PORT=${BENCH_PORT:-28473}
[[ -x $BIN ]] || { echo "build first: cargo build --release" >&2; exit 1; }

work=$(mktemp -d)
pid=
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$BIN" keys new --role viewer --name bench >"$work/key"
key=$(head -n 1 "$work/key")
{
    tail -n +2 "$work/key"
    printf '[monitor]\nfor = 1\nlease_ttl = "5s"\n'
} >"$work/sentinel.toml"

for ((run = 1; run <= RUNS; run++)); do
    rm -rf "$work/data" "$work/sandbox"
    mkdir -p "$work/sandbox/logs"
    head -c $((110 * 1000 * 1000)) /dev/zero >"$work/sandbox/logs/big.log"
    env -i RUST_LOG=warn SENTINEL_CONFIG="$work/sentinel.toml" SENTINEL_INTERVAL=1s \
        SENTINEL_SETTLE=30s SENTINEL_LISTEN="127.0.0.1:$PORT" SENTINEL_DATA_DIR="$work/data" \
        SENTINEL_SANDBOX_DIR="$work/sandbox" DOCKER_HOST="${BENCH_DOCKER_HOST:-unix:///var/run/docker.sock}" "$BIN" serve &
    pid=$!
    deadline=$((SECONDS + 20))
    result=
    while ((SECONDS < deadline)); do
        json=$(curl -sf -H "x-api-key: $key" "http://127.0.0.1:$PORT/api/incidents" || true)
        result=$(python3 - "$json" <<'PY'
import json, sys
from datetime import datetime
try:
    incidents = json.loads(sys.argv[1])
except Exception:
    sys.exit(0)
for i in incidents:
    e = i.get("execution") or {}
    if i["fingerprint"] == "sandbox_size:sandbox" and e.get("finished_at"):
        t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
        steps = {x["step"]: t(x["at"]) for x in i["timeline"]}
        opened = t(i["opened_at"])
        ms = lambda a: (a - opened).total_seconds() * 1000
        print(f"analyzed +{ms(steps['analyzed']):.0f} ms, executing +{ms(steps['executing']):.0f} ms, "
              f"executed +{ms(t(e['finished_at'])):.0f} ms ({e['after'].get('moved_files')} file, "
              f"{e['after'].get('moved_bytes')} bytes moved)")
PY
)
        [[ -n $result ]] && break
        sleep 0.1
    done
    echo "run $run: ${result:-no execution within 20 s}"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
done
