#!/usr/bin/env bash
# The chaos harness at full size (issue 13): tests/it/chaos.rs run with SENTINEL_CHAOS=full.
# Each scenario prints one line `chaos <scenario>: <figures> mode=full PASS|FAIL`.
#
#   bench/chaos.sh [libtest filter under chaos::, e.g. dedup]
#
# SENTINEL_BIN=/path/to/sentinel runs that binary as the replicas (a release build, say)
# instead of the dev one cargo builds. Needs Docker with sentinel-test/busybox:latest and
# redis-server installed (each scenario runs a private one on a free loopback port;
# scripts/services.sh start). Loopback only; bounded: 10 minutes for the build, 30 for the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FILTER=chaos::${1:-}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

timeout 600 cargo test --test it chaos:: --no-run >&2

status=0
started=$(date +%s)
SENTINEL_CHAOS=full ${SENTINEL_BIN:+SENTINEL_BIN="$SENTINEL_BIN"} timeout 1800 \
    cargo test --test it "$FILTER" -- --nocapture --test-threads=1 >"$work/out" 2>&1 || status=$?

# libtest writes "test <name> ... " before a test's first line of output: match anywhere.
grep -oE 'chaos [a-z_0-9]+: .*' "$work/out" || true
grep -oE 'test result: .*' "$work/out" || true
echo "wall time: $(($(date +%s) - started))s"
if ((status != 0)); then
    echo
    echo "cargo test exited with $status; failed checks:"
    sed -n '/failed check(s):/,/^note: /p' "$work/out" | grep -v '^note: ' | head -60 || true
    (( status == 124 )) && echo "(stopped by the time bound)"
fi
exit "$status"
