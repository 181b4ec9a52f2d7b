#!/usr/bin/env bash
# Regression test of scripts/dynamodb-local.sh on a busy machine: the port it
# tries first is taken between its check and the JVM's bind (a socket bound
# but not listening looks free to a connect probe, exactly like a port an
# outgoing connection grabbed meanwhile). The script must see the bind
# failure while waiting, retry on another port and come up within the time
# it would otherwise have waited in vain.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

state="$(mktemp -d)"
holder_pid=""
cleanup() {
    DYNAMODB_LOCAL_STATE="${state}" scripts/dynamodb-local.sh stop >/dev/null 2>&1 || true
    [[ -n "${holder_pid}" ]] && kill "${holder_pid}" 2>/dev/null || true
    rm -rf "${state}"
}
trap cleanup EXIT

scripts/dynamodb-local.sh install
# Bind (not listen) a port and hold it.
port_file="${state}/held-port"
python3 - "${port_file}" <<'PY' &
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
time.sleep(600)
PY
holder_pid=$!
for _ in $(seq 1 50); do [[ -s "${port_file}" ]] && break; sleep 0.1; done
held="$(cat "${port_file}")"

started=$(date +%s)
endpoint="$(DYNAMODB_LOCAL_STATE="${state}" DYNAMODB_LOCAL_PORT="${held}" \
    scripts/dynamodb-local.sh start 2>"${state}/stderr")" || {
    cat "${state}/stderr" >&2
    echo "dynamodb-local retry test: FAILED (the script gave up)"
    exit 1
}
took=$(($(date +%s) - started))
if [[ "${endpoint}" == "http://127.0.0.1:${held}" ]]; then
    echo "dynamodb-local retry test: FAILED (claims the held port ${held})"
    exit 1
fi
if ! grep -q "port ${held} was taken" "${state}/stderr"; then
    cat "${state}/stderr" >&2
    echo "dynamodb-local retry test: FAILED (no retry was logged)"
    exit 1
fi
echo "dynamodb-local retry test: passed (port ${held} taken; started at ${endpoint} in ${took} s)"
