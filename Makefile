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

.PHONY: help run build key test test-quick lint fmt clippy bench loadtest hotpath sim sim-long dynamodb-local dynamodb-local-stop clean

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
	  --skip works_on_dynamodb --skip unreachable_dynamodb
	$(CARGO) test -p triggers-sim

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
