#!/usr/bin/env python3
"""Medians over several load-test summaries (target/loadtest/summary-*.json
copies, one per run): per phase and endpoint, the median of req/s, p50, p95
and p99 across runs, with the spread (min..max), plus events created/s,
server RSS, for hotpath runs the POST/s over GET /status/s ratio, and for
lease runs the events acknowledged/s and what the lease tracking found.

    scripts/median.py target/loadtest/runs/hotpath-lean-*.json
"""
import json
import statistics
import sys


def med(xs):
    xs = [x for x in xs if x is not None]
    return (statistics.median(xs), min(xs), max(xs)) if xs else None


def fmt(t, digits=1):
    if t is None:
        return "-"
    m, lo, hi = t
    return f"{m:,.{digits}f} ({lo:,.{digits}f}..{hi:,.{digits}f})"


def main(paths):
    runs = [json.load(open(p)) for p in paths]
    if not runs:
        sys.exit("no summaries given")
    print(f"{len(runs)} runs: {', '.join(paths)}")
    print(f"scenario {runs[0].get('scenario')}, engine {runs[0].get('engine', 'goose')}, "
          f"users {runs[0].get('users')}, {runs[0].get('run_time_secs')} s per phase")
    phases = [p["name"] for p in runs[0]["phases"]]
    for name in phases:
        per_run = [next(p for p in r["phases"] if p["name"] == name) for r in runs]
        print(f"\n== {name}: median (min..max) over {len(runs)} runs")
        eps = [(e["method"], e["name"]) for e in per_run[0]["endpoints"]]
        for m, n in eps:
            rows = [next((e for e in p["endpoints"] if e["method"] == m and e["name"] == n), None)
                    for p in per_run]
            get = lambda k: med([r[k] for r in rows if r])
            fails = sum(r["fails"] for r in rows if r)
            print(f"  {m:<6} {n:<14} req/s {fmt(get('per_sec'), 0)}; "
                  f"p50 {fmt(get('p50_ms'), 2)} ms; p95 {fmt(get('p95_ms'), 2)} ms; "
                  f"p99 {fmt(get('p99_ms'), 2)} ms; fails {fails}")
        print(f"  events created/s {fmt(med([p['events_created_per_sec'] for p in per_run]), 0)}")
        acked = [p.get("events_acked_per_sec", 0) for p in per_run]
        if any(acked):
            print(f"  events acknowledged/s {fmt(med(acked), 0)}")
        leases = [p["leases"] for p in per_run if p.get("leases")]
        if leases:
            total = lambda k: sum(l[k] for l in leases)
            print(f"  leases: {total('events_leased'):,} events leased in {len(leases)} runs, "
                  f"{total('events_leased_again')} leased again, "
                  f"{total('overlapping_leases')} while a lease held them, "
                  f"{total('leased_after_ack')} after their ack, {total('stale_acks')} stale in acks, "
                  f"{total('empty_leases')} empty lease calls")
        rss = med([p.get("server_rss_max_mib") for p in per_run])
        if rss:
            print(f"  server RSS max {fmt(rss)} MiB")
    ratios = []
    for r in runs:
        ph = {p["name"]: p for p in r["phases"]}
        st = [e for p in ph.values() if p["name"].endswith("-status") for e in p["endpoints"]
              if e["name"] == "/status"]
        po = [e for p in ph.values() if p["name"].endswith("-ingest") for e in p["endpoints"]
              if e["method"] == "POST"]
        if st and po:
            ratios.append(po[0]["per_sec"] / st[0]["per_sec"])
    if ratios:
        print(f"\nPOST/s over GET /status/s, per run: {', '.join(f'{x:.3f}' for x in ratios)}; "
              f"median {statistics.median(ratios):.3f}")
    hwm = med([r.get("server_peak_rss_mib") for r in runs])
    if hwm:
        print(f"server peak RSS (VmHWM) {fmt(hwm)} MiB")


if __name__ == "__main__":
    main(sys.argv[1:])
