# meshlens: `make demo` runs the main job, `make test` passes the tests. Each sets up what it needs.
SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)

.DEFAULT_GOAL := help

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP) tools ## Create .venv with meshlens and everything the tests use

tools: ## Install Prometheus/promtool and wrk from the system's packages when missing
	@command -v promtool >/dev/null && command -v wrk >/dev/null || { \
	  echo "installing prometheus and wrk (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus wrk >/dev/null; }

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check instrumentation tests benchmarks demo

docs: $(STAMP) ## Regenerate the generated docs (settings and metrics tables)
	$(PYTHON) -m meshlens.docs --write

test: setup ## Lint, check generated docs, run every test (unit and over the wire)
	$(VENV)/bin/ruff check instrumentation tests benchmarks demo
	$(PYTHON) -m meshlens.docs --check
	$(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: setup ## Overhead benchmark: uninstrumented vs meshlens vs opentelemetry-instrument (takes minutes)
	$(PYTHON) benchmarks/overhead/run.py $(BENCH_ARGS)

demo: setup ## A sample service with the import line: requests, its trace and its metrics
	$(PYTHON) demo/run.py

.PHONY: help setup tools lint docs test bench demo
