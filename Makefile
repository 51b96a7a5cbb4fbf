# Two commands: `make run` (the product on its embedded default) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test install test-deps bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/pso run

# System packages some tests drive for real (PgBouncer, Chromium); skipped when not root.
test-deps:
	@bash scripts/install-test-deps.sh

test: install test-deps
	# The definitions load (Dagster's `dg`, configured under [tool.dg] in pyproject.toml).
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/dg check defs
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/pso bench $(CASE) --scale $(or $(SCALE),1)

clean:
	-$(BIN)/pso services stop
	rm -rf $(VENV) .pso
