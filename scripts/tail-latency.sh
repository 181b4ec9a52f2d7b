#!/usr/bin/env bash
# Tail latency of POST /events on the embedded store (issue 8, item 10),
# measured with wrk (closed loop, HTTP/1.1 keep-alive), unique ~1 KiB bodies
# (scripts/tail-post.lua), release build, RUST_LOG=info (one JSON access-log
# line per request, server stdout to a file). Each run starts two fresh
# servers, each on a new SQLite store under target/tail-latency/ (on disk,
# not tmpfs), with a key created by the CLI and the auth cache warmed by one
# request (the first use of a key runs bcrypt, ~0.3 s at cost 12, while
# every connection waits; AUTH_WARMUP=0 leaves that in the cold phase):
#
#   cold64    fresh server, POST, 64 connections, the first COLD_SECS (8) s
#   warm64    second fresh server, after WARMUP_SECS (3) s of POSTs at 64
#             connections: POST, 64 connections, SECS (10) s
#   warm16    then POST, 16 connections, SECS s
#   status64  then GET /status, 64 connections, SECS s (the HTTP ceiling in
#             the same run: ratio = warm64 POST/s ÷ status64 req/s)
#
# and prints, per phase, the median over RUNS (3) runs of p50/p95/p99/max
# and req/s, with each run's values, plus the 1-minute load average after
# each phase. Results: target/tail-latency/results-LABEL.jsonl (one line per
# phase and run).
#
# wrk 4 corrects its latency histogram for coordinated omission before it
# reports (stats_correct: a response slower than the run's mean interval
# per connection also counts as the responses that would have been due
# meanwhile), so one stall of every connection weighs on p99 far more than
# its own samples do; the server's access log (latency_ms) does not.
#
#   scripts/tail-latency.sh                    # build, 3 runs
#   RUNS=1 SECS=5 scripts/tail-latency.sh      # quicker
#   SKIP_BUILD=1 BIN=path/to/triggers-api LABEL=before scripts/tail-latency.sh
#   BINS="before=/tmp/old-triggers-api after=target/release/triggers-api" \
#       scripts/tail-latency.sh                # A/B in one sitting: runs alternate
#   SERVER_ARGS="--purge-interval-secs 60" SERVER_LOG=warn scripts/tail-latency.sh
#
# wrk comes from Debian (apt-get install -y wrk, done here when missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS="${RUNS:-3}"
COLD_SECS="${COLD_SECS:-8}"
WARMUP_SECS="${WARMUP_SECS:-3}"
SECS="${SECS:-10}"
THREADS="${THREADS:-2}"
LABEL="${LABEL:-run}"
BIN="${BIN:-target/release/triggers-api}"
OUT=target/tail-latency
(( RUNS >= 1 && RUNS <= 20 )) || { echo "RUNS must be 1..20" >&2; exit 2; }
(( SECS >= 1 && SECS <= 300 && COLD_SECS >= 1 && COLD_SECS <= 300 )) || { echo "SECS, COLD_SECS: 1..300" >&2; exit 2; }

if ! command -v wrk >/dev/null; then
    echo "==> installing wrk (Debian package)" >&2
    if [[ $(id -u) -eq 0 ]]; then apt-get install -y wrk >&2; else sudo apt-get install -y wrk >&2; fi
fi
if [[ -z "${BINS:-}" ]]; then
    [[ -n "${SKIP_BUILD:-}" && -x "$BIN" ]] || cargo build --release --bin triggers-api
    BINS="$LABEL=$BIN"
fi
mkdir -p "$OUT"
for lb in $BINS; do
    [[ -x "${lb#*=}" ]] || { echo "not an executable: ${lb#*=}" >&2; exit 2; }
    : >"$OUT/results-${lb%%=*}.jsonl"
done

pid=""
store_dir=""
stop_server() {
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    pid=""
    [[ -n "$store_dir" ]] && rm -rf "$store_dir"
    store_dir=""
}
trap stop_server EXIT

url="" key=""
start_server() { # log-name
    store_dir="$(mktemp -d "$PWD/$OUT/store-XXXXXX")"
    local store="sqlite://$store_dir/triggers.db" log="$OUT/server-$1.log"
    key="$("$BIN" keys --store "$store" create --account tail --email tail@example.com \
            --role creator --rate-limit 100000000 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
    # shellcheck disable=SC2086
    RUST_LOG="${SERVER_LOG:-info}" "$BIN" serve --store "$store" --bind 127.0.0.1:0 ${SERVER_ARGS:-} >"$log" 2>&1 &
    pid=$!
    url=""
    for _ in $(seq 100); do
        url="$(grep -o 'listening on http://127\.0\.0\.1:[0-9]*' "$log" | head -1 | sed 's/listening on //' || true)"
        [[ -n "$url" ]] && break
        sleep 0.1
    done
    [[ -n "$url" ]] || { echo "server did not start; see $log" >&2; exit 2; }
    if [[ "${AUTH_WARMUP:-1}" != 0 ]]; then
        curl -fsS -o /dev/null -H "Authorization: Bearer $key" "$url/inbox?limit=1"
    else
        for _ in $(seq 100); do curl -fsS -o /dev/null "$url/status" && break; sleep 0.1; done
    fi
}

