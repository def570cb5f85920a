#!/usr/bin/env bash
# The kill -9 matrix, many times over: tests/it/crash.rs run with SENTINEL_CRASH_RUNS=<runs>,
# so each kill point (after the approval's 200, after the intent, during the Docker call,
# after the Docker call before its record, during verification, during the rollback) is hit
# <runs> times on the embedded store and <runs> times on Redis, one kill point at a time.
#
#   bench/crash.sh [runs]
#
# Needs what the test needs: Docker with sentinel-test/busybox:latest and Redis on
# 127.0.0.1:6379 (scripts/services.sh start). Builds with the dev profile. Loopback only;
# bounded (at most 15 minutes per run of the matrix, plus 10 for the build). Prints one line
# per run and ends with one summary line per (backend, kill point): runs, how many kills
# landed where intended, the longest time to a terminal status after the restart, the most
# Docker actions seen for one step, and how many runs failed a check.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=${1:-20}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "usage: bench/crash.sh [runs]" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

timeout 600 cargo test --test it crash:: --no-run >&2

status=0
SENTINEL_CRASH_RUNS=$RUNS timeout $((300 + RUNS * 900)) \
    cargo test --test it crash:: -- --nocapture --test-threads=1 >"$work/out" 2>&1 || status=$?

# libtest writes "test <name> ... " before a test's first line of output: match anywhere.
grep -oE 'crash run: .*' "$work/out" || true
echo
grep -oE 'crash summary: .*' "$work/out" || true
grep -oE 'test result: .*' "$work/out" || true
if ((status != 0)); then
    echo
    echo "cargo test exited with $status; failed checks:"
    sed -n '/failed check(s):/,/^stack backtrace:\|^note: /p' "$work/out" | grep -v '^stack backtrace:\|^note: ' || true
    (( status == 124 )) && echo "(stopped by the time bound)"
fi
exit "$status"
