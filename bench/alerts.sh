#!/usr/bin/env bash
# Alertmanager intake under load, and the first card's latency (issue 14):
#
# 1. `alerts` webhooks (default 10 000, one alert each, Alertmanager's webhook format) over
#    `fingerprints` distinct fingerprints (default 2 000), posted by 8 keep-alive connections
#    paced to finish within `seconds` (default 55): prints how many were acknowledged, the
#    acks' p50/p99/max, how many incidents the store then holds (one per fingerprint is the
#    target) and Sentinel's peak RSS while it ran. Targets: ack p99 <= 50 ms, RSS <= 64 MiB.
# 2. `trials` (default 20) single alerts of new fingerprints, one at a time and 3 s apart so
#    no Slack message queues ahead: the time from sending the webhook to the incident's card
#    (chat.postMessage) arriving at a Slack double (a small Web API stand-in in this script,
#    answering `ok` with a `ts`). Target: <= 100 ms.
#
#   cargo build --release && bench/alerts.sh [alerts] [fingerprints] [seconds] [trials]
#
# Remediation and the monitor are off: this measures intake and cards, not fixes. Loopback
# only; bounded by `seconds` + 3 x `trials` + a minute.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/lib.sh

BIN=${SENTINEL_BIN:-target/release/sentinel}
ALERTS=${1:-10000}
FINGERPRINTS=${2:-2000}
SECONDS_RUN=${3:-55}
TRIALS=${4:-20}
PORT=${BENCH_PORT:-28480}
SLACK_PORT=$((PORT + 1))
TOKEN=bench-alert-token
[[ -x $BIN ]] || { echo "build first: $BIN is missing (cargo build --release)" >&2; exit 1; }

bench_workdir
bench_admin_key
{
    cat "$work/key.toml"
    printf '[alertmanager]\nbearer_token = "%s"\n' "$TOKEN"
    printf '[monitor]\nenabled = false\n[actions]\nenabled = false\n'
} >"$work/sentinel.toml"

