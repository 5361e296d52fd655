# The whole set-up on a fresh machine: `make run` and `make test` (and `make bench`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/demo.toml
EXAMPLE_PLUGIN := $(shell find tests/example_plugin -name '*.py' -o -name '*.toml' | grep -v /build/)

.PHONY: run test typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --editable .
	touch $@

$(VENV)/.test-deps: pyproject.toml $(EXAMPLE_PLUGIN) | $(BIN)/python
	$(BIN)/pip install --quiet --editable '.[test]'
	# A third-party plugin, installed like any other: the tests prove it works without core changes.
	$(BIN)/pip install --quiet --force-reinstall --no-deps ./tests/example_plugin
	touch $@

$(VENV)/.bench-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --editable '.[bench]'
	touch $@

## run: serve the demo configuration on 127.0.0.1:8080 (PORT overrides) with SQLite
run: $(VENV)/.run-deps
	$(BIN)/ttp-gateway serve --config $(CONFIG)

## test: install what the tests need, type-check the core and the plugin API, run the suite
test: $(VENV)/.test-deps
	$(BIN)/python tools/typecheck.py
	$(BIN)/python -m pytest -q -n 2

## typecheck: mypy, strict on the core and the public plugin API
typecheck: $(VENV)/.test-deps
	$(BIN)/python tools/typecheck.py

## bench: run the benchmarks; figures are printed next to floors measured in the same run
bench: $(VENV)/.bench-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) *.db *.db-wal *.db-shm *.db-writers.lock .pytest_cache .hypothesis .typecheck
