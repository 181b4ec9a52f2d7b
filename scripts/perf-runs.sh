#!/usr/bin/env bash
# Runs the load test RUNS times (default 3) with the given arguments and
# prints the medians: the figures in docs/performance.md come from this.
#
#   scripts/perf-runs.sh hotpath-lean --scenario hotpath --engine lean --users 32 --run-time 10
#   RUNS=5 scripts/perf-runs.sh mixed --scenario mixed --users 32 --run-time 60
#
# The first argument labels the runs; each run's summary is kept as
# target/loadtest/runs/LABEL-N.json. A run that misses a threshold is still
# counted (its exit status is printed); an error stops the series.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

label="${1:?usage: scripts/perf-runs.sh LABEL [triggers-loadtest args...]}"
shift
runs="${RUNS:-3}"
(( runs >= 1 && runs <= 20 )) || { echo "RUNS must be 1..20" >&2; exit 2; }
scenario="mixed"
prev=""
for a in "$@"; do
    [[ "$prev" == "--scenario" ]] && scenario="$a"
    prev="$a"
done

cargo build --release --bin triggers-api
cargo build --release -p triggers-loadtest
mkdir -p target/loadtest/runs
rm -f "target/loadtest/runs/${label}-"*.json
for i in $(seq "$runs"); do
    echo "==> run $i/$runs: triggers-loadtest $*" >&2
    rc=0
    target/release/triggers-loadtest --server-bin target/release/triggers-api "$@" \
        > "target/loadtest/runs/${label}-${i}.txt" 2>&1 || rc=$?
    if (( rc == 2 )); then
        cat "target/loadtest/runs/${label}-${i}.txt" >&2
        exit 2
    fi
    echo "    exit status $rc (1 = a threshold missed)" >&2
    cp "target/loadtest/summary-${scenario}.json" "target/loadtest/runs/${label}-${i}.json"
done
python3 scripts/median.py "target/loadtest/runs/${label}-"*.json
