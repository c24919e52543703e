PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test lint bench clean

# Creates or updates .venv with the project and its test tools.
install: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml tests/fixtures/tracehub-sics/pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (Python 3.11) on PATH, or run: make PY=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# an out-of-tree connector, found by its entry point (tests/test_connectors_registry.py)
	$(BIN)/pip install -q --no-deps -e tests/fixtures/tracehub-sics
	touch $@

# Starts the whole hub on embedded defaults (Temporal dev server, SQLite, ERP simulator, worker, API).
run: install
	$(BIN)/tracehub up

# The whole suite on PostgreSQL (HUB_TEST_DATABASE_URL) and on SQLite, side by side (tests/run_suites.py;
# HUB_TEST_SERIAL=1: one after the other), plus the import rules.
test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python tests/run_suites.py $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/lifecycle.py

clean:
	rm -rf $(VENV) var
