#!/usr/bin/env bash
# `make loadtest`: builds the server and the goose load test (release), then
# runs the load test, which starts the server itself on a temp SQLite store
# under target/loadtest/ on a free 127.0.0.1 port, creates a key through the
# CLI, runs the scenario and stops the server.
#
#   scripts/loadtest.sh                          # mixed scenario, 30 s
#   scripts/loadtest.sh --scenario hotpath       # status, ingest, ingest+inbox
#   scripts/loadtest.sh --scenario ingest --users 64 --run-time 60
#   TRIGGERS_API_KEY=trg_… scripts/loadtest.sh --host http://127.0.0.1:8080
#   LOADTEST_ARGS="--scenario drain" make loadtest
#
# Everything after the script name goes to triggers-loadtest (see --help).
# Reports: target/loadtest/*.html, *.json; exit status 1 when a threshold
# is missed, 2 on an error.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --bin triggers-api
cargo build --release -p triggers-loadtest

args=("$@")
if [[ ${#args[@]} -eq 0 && -n "${LOADTEST_ARGS:-}" ]]; then
    read -r -a args <<<"${LOADTEST_ARGS}"
fi
exec target/release/triggers-loadtest --server-bin target/release/triggers-api "${args[@]}"
