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

# bench_sign kind count → $work/kind.lua, `count` Slack requests signed with $SECRET now (a
# signature holds for 300 s), for wrk: kind `status` is a `/sentinel status` command, `click`
# an Approve click on incident $id (distinct trigger ids). Needs $work, $SECRET, $id.
bench_sign() {
    python3 - "$SECRET" "$1" "$2" "$id" >"$work/$1.lua" <<'PY'
import hashlib, hmac, json, sys, time, urllib.parse
secret, kind, count, incident = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ts = str(int(time.time()))
def body(i):
    if kind == "status":
        return urllib.parse.urlencode({"command": "/sentinel", "text": "status", "user_id": "UBENCHOP",
            "channel_id": "CBENCH", "team_id": "T1", "response_url": "https://hooks.slack.com/commands/x",
            "trigger_id": f"t{i}"})
    payload = {"type": "block_actions", "user": {"id": "UBENCHOP"}, "trigger_id": f"bench-{ts}-{i}",
        "container": {"type": "message", "message_ts": "1.1", "channel_id": "CBENCH"},
        "channel": {"id": "CBENCH"}, "actions": [{"type": "button", "action_id": "approve",
        "block_id": "b", "value": json.dumps({"incident": incident, "version": 1}), "action_ts": "1.2"}]}
    return urllib.parse.urlencode({"payload": json.dumps(payload)})
print("requests = {}")
for i in range(count):
    b = body(i)
    sig = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:{b}".encode(), hashlib.sha256).hexdigest()
    print(f"requests[{i + 1}] = {{ {json.dumps(b)}, {json.dumps(sig)} }}")
print(f"timestamp = {json.dumps(ts)}")
print("""
local n = 0
request = function()
  n = n % #requests + 1
  local r = requests[n]
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["X-Slack-Request-Timestamp"] = timestamp,
    ["X-Slack-Signature"] = r[2],
  }, r[1])
end
""")
PY
}