run_wrk() { # run phase conns secs [post]
    local run=$1 phase=$2 conns=$3 secs=$4 kind=${5:-post} line
    local -a args=(-t "$THREADS" -c "$conns" -d "${secs}s" --timeout 30s -s scripts/tail-post.lua)
    if [[ $kind == post ]]; then
        line="$(wrk "${args[@]}" "$url/events" -- "$key" "$LABEL-$run-$phase-$RANDOM$RANDOM" | grep '^TAIL ')"
    else
        line="$(wrk "${args[@]}" "$url/status" | grep '^TAIL ')"
    fi
    [[ $phase == warmup ]] && return 0
    local load; load="$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "{\"label\":\"$LABEL\",\"run\":$run,\"phase\":\"$phase\",\"conns\":$conns,\"load\":\"$load\",${line#TAIL \{}" >>"$results"
    python3 - "$phase" "${line#TAIL }" <<'PY' >&2
import json, sys
d = json.loads(sys.argv[2])
print(f"    {sys.argv[1]:<9} {d['requests'] / d['duration_us'] * 1e6:>9,.0f} req/s  p50 {d['p50_us']/1000:6.2f}  p95 {d['p95_us']/1000:6.2f}  "
      f"p99 {d['p99_us']/1000:7.2f}  max {d['max_us']/1000:7.1f} ms  non-2xx {d['non2xx']}  socket errors {d['socket_errors']}")
PY
}

for run in $(seq "$RUNS"); do
    for lb in $BINS; do
        LABEL="${lb%%=*}" BIN="${lb#*=}" results="$OUT/results-${lb%%=*}.jsonl"
        echo "==> $LABEL run $run/$RUNS, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
        start_server "$LABEL-$run-cold"
        run_wrk "$run" cold64 64 "$COLD_SECS"
        stop_server
        start_server "$LABEL-$run-warm"
        run_wrk "$run" warmup 64 "$WARMUP_SECS"
        run_wrk "$run" warm64 64 "$SECS"
        run_wrk "$run" warm16 16 "$SECS"
        run_wrk "$run" status64 64 "$SECS" status
        stop_server
    done
done

for lb in $BINS; do
python3 - "$OUT/results-${lb%%=*}.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
label = rows[0]["label"]
runs = sorted({r["run"] for r in rows})
print(f"\n{label}: median of {len(runs)} run(s) (each run's values in brackets); 1-min load average after each phase:")
print("  " + "; ".join(f"run {r}: " + ", ".join(x["load"].split()[0] for x in rows if x["run"] == r) for r in runs))
def rate(x): return x["requests"] / x["duration_us"] * 1e6
print(f"  {'phase':<9}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}  non-2xx  runs p99 | max")
for phase in ("cold64", "warm64", "warm16", "status64"):
    xs = [x for x in rows if x["phase"] == phase]
    if not xs: continue
    m = lambda f: statistics.median(f(x) for x in xs)
    ms = lambda k: (lambda x: x[k] / 1000)
    print(f"  {phase:<9}{m(rate):>9,.0f}{m(ms('p50_us')):>9.2f}{m(ms('p95_us')):>9.2f}{m(ms('p99_us')):>9.2f}{m(ms('max_us')):>9.1f}"
          f"  {sum(x['non2xx'] + x['socket_errors'] for x in xs):>7}  "
          + " / ".join(f"{x['p99_us']/1000:.1f}" for x in xs) + " | " + " / ".join(f"{x['max_us']/1000:.0f}" for x in xs))
ratios = []
for r in runs:
    p = [x for x in rows if x["run"] == r and x["phase"] == "warm64"]
    s = [x for x in rows if x["run"] == r and x["phase"] == "status64"]
    if p and s: ratios.append(rate(p[0]) / rate(s[0]))
if ratios:
    print(f"  POST/s (warm64) ÷ GET /status/s (status64): median {statistics.median(ratios):.2f} (" + " / ".join(f"{x:.2f}" for x in ratios) + ")")
PY
done
