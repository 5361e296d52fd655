# The whole set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/demo.toml

.PHONY: run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --editable .
	touch $@

$(VENV)/.test-deps: pyproject.toml tests/example_plugin/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --editable '.[test]'
	# A third-party plugin, installed like any other: the tests prove it works without core changes.
	$(BIN)/pip install --quiet ./tests/example_plugin
	touch $@

$(VENV)/.bench-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --editable '.[bench]'
	touch $@

## run: serve the demo configuration on 127.0.0.1:8080 (PORT overrides) with SQLite
run: $(VENV)/.run-deps
	$(BIN)/ttp-gateway serve --config $(CONFIG)

## test: install what the tests need and run them (PostgreSQL tests need a local server)
test: $(VENV)/.test-deps
	$(BIN)/python -m pytest -q -n 2

## bench: run the benchmarks; figures are printed next to floors measured in the same run
bench: $(VENV)/.bench-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) *.db *.db-wal *.db-shm .pytest_cache .hypothesis
