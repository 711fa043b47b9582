# Developer entry points. CI runs `.ci/run`, which calls `make test PY=.venv-ci/bin/python`.

PYTHON ?= python3
VENV ?= .venv
PY ?= $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help install test lint bench

help:
	@echo "make install   create $(VENV) and install warren with the dev extras"
	@echo "make test      run the test suite      (PY=$(PY), extra args: PYTEST_ARGS=...)"
	@echo "make lint      ruff check, ruff format --check, mypy"
	@echo "make bench     benchmarks (placeholder)"

install:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -e '.[dev]'

# pytest exits 5 when it collects no tests; make treats that as a failure too.
test:
	$(PY) -m pytest -q -x --durations=15 $(PYTEST_ARGS)

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench:
	@echo "usage: make bench [PY=$(PY)]"
	@echo "  No benchmarks yet: they will live in benchmarks/ and run against the"
	@echo "  local RabbitMQ (127.0.0.1:5672) and PostgreSQL (127.0.0.1:5432)."
