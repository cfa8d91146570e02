# The two commands of the README: `make demo` and `make test`. Both set up first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/laion-spark demo --workdir $(or $(WORKDIR),demo-workdir)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check laion_spark jobs tests benchmarks
