# Shared by the bench scripts (sourced, not run): a work directory removed on exit, an admin
# key, and bounded waits on a server whose pid is in $pid.

# A fresh $work directory; on exit the server in $pid (if any) is stopped and $work removed.
bench_workdir() {
    work=$(mktemp -d)
    pid=
    trap 'bench_cleanup' EXIT
}

bench_cleanup() {
    [[ -n ${pid:-} ]] && kill "$pid" 2>/dev/null
    rm -rf "$work"
}

# Makes an admin key with `$BIN keys new`: $key is the key, $work/key.toml its config lines.
bench_admin_key() {
    "$BIN" keys new --role admin --name bench >"$work/key"
    key=$(head -n 1 "$work/key")
    tail -n +2 "$work/key" >"$work/key.toml"
}

# Waits (at most 30 s) until the command succeeds; the server in $pid must stay up meanwhile.
wait_for() {
    local what=$1 i
    shift
    for ((i = 0; i < 600; i++)); do
        "$@" && return 0
        kill -0 "$pid" 2>/dev/null || { echo "the server exited" >&2; pid=; exit 1; }
        sleep 0.05
    done
    echo "timed out waiting for $what" >&2
    exit 1
}

# Whether the server at base URL $1 answers /readyz.
ready_at() { curl -sf -m 2 "$1/readyz" >/dev/null; }
