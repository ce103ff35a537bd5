# The two commands: `make demo` and `make test`. Each builds .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin
export AMENT_PREFIX_PATH := $(CURDIR)/$(VENV)
export PYTHONUNBUFFERED := 1
ROBOT ?= quadruped_12dof

.PHONY: demo test lint bench soak venv clean check-lerobot

venv: $(STAMP)

$(STAMP): requirements.lock setup.py setup.cfg
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/field_deploy demo --robot $(ROBOT) $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	for b in bench/*/run.py; do [ $$b = bench/soak/run.py ] || $(BIN)/python $$b || exit 1; done

# A shift unattended (issue 19): `make soak` (8 hours), `make soak HOURS=1 ROBOT=humanoid_29dof`
HOURS ?= 8
soak: $(STAMP)
	$(BIN)/python bench/soak/run.py --hours $(HOURS) --robot $(ROBOT) --out soak-$(ROBOT)-$(HOURS)h

# Opt-in (not in .ci/run): LeRobot itself loads an export of the demo's bag (or BAG=...) and
# lerobot-doctor checks it. Builds a separate venv (LeRobot needs Python >= 3.12 and torch: GBs).
LEROBOT_PYTHON ?= $(lastword $(sort $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python)))
LEROBOT_VENV ?= .venv-lerobot
LEROBOT_SPEC ?= lerobot[dataset]
LEROBOT_DIR ?= bags/lerobot-check
check-lerobot: $(STAMP)
	@test -n "$(LEROBOT_PYTHON)" || { echo 'check-lerobot: no Python 3.12 (~/.pyenv/versions/3.12*); set LEROBOT_PYTHON'; exit 1; }
	@test -x $(LEROBOT_VENV)/bin/python || $(LEROBOT_PYTHON) -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check '$(LEROBOT_SPEC)' lerobot-doctor
	set -e; bag='$(BAG)'; if [ -z "$$bag" ]; then rm -rf $(LEROBOT_DIR)/demo; \
	  $(BIN)/field_deploy demo --robot $(ROBOT) --out $(LEROBOT_DIR)/demo \
	    || echo 'check-lerobot: the demo lost messages (a busy host); its episodes are exported marked lost'; \
	  bag=$(LEROBOT_DIR)/demo/bag; fi; \
	rm -rf $(LEROBOT_DIR)/dataset; \
	$(BIN)/field_deploy bag export $$bag -o $(LEROBOT_DIR)/dataset --format lerobot --include-failed; \
	$(LEROBOT_VENV)/bin/python bench/export/lerobot_load.py $(LEROBOT_DIR)/dataset; \
	$(LEROBOT_VENV)/bin/lerobot-doctor check $(LEROBOT_DIR)/dataset

clean:
	rm -rf $(VENV) build install log .pytest_cache
