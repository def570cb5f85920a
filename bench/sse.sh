#!/usr/bin/env bash
# Live-stream fan-out on loopback: [clients] concurrent GET /api/stream (default 500) wait for
# `hello`; then each of [rounds] (default 5) POSTs /api/trigger-alert (cycling the scenarios
# memory, cpu, disk, latency, container, sandbox) and measures, per client, the time from
# sending the trigger to that client receiving the `incident` event for the id the trigger
# answered with. Prints per round: clients reached, time to first, median, p99 and last (ms);
# fails when any client misses the event within 10 s or gets `resync`. Also prints the
# server's resident memory (VmRSS) before any client and with all of them connected.
#
#   cargo build --release && bench/sse.sh [clients] [rounds]
#
# The server runs the release binary on 127.0.0.1 with a temporary config and data directory,
# the monitor and actions disabled (so only the triggers change incidents and no `status`
# events interleave). The client is bench/sse, a package of its own, built here with
#   cargo run --release --manifest-path bench/sse/Cargo.toml --target-dir target -- \
#       http://127.0.0.1:PORT ADMIN_KEY CLIENTS ROUNDS
# Client and server share the machine, so the times include the client's own scheduling.
# A connect time near 1 s means the burst of connects overflowed the server's listen backlog
# and the dropped SYNs were retried after the kernel's 1 s timeout (`nstat -az
# TcpExtListenOverflows` counts them). Sentinel now listens with a backlog of 4096 (it was
# tokio's 128 when this script found the problem).
# Needs: curl. Loopback only; bounded (connect 30 s, 10 s per round).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/lib.sh

BIN=${SENTINEL_BIN:-target/release/sentinel}
CLIENTS=${1:-500}
ROUNDS=${2:-5}
PORT=${BENCH_PORT:-28475}
[[ -x $BIN ]] || { echo "build first: cargo build --release" >&2; exit 1; }

# Each client is one socket in each process (plus the server's own files): raise the soft
# open-files limit to what is needed, up to the hard limit.
need=$((CLIENTS + 256))
if (($(ulimit -n) < need)); then
    ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
(($(ulimit -n) >= need)) || { echo "open-files limit $(ulimit -n) < $need; raise the hard limit" >&2; exit 1; }

bench_workdir
bench_admin_key
{
    cat "$work/key.toml"
    printf '[monitor]\nenabled = false\n[actions]\nenabled = false\n'
} >"$work/sentinel.toml"
env -i RUST_LOG=error SENTINEL_CONFIG="$work/sentinel.toml" SENTINEL_LISTEN="127.0.0.1:$PORT" \
    SENTINEL_DATA_DIR="$work/data" SENTINEL_SANDBOX_DIR="$work" "$BIN" serve &
pid=$!
# (The default port is below Linux's ephemeral range, so no outgoing connection holds it.)
wait_for "the server to be ready" ready_at "http://127.0.0.1:$PORT"

rss() { awk '/VmRSS/ {print $2, $3}' "/proc/$pid/status"; }
echo "server rss before clients: $(rss)"
echo "== cargo run --release --manifest-path bench/sse/Cargo.toml --target-dir target -- http://127.0.0.1:$PORT <key> $CLIENTS $ROUNDS"
# The client prints `connected:` once every client has its `hello` and waits a second before
# the first round; the RSS is read then.
cargo run -q --release --manifest-path bench/sse/Cargo.toml --target-dir target -- \
    "http://127.0.0.1:$PORT" "$key" "$CLIENTS" "$ROUNDS" |
    while IFS= read -r line; do
        echo "  $line"
        if [[ $line == connected:* ]]; then
            echo "  server rss with $CLIENTS clients connected: $(rss)"
        fi
    done
echo "server rss after the rounds: $(rss)"
