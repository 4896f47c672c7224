# Two entry points for a newcomer: `make run` serves, `make test` proves it works.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

# Python 3.12, the version `make test` is the reference run on (`make matrix` adds 3.13), else
# the first interpreter on PATH that is Python 3.12 or newer (Django 6.0 and 6.1 need it).
PYTHON ?= $(shell for candidate in python3.12 python3.13 python3.14 python3 python; do \
	if $$candidate -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then \
	echo $$candidate; break; fi; done)

# `make run` serves on the embedded defaults: debug mode, SQLite, the in-memory layer, and an
# ingest token made up for this run unless one is given.
RUN_INGEST_TOKEN := $(or $(EXECUTIONS_INGEST_TOKEN),$(shell head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'))

.PHONY: help install run test matrix lint format bench bench-layers bench-sockets bench-scale-out clean

help:
	@echo "make run    set up and serve on http://$(HOST):$(PORT) (SQLite, in-memory layer)"
	@echo "make test   set up and run lint, type checks and the test suite"
	@echo "make matrix the suite on the other supported Python and Django versions (nox)"
	@echo "make bench  run the benchmarks against the FastAPI and websockets baselines"
	@echo "make bench-sockets    10,000 WebSockets on one process and on two behind Redis"
	@echo "make bench-scale-out  1, 2 and 4 processes on Redis, and a 32-core prediction"

$(BIN)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.12 or newer is needed; none found on PATH." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(BIN)/.installed

run: install
	export DJANGO_DEBUG=$${DJANGO_DEBUG:-1} EXECUTIONS_INGEST_TOKEN=$(RUN_INGEST_TOKEN) && \
	$(BIN)/python manage.py migrate --noinput && \
	$(BIN)/python manage.py quickstart --base-url http://$(HOST):$(PORT) && \
	exec $(BIN)/daphne -b $(HOST) -p $(PORT) project.asgi:application

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DJANGO_DEBUG=1 $(BIN)/mypy .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The database-facing tests run again on PostgreSQL when it answers here.
POSTGRES_TEST_URL ?= postgres://postgres@127.0.0.1:5432/executions
POSTGRES_SUITES := tests/test_history.py tests/test_resume.py tests/test_connection_manager.py \
	tests/test_authentication.py tests/test_ingest_api.py tests/test_limits.py tests/test_fuzzing.py \
	tests/test_writers.py tests/test_group_commit.py tests/test_autogpt_protocol.py

test: lint
	$(BIN)/python -m pytest
	@if $(BIN)/python -c 'import psycopg, sys; psycopg.connect(sys.argv[1], dbname="postgres", connect_timeout=3).close()' \
		"$(POSTGRES_TEST_URL)" >/dev/null 2>&1; then \
		echo "Again on PostgreSQL ($(POSTGRES_TEST_URL)):"; \
		DATABASE_URL="$(POSTGRES_TEST_URL)" $(BIN)/python -m pytest $(POSTGRES_SUITES); \
	elif [ -n "$$CI" ]; then echo "PostgreSQL does not answer at $(POSTGRES_TEST_URL)." >&2; exit 1; \
	else echo "PostgreSQL does not answer at $(POSTGRES_TEST_URL): its run is skipped."; fi

# The suite on the five other combinations of Python 3.12 and 3.13 with Django 5.2, 6.0 and
# 6.1, less the tests noxfile.py leaves out (and says why); virtualenvs kept in .nox/.
matrix: install
	$(BIN)/nox -t matrix

$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev,bench,postgres]"
	@touch $@

# Everything, about 10 minutes here: the scenarios against the baselines (bench/run.py, about 4
# minutes; BENCH_ARGS go to it, e.g. BENCH_ARGS="--scenarios f"), batched ingest stored and
# delivered on PostgreSQL (POSTGRES_BENCH_URL, skipped when it does not answer), ten thousand
# sockets (about 3 minutes) and scale-out over Redis (about 2).
POSTGRES_BENCH_URL ?= $(or $(BENCH_POSTGRES_URL),postgres://postgres@127.0.0.1:5432/postgres)

bench: $(BIN)/.bench-installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	@if $(BIN)/python -c 'import psycopg, sys; psycopg.connect(sys.argv[1], connect_timeout=3).close()' \
		"$(POSTGRES_BENCH_URL)" >/dev/null 2>&1; then \
		BENCH_POSTGRES_URL="$(POSTGRES_BENCH_URL)" $(BIN)/python bench/run.py \
			--servers fastapi,daphne,uvicorn --scenarios ingest-delivered --database postgres; \
	else echo "PostgreSQL does not answer at $(POSTGRES_BENCH_URL): its ingest run is skipped."; fi
	$(BIN)/python bench/sockets.py
	$(BIN)/python bench/scale_out.py

bench-layers: install
	$(BIN)/python bench/layer_choice.py

# Each part of `make bench` alone; BENCH_ARGS=--smoke runs the same code scaled down (300
# connections, 20 events).
bench-sockets: $(BIN)/.bench-installed
	$(BIN)/python bench/sockets.py $(BENCH_ARGS)

bench-scale-out: $(BIN)/.bench-installed
	$(BIN)/python bench/scale_out.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .nox .pytest_cache .mypy_cache .ruff_cache .hypothesis
