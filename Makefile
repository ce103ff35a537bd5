# The two commands: `make demo` and `make test`. Each builds .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin
export AMENT_PREFIX_PATH := $(CURDIR)/$(VENV)
export PYTHONUNBUFFERED := 1
ROBOT ?= quadruped_12dof

.PHONY: demo test lint bench venv clean

venv: $(STAMP)

$(STAMP): requirements.lock setup.py setup.cfg
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/field_deploy demo --robot $(ROBOT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	for b in bench/*/run.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build install log .pytest_cache
