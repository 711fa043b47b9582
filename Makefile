# Developer entry points. CI runs `.ci/run`, which calls `make test PY=.venv-ci/bin/python`.

PYTHON ?= python3
VENV ?= .venv
PY ?= $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help install test lint bench

help:
	@echo "make install   create $(VENV) and install warren with the dev and bench extras"
	@echo "make test      run the test suite      (PY=$(PY), extra args: PYTEST_ARGS=...)"
	@echo "make lint      ruff check, mypy"
	@echo "make bench     throughput and latency against DBOS and Celery (pip install -e .[bench])"

install:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -e '.[dev,bench]'

# pytest exits 5 when it collects no tests; make treats that as a failure too.
test:
	$(PY) -m pytest -q -x --durations=15 $(PYTEST_ARGS)

# Formatting is by hand within ruff's line length: the code was never run through
# `ruff format` (88 files would change), so checking it here only ever failed.
lint:
	$(PY) -m ruff check .
	$(PY) -m mypy

bench:
	$(PY) -m benchmarks throughput --compare
	$(PY) -m benchmarks latency --compare
