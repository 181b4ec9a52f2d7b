#!/usr/bin/env bash
# Lints what deploys the service: deploy/template.yaml (cfn-lint), the
# Dockerfile (hadolint), docker-compose.yml (the compose-spec JSON schema
# vendored in check-jsonschema; `docker compose config` too where the compose
# plugin exists). Prints one line per check: PASS, FAIL, or NOT RUN with the
# reason; a check that cannot run here is never silently skipped. Exits 1 if
# any check failed. The tools come from `make tools` (.cache/tools-venv).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv="${TOOLS_VENV:-.cache/tools-venv}"
bin="$venv/bin"
failed=0
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

report() { printf '%-8s %s\n' "$1" "$2"; }

# check NAME CMD...: runs CMD, prints PASS or FAIL (with the tool's output).
check() {
    local name="$1"
    shift
    if "$@" >"$out/log" 2>&1; then
        report PASS "$name"
    else
        report FAIL "$name"
        sed 's/^/         | /' "$out/log"
        failed=1
    fi
}

for tool in cfn-lint hadolint check-jsonschema; do
    if [[ ! -x "$bin/$tool" ]]; then
        report FAIL "$tool is not installed in $venv: run 'make tools'"
        failed=1
    fi
done

if [[ -x "$bin/cfn-lint" ]]; then
    check "cfn-lint $("$bin/cfn-lint" --version | awk '{print $2}'): deploy/template.yaml" \
        "$bin/cfn-lint" deploy/template.yaml
fi

if [[ -x "$bin/hadolint" ]]; then
    check "hadolint $("$bin/hadolint" --version | awk '{print $NF}'): Dockerfile" \
        "$bin/hadolint" Dockerfile
fi

if [[ -x "$bin/check-jsonschema" ]]; then
    cj_version="$("$bin/check-jsonschema" --version | awk '{print $NF}')"
    check "check-jsonschema $cj_version (compose-spec schema, vendored in it): docker-compose.yml" \
        "$bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
    # The validator must be able to say no: a file with an unknown service
    # key and a mistyped port list has to be refused.
    printf 'services:\n  api:\n    image: x\n    bogus_key: 1\n    ports: 8080\n' >"$out/bad-compose.yml"
    if "$bin/check-jsonschema" --builtin-schema vendor.compose-spec "$out/bad-compose.yml" >/dev/null 2>&1; then
        report FAIL "compose schema canary: an invalid compose file was accepted"
        failed=1
    else
        report PASS "compose schema canary: an invalid compose file is refused"
    fi
fi

# docker compose config: the Compose v2 plugin's own parser (it needs no
# engine). Run when the plugin exists; say so when it does not.
if ! command -v docker >/dev/null 2>&1; then
    report "NOT RUN" "docker compose config: no docker client on this machine"
elif ! docker compose version >/dev/null 2>&1; then
    report "NOT RUN" "docker compose config: the docker client has no compose plugin ($(docker --version))"
else
    check "docker compose config ($(docker compose version --short)): docker-compose.yml" \
        docker compose -f docker-compose.yml config --quiet
fi

# The image itself (docker build) needs an engine; say whether there is one.
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    report INFO "a Docker engine is running: 'docker build .' can build the image (not run here)"
else
    report "NOT RUN" "docker build: no Docker engine reachable (the image is not built by this script)"
fi

exit "$failed"
