# Two commands do all set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test lint typecheck install dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(VENV)/.installed $(VENV)/.installed-dev $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

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
# throwaway ones from the installed binaries, and says what is missing.
test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .edumatrix .pytest_cache .mypy_cache .ruff_cache .test-services
