#!/usr/bin/env bash
# Measures the monitor: one cycle over N running containers (`sentinel check`, which runs the
# same collectors as the loop and prints how long the cycle took), and the CPU an idle
# `sentinel serve` uses with its loop at the default 30 s interval.
#
#   cargo build --release && bench/monitor.sh [containers] [idle seconds]
#
# Needs a Docker daemon and the image sentinel-test/busybox:latest (scripts/services.sh start).
# Containers run with --network none and are removed at the end. Loopback only; bounded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${SENTINEL_BIN:-target/release/sentinel}
N=${1:-100}
IDLE=${2:-120}
PORT=${BENCH_PORT:-28472}
[[ -x $BIN ]] || { echo "build first: cargo build --release" >&2; exit 1; }
docker image inspect sentinel-test/busybox:latest >/dev/null

work=$(mktemp -d)
pid=
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null
    docker ps -aq --filter name=sentinel-bench- | xargs -r docker rm -f >/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

echo "starting $N containers"
for ((i = 0; i < N; i++)); do
    docker run -d --network none --name "sentinel-bench-$i" sentinel-test/busybox:latest \
        sleep 3600 >/dev/null
done
running=$(docker ps -q --filter name=sentinel-bench- | wc -l)
echo "running: $running bench containers ($(docker ps -q | wc -l) in all)"

mkdir -p "$work/sandbox"
for run in 1 2 3 4 5; do
    env -i RUST_LOG=error SENTINEL_SANDBOX_DIR="$work/sandbox" PROMETHEUS_URL="${PROMETHEUS_URL:-}" \
        "$BIN" check | tail -n 1 | sed "s/^/cycle $run: /"
    sleep 1
done

echo "idle loop: sentinel serve at the default 30 s interval for $IDLE s"
env -i RUST_LOG=error SENTINEL_LISTEN="127.0.0.1:$PORT" SENTINEL_DATA_DIR="$work/data" \
    SENTINEL_SANDBOX_DIR="$work/sandbox" "$BIN" serve &
pid=$!
sleep 5 # past startup and the first cycle
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(cpu)
sleep "$IDLE"
after=$(cpu)
used=$(echo "($after - $before) / $ticks" | bc -l)
printf 'idle cpu: %.2f s of CPU in %d s (%.3f %% of one core), rss %s\n' \
    "$used" "$IDLE" "$(echo "100 * $used / $IDLE" | bc -l)" \
    "$(awk '/VmRSS/ {print $2, $3}' "/proc/$pid/status")"
