# Two commands do all set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
PIP    := $(BIN)/python -m pip --quiet --disable-pip-version-check

# Every install comes from a lock file with hashes (requirements*.lock); `make lock`
# refreshes them from pyproject.toml's ranges. The project itself is installed
# editable without dependencies, so nothing unlocked slips in.
LOCKS := requirements.lock requirements-dev.lock requirements-bench.lock
UV    := uv==0.13.9

.PHONY: run test test-latest pytest lint typecheck install dev bench lock clean graphiql-assets \
	dashboard-assets

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Reinstall only when a lock file or pyproject.toml changes.
$(VENV)/.installed: requirements.lock pyproject.toml | $(BIN)/python
	$(PIP) install --require-hashes --no-deps -r requirements.lock
	$(PIP) install --no-deps -e .
	touch $@

$(VENV)/.installed-dev: requirements-dev.lock pyproject.toml | $(BIN)/python
	$(PIP) install --require-hashes --no-deps -r requirements-dev.lock
	$(PIP) install --no-deps -e .
	touch $(VENV)/.installed $@

$(VENV)/.installed-bench: requirements-bench.lock pyproject.toml | $(BIN)/python
	$(PIP) install --require-hashes --no-deps -r requirements-bench.lock
	$(PIP) install --no-deps -e .
	touch $(VENV)/.installed $(VENV)/.installed-dev $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# Refresh the locks: the newest versions pyproject.toml allows, for every platform,
# with hashes. Commit the result after `make test` passes on it.
lock: | $(BIN)/python
	$(PIP) install '$(UV)'
	$(BIN)/uv pip compile pyproject.toml --upgrade --generate-hashes --universal \
	    --python-version 3.11 --no-header --quiet -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --upgrade --generate-hashes --universal \
	    --python-version 3.11 --no-header --quiet --extra dev -o requirements-dev.lock
	$(BIN)/uv pip compile pyproject.toml --upgrade --generate-hashes --universal \
	    --python-version 3.11 --no-header --quiet --extra dev --extra bench \
	    -o requirements-bench.lock

# The benchmark's Node subscriber client (graphql-ws), reinstalled only when the
# lock file changes. Without npm, or if npm ci fails, bench/fanout.py falls back
# to the Python client and says why.
NPM := $(shell command -v npm 2>/dev/null)
NODE_DEPS := bench/node/node_modules/.installed

$(NODE_DEPS): bench/node/package.json bench/node/package-lock.json
	@if $(NPM) ci --prefix bench/node --no-audit --no-fund; then touch $@; \
	else echo "npm ci failed: the benchmark will use the Python client" >&2; fi

# The fan-out benchmark's smoke run (bench/README.md has the full run): ~35 s,
# fails only on lost, duplicated or reordered messages, never on timing.
bench: $(VENV)/.installed-bench $(if $(NPM),$(NODE_DEPS))
	$(BIN)/python bench/fanout.py --quick $(BENCH_ARGS)

# GraphiQL's browser files, copied from the npm packages pinned in tools/graphiql
# into api/static/graphiql with a manifest (sha256 per file), and committed: `make
# run` and an installed package need neither npm nor a network. Run it only after
# changing tools/graphiql/package.json (docs/graphiql.md), then commit the result.
graphiql-assets:
	npm ci --prefix tools/graphiql --no-audit --no-fund
	$(PYTHON) tools/graphiql/vendor.py

# The dashboard's browser libraries (graphql-ws's UMD build, uPlot), the same way:
# copied from the npm packages pinned in tools/dashboard into
# api/static/dashboard/vendor with a sha256 manifest, and committed (docs/dashboard.md).
dashboard-assets:
	npm ci --prefix tools/dashboard --no-audit --no-fund
	$(PYTHON) tools/dashboard/vendor.py

run: install
	$(BIN)/edumatrix migrate
	$(BIN)/edumatrix seed-demo
	$(BIN)/edumatrix serve --host $(HOST) --port $(PORT)

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: dev
	$(BIN)/mypy

# tests/services.py finds PostgreSQL and Redis (env URLs, then localhost) or starts
# throwaway ones from the installed binaries, and says what is missing. The second
# pass runs every server the integration tests start with all fast paths off
# (api/accel), so the suite proves both ways give the same answers. It leaves out
# the modules no fast path is on the way of: the Kafka pipeline and its alerts,
# migrations, the group commit, the bench tools, the CLI's startup checks, TLS
# and token checks (decided before any operation runs), log formatting, and the
# GraphiQL and dashboard pages (their operations' paths are proven by the others),
# the Pusher HTTP API, webhooks and cross-process tests (their socket path, the one
# a fast path is on, is proven by test_pusher_js and test_pusher_protocol in both
# passes), the Redis Cluster fixture's own checks and the bus's cluster and shard
# tests (in process, or servers whose GraphQL paths test_cluster covers).
STOCK_PASS_SKIP := test_kafka_analytics test_kafka_resilience test_kafka_outage \
	test_kafka_poison test_kafka_lag test_apply_batch test_migrations test_group_commit \
	test_publish_cost test_exposure test_tls test_token_claims test_live_metrics test_logging \
	test_graphiql test_dashboard test_pusher_webhooks test_pusher_api test_pusher_echo \
	test_pusher_cluster test_redis_cluster_fixture test_redis_cluster_bus test_redis_shards_bus \
	test_cluster_state test_redis_cluster_servers
# Third-party JavaScript clients and graphql-http's audit suite for the integration
# tests (tests/node), reinstalled only when its lock file changes. Without npm the
# tests that need them are skipped and say so.
TEST_NODE_DEPS := tests/node/node_modules/.installed

$(TEST_NODE_DEPS): tests/node/package.json tests/node/package-lock.json
	@if $(NPM) ci --prefix tests/node --no-audit --no-fund; then touch $@; \
	else echo "npm ci failed in tests/node: the JavaScript client tests will be skipped" >&2; fi

# Test files run in TEST_WORKERS processes (pytest-xdist), each file's tests in one
# process, in order (--dist loadfile: module fixtures stay shared); TEST_WORKERS=0
# runs everything in this process. Three on a 2-core machine: most integration tests
# wait on the server processes they start (make pytest: 8m58s with 3, ~10m40s with 2).
TEST_WORKERS ?= 3
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
# The slowest tests of each pass, listed at the end: where the 10-minute budget goes.
DURATIONS := --durations=15
pytest: dev $(if $(NPM),$(TEST_NODE_DEPS))
	$(BIN)/pytest $(XDIST) $(DURATIONS) $(PYTEST_ARGS)
	EDUMATRIX_TEST_FAST_PATHS=off $(BIN)/pytest $(XDIST) $(DURATIONS) tests/integration \
	    $(foreach m,$(STOCK_PASS_SKIP),--ignore=tests/integration/$(m).py) $(PYTEST_ARGS)

test: lint typecheck pytest

# The same checks in a throwaway venv with the newest versions pyproject.toml
# allows instead of the locks: run it before `make lock`, and now and then, so
# that drift in a dependency shows up here and not in a fresh clone.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip --quiet install --upgrade pip
	$(LATEST)/bin/python -m pip --quiet install --upgrade --upgrade-strategy eager -e '.[dev]'
	touch $(LATEST)/.installed $(LATEST)/.installed-dev
	$(LATEST)/bin/python -m pip list --format=freeze > $(LATEST)/versions.txt
	$(MAKE) test VENV=$(LATEST)

clean:
	rm -rf $(VENV) $(LATEST) .edumatrix .pytest_cache .mypy_cache .ruff_cache .test-services
