#!/usr/bin/env bash
# Open-loop (fixed arrival rate) counterpart of the goose load test. goose is
# closed-loop: a slow answer delays the next request, so it under-reports the
# latency a real client sees (coordinated omission). oha with -q RATE and
# --latency-correction measures each request from the moment it was *due*.
#
#   scripts/openloop.sh                        # 2000 POST/s, 30 s
#   RATE=3000 DURATION=60 scripts/openloop.sh
#   INBOX_RATE=500 scripts/openloop.sh         # also GET /inbox at 500/s meanwhile
#   SKIP_BUILD=1 scripts/openloop.sh           # use the existing target/release binary
#
# It builds the server (release), installs oha from crates.io when missing
# (cargo install oha --locked), starts the server on a temp SQLite store
# under target/loadtest/ on 127.0.0.1 (port chosen by the kernel), creates a
# key through the CLI, and runs, one after another:
#   1. GET /status   at STATUS_RATE (default RATE) for DURATION s
#   2. POST /events  at RATE with unique 1 KiB events for DURATION s
#      (and GET /inbox?limit=50 at INBOX_RATE at the same time, if set);
#      the server runs with --dedup-window-secs 0 (see below)
# then stops the server and prints p50/p95/p99, achieved rate and errors;
# oha's JSON is kept in target/loadtest/openloop-*.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RATE="${RATE:-2000}"
STATUS_RATE="${STATUS_RATE:-$RATE}"
INBOX_RATE="${INBOX_RATE:-0}"
DURATION="${DURATION:-30}"
CONNS="${CONNS:-64}"
OHA_VERSION="${OHA_VERSION:-1.16.0}"
OUT=target/loadtest
BIN=target/release/triggers-api

# Bounded: rates and durations stay in a sane range.
(( DURATION >= 1 && DURATION <= 600 )) || { echo "DURATION must be 1..600 s" >&2; exit 2; }
(( RATE >= 1 && RATE <= 100000 )) || { echo "RATE must be 1..100000/s" >&2; exit 2; }

if ! command -v oha >/dev/null; then
    echo "==> installing oha ${OHA_VERSION} from crates.io (once)" >&2
    cargo install oha --locked --version "${OHA_VERSION}"
fi
[[ -n "${SKIP_BUILD:-}" && -x "$BIN" ]] || cargo build --release --bin triggers-api
mkdir -p "$OUT"

store_dir="$(mktemp -d "$PWD/$OUT/openloop-store-XXXXXX")"
log="$OUT/openloop-server.log"
pid=""
cleanup() {
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$store_dir"
}
trap cleanup EXIT

store="sqlite://$store_dir/triggers.db"
key="$("$BIN" keys --store "$store" create --account openloop --email openloop@example.com \
        --role creator --rate-limit 100000000 --json | jq -r .key)"

# oha picks -Z body lines at random (with replacement), so repeats are
# certain; the server runs with a dedup window of 0 s so that a repeat is
# inserted like a new event (the same lookup + two inserts as a unique one).
RUST_LOG="${SERVER_LOG:-info}" "$BIN" serve --store "$store" --bind 127.0.0.1:0 \
    --dedup-window-secs 0 >"$log" 2>&1 &
pid=$!
url=""
for _ in $(seq 100); do
    url="$(grep -o 'listening on http://127\.0\.0\.1:[0-9]*' "$log" | head -1 | sed 's/listening on //' || true)"
    [[ -n "$url" ]] && break
    sleep 0.1
done
[[ -n "$url" ]] || { echo "server did not start; see $log" >&2; exit 2; }
echo "==> server pid $pid at $url" >&2
# Warm the auth cache (one bcrypt verification) before anything is measured.
curl -fsS -o /dev/null -H "Authorization: Bearer $key" "$url/inbox?limit=1"

# 1 KiB payloads, one request body per line.
bodies="$OUT/openloop-bodies.ndjson"
n=20000
awk -v n="$n" -v nonce="$RANDOM$RANDOM" 'BEGIN {
    pad = sprintf("%900s", ""); gsub(/ /, "x", pad);
    for (i = 0; i < n; i++) {
        head = sprintf("{\"n\":%d,\"nonce\":\"%s\",\"order\":{\"id\":\"ord_%d\",\"total\":\"19.99\"},\"pad\":\"", i, nonce, i);
        p = substr(pad, 1, 1024 - length(head) - 2);
        printf "{\"event_type\":\"load.p%d\",\"source\":\"openloop\",\"payload\":%s%s\"}}\n", i % 8, head, p;
    }
}' >"$bodies"

oha_run() { # name rate extra-args...
    local name=$1 rate=$2; shift 2
    oha --no-tui --output-format json -z "${DURATION}s" -q "$rate" --latency-correction \
        -c "$CONNS" -t 15s "$@" >"$OUT/openloop-$name.json"
}

echo "==> open loop: GET /status at ${STATUS_RATE}/s for ${DURATION}s" >&2
oha_run status "$STATUS_RATE" "$url/status"

echo "==> open loop: POST /events at ${RATE}/s for ${DURATION}s${INBOX_RATE:+ (inbox at ${INBOX_RATE}/s meanwhile)}" >&2
inbox_pid=""
if (( INBOX_RATE > 0 )); then
    oha_run inbox "$INBOX_RATE" -H "Authorization: Bearer $key" "$url/inbox?limit=50" &
    inbox_pid=$!
fi
oha_run post "$RATE" -m POST -T application/json -H "Authorization: Bearer $key" -Z "$bodies" "$url/events"
[[ -n "$inbox_pid" ]] && wait "$inbox_pid"

hwm_kib="$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)"

python3 - "$OUT" "$RATE" "$STATUS_RATE" "$INBOX_RATE" "$hwm_kib" <<'PY'
import json, os, sys
out, rate, srate, irate, hwm = sys.argv[1], *map(float, sys.argv[2:6])
print(f"\nopen loop (oha --latency-correction, fixed rate), {os.environ.get('DURATION', '30')} s each")
print(f"  {'run':<8}{'target/s':>10}{'achieved/s':>12}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}  statuses")
rows = {}
for name, target in (("status", srate), ("post", rate), ("inbox", irate)):
    path = f"{out}/openloop-{name}.json"
    if target <= 0 or not os.path.exists(path):
        continue
    d = json.load(open(path))
    s, p = d["summary"], d["latencyPercentiles"]
    codes = d.get("statusCodeDistribution", {})
    # Requests still in flight when the duration ends are "aborted due to
    # deadline": not errors of the server.
    errd = {k: v for k, v in d.get("errorDistribution", {}).items() if k != "aborted due to deadline"}
    errs = sum(errd.values()) + sum(v for k, v in codes.items() if not k.startswith("2"))
    ms = lambda k: (p.get(k) or 0) * 1000
    achieved = sum(codes.values()) / s["total"]
    rows[name] = achieved
    print(f"  {name:<8}{target:>10.0f}{achieved:>12.0f}{ms('p50'):>9.2f}{ms('p95'):>9.2f}{ms('p99'):>9.2f}{errs:>8}  {codes}")
if hwm:
    print(f"  server peak RSS (VmHWM): {hwm/1024:.1f} MiB")
PY
