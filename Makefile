# wedsync-dr — two commands from a fresh clone:
#   make run    set up, start the local stack, load demo data, run the backups
#   make test   set up and run the test suite (it starts and stops its own stack)
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Some shells set PYTHONDONTWRITEBYTECODE: every Python process would then compile Airflow from source
# (5-10 s each: every task, every component, every test subprocess). Let the venv cache its bytecode.
unexport PYTHONDONTWRITEBYTECODE

PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
BIN     := $(VENV)/bin
UV_VERSION := 0.13.9
STACK   := .local/stack
WEDDINGS ?= 300
STAMP   := $(VENV)/.installed

.PHONY: help install browser redis run test down airflow lint lock clean

help:
	@echo "make run     set up everything and run the backups on the local stack"
	@echo "make test    set up and run the tests"
	@echo "make down    stop every process the local stack started"
	@echo "make airflow start the Airflow UI/API on http://127.0.0.1:8080 against the local stack"
	@echo "make lint    ruff (incl. AIR3 rules)"
	@echo "make lock    recompile requirements.lock"

# The venv is rebuilt when the lock changes. uv installs the 372 pinned packages in seconds;
# if uv cannot be had, pip installs the same lock (about 2 minutes).
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION) 2>/dev/null; then \
	    $(BIN)/uv pip sync -q --python $(BIN)/python requirements.lock && \
	    $(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e . ; \
	else \
	    echo "uv unavailable: installing with pip" && \
	    $(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock && \
	    $(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e . ; \
	fi
	@touch $@

node_modules/.package-lock.json: package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

install: $(STAMP) node_modules/.package-lock.json

run: install
	$(BIN)/wedsync-dev stack up
	$(BIN)/wedsync-dev demo-data --weddings $(WEDDINGS) --if-missing
	$(BIN)/wedsync-dev backup run
	$(BIN)/wedsync-dr restore --class critical_weddings --wedding-id soonest

# Two sessions, each with its own stack: in-process dag.test() runs first; then the tests that drive a
# real api-server + scheduler + dag-processor + triggerer (metadata in the stack's PostgreSQL).
# The screenshot tests (status page, trigger forms: docs/*.png) render in headless Chromium. Installed from
# Debian's packages when missing and this is root on an apt system (about 40 s, once); elsewhere they skip and
# say why.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	 { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	   { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	     { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; } && \
	   echo "installed Debian's chromium for the screenshot tests"; } || \
	 echo "no chromium: the screenshot tests will skip"

# The multi-worker test runs Celery on a Redis broker the stack starts itself (on a free loopback port):
# Debian's redis-server when missing and this is root on an apt system (seconds, once); elsewhere it skips.
redis:
	@command -v redis-server >/dev/null || \
	 { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	   { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null 2>&1 || \
	     { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null 2>&1; }; } && \
	   echo "installed Debian's redis-server for the multi-worker test"; } || \
	 echo "no redis-server: the multi-worker (CeleryExecutor) test will skip"

test: install browser redis
	$(BIN)/python -m pytest -m "not airflow_api" --durations=15 $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m airflow_api --durations=15 $(PYTEST_ARGS)

down:
	@if [ -x $(BIN)/wedsync-dev ]; then $(BIN)/wedsync-dev stack down; else echo "nothing to stop"; fi

airflow: run
	$(BIN)/wedsync-dev airflow up

lint: install
	$(BIN)/ruff check .

lock: install
	$(BIN)/uv pip compile -q --upgrade --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	    requirements-dev.txt -o requirements.lock --custom-compile-command "make lock"

clean: down
	rm -rf .local $(VENV) node_modules