# The Slack double: every Web API call answers ok; chat.postMessage calls are logged with
# their arrival time (epoch seconds) and text, one JSON line each.
python3 - "$SLACK_PORT" "$work/slack.log" <<'PY' &
import json, sys, time, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, log = int(sys.argv[1]), open(sys.argv[2], "a", buffering=1)
seq = [0]
class Slack(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        at = time.time()
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        method = self.path.rsplit("/", 1)[-1]
        try:
            args = json.loads(body or b"{}")
        except ValueError:
            args = dict(urllib.parse.parse_qsl(body.decode()))
        seq[0] += 1
        ts = f"{int(at)}.{seq[0]:06d}"
        if method == "chat.postMessage" and not args.get("thread_ts"):
            log.write(json.dumps({"at": at, "text": args.get("text", "")}) + "\n")
        out = json.dumps({"ok": True, "ts": ts, "channel": args.get("channel", "C0BENCH"),
                          "url": f"ws://127.0.0.1:{port}/ws"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
ThreadingHTTPServer(("127.0.0.1", port), Slack).serve_forever()
PY
slack_pid=$!
trap 'kill $slack_pid 2>/dev/null; bench_cleanup' EXIT

env -i RUST_LOG=error SENTINEL_CONFIG="$work/sentinel.toml" SENTINEL_LISTEN="127.0.0.1:$PORT" \
    SENTINEL_DATA_DIR="$work/data" SENTINEL_SANDBOX_DIR="$work" \
    SLACK_BOT_TOKEN=xoxb-bench SLACK_SIGNING_SECRET=bench SLACK_CHANNEL=C0BENCH \
    SLACK_API_URL="http://127.0.0.1:$SLACK_PORT/api/" "$BIN" serve &
pid=$!
wait_for "Sentinel to be ready" ready_at "http://127.0.0.1:$PORT"

python3 - "$PORT" "$TOKEN" "$key" "$pid" "$ALERTS" "$FINGERPRINTS" "$SECONDS_RUN" "$TRIALS" \
    "$work/slack.log" <<'PY'
import http.client, json, statistics, sys, threading, time
port, token, key, pid = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
alerts, fingerprints, seconds, trials = map(int, sys.argv[5:9])
slack_log = sys.argv[9]

def rss_mib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0

def webhook(fp, run):
    return json.dumps({"version": "4", "groupKey": f"bench/{fp}", "status": "firing",
        "receiver": "sentinel", "alerts": [{"status": "firing", "fingerprint": f"{run}{fp:06x}",
        "labels": {"alertname": f"BenchAlert{fp}", "severity": "warning",
                   "instance": f"host-{fp % 50}"},
        "annotations": {"summary": f"bench alert {fp}"},
        "startsAt": "2026-12-03T18:00:00Z"}]}).encode()

headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
# 1. The load.
lat, failed, lock = [], [0], threading.Lock()
start = time.time()
peak = [rss_mib()]
def sender(worker, workers=8):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    mine = range(worker, alerts, workers)
    for n, i in enumerate(mine):
        due = start + (i / alerts) * seconds
        if (wait := due - time.time()) > 0:
            time.sleep(wait)
        body = webhook(i % fingerprints, "a")
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/api/alertmanager", body, headers)
            resp = conn.getresponse(); resp.read()
            ok = resp.status == 200
        except OSError:
            conn.close(); conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10); ok = False
        dt = (time.perf_counter() - t0) * 1000
        with lock:
            lat.append(dt)
            if not ok: failed[0] += 1
def sample():
    while time.time() - start < seconds + 5 and len(lat) < alerts:
        peak[0] = max(peak[0], rss_mib()); time.sleep(0.2)
threads = [threading.Thread(target=sender, args=(w,)) for w in range(8)]
watch = threading.Thread(target=sample); watch.start()
for t in threads: t.start()
for t in threads: t.join()
took = time.time() - start
watch.join()
time.sleep(2)
peak[0] = max(peak[0], rss_mib())
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
# Open incidents, from the store's own gauge (the list API pages at 1 000).
conn.request("GET", "/metrics")
metrics = conn.getresponse().read().decode()
opened = sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines()
             if l.startswith("sentinel_incidents_open{"))
print(f"intake: {len(lat)} webhooks ({alerts} alerts, {fingerprints} fingerprints) in {took:.1f} s, "
      f"{len(lat) - failed[0]} acknowledged 200, {failed[0]} not; ack p50 {q(0.5):.1f} ms, "
      f"p99 {q(0.99):.1f} ms, max {lat[-1]:.1f} ms; {opened:.0f} incidents open; "
      f"peak RSS {peak[0]:.1f} MiB")
ok = failed[0] == 0 and q(0.99) <= 50 and opened == fingerprints and peak[0] <= 64
print(f"intake targets (ack p99 <= 50 ms, one incident per fingerprint, RSS <= 64 MiB): {'MET' if ok else 'MISSED'}")

# 2. The first card, with nothing queued ahead: wait for the load's cards to drain first.
def cards():
    try:
        return [json.loads(l) for l in open(slack_log)]
    except FileNotFoundError:
        return []
last, quiet = len(cards()), time.time()
while time.time() - quiet < 5 and time.time() - start < seconds + 600:
    time.sleep(1)
    now = len(cards())
    if now != last: last, quiet = now, time.time()
seen = len(cards())
card_lat = []
for t in range(trials):
    time.sleep(3)
    body = webhook(t, "firstcard")
    sent = time.time()
    conn.request("POST", "/api/alertmanager", body, headers)
    conn.getresponse().read()
    deadline = sent + 10
    while time.time() < deadline:
        got = cards()[seen:]
        hit = [c for c in got if f"BenchAlert{t}" in c["text"] or f"bench alert {t}" in c["text"]]
        if hit:
            card_lat.append((hit[0]["at"] - sent) * 1000)
            break
        time.sleep(0.002)
    else:
        card_lat.append(float("inf"))
    seen = len(cards())
card_lat.sort()
finite = [c for c in card_lat if c != float("inf")]
print(f"first card: {len(finite)} of {trials} cards arrived; webhook → card median "
      f"{statistics.median(finite) if finite else float('nan'):.1f} ms, max {card_lat[-1]:.1f} ms")
print(f"first-card target (<= 100 ms every time): {'MET' if finite and len(finite) == trials and card_lat[-1] <= 100 else 'MISSED'}")
PY
