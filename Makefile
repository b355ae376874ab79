# The two set-up commands of the README: `make demo` and `make test`.
# Each creates (or reuses) the virtual environment in .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# reinstalled when the package definition or the C extensions (built by pip, watcher/contract/_*.c) change
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml watcher/contract/_turnscan.c watcher/contract/_otlpscan.c | cksum | cut -d' ' -f1)

.PHONY: demo test test-fast test-chaos lint bench bench-throughput bench-detection bench-strategies bench-scale check-config clean

$(STAMP): pyproject.toml watcher/contract/_turnscan.c watcher/contract/_otlpscan.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# the distribution was called "watcher" before it became rollout-watcher (PyPI's "watcher" is
	@# another project): an old install would keep claiming the watcher package
	@$(PY) -m pip uninstall --quiet --yes watcher 2>/dev/null || true
	$(PY) -m pip install --quiet -e '.[test,otlp,lint]'
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/watcher demo $(DEMO_ARGS)

# the manifest schema validators (npm, tests/ops/k8s-schemas) where npm is installed; without npm
# those tests are skipped and say so in the summary (-rs)
SCHEMAS := tests/ops/k8s-schemas/node_modules/.package-lock.json

$(SCHEMAS): tests/ops/k8s-schemas/package-lock.json
	@command -v npm >/dev/null && npm ci --prefix tests/ops/k8s-schemas --no-audit --no-fund --silent || true

# two worker processes (pytest-xdist), each test file on one worker (its module fixtures shared, its
# tests in order): half the wall time on two cores, where much of the suite waits on brokers,
# subprocesses and sockets. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

test: $(STAMP) $(SCHEMAS)
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# ruff (lint and format), the import contracts between packages (import-linter), types (mypy;
# [tool.mypy] in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check watcher tests bench dashboards
	$(VENV)/bin/ruff format --check watcher tests bench dashboards
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow and not e2e and not chaos" $(PYTEST_ARGS)

# the chaos suite's long profile (minutes of receiver faults, a SIGKILL every 30 s; `make test` runs
# its CI profile): figures in docs/guarantees.md
test-chaos: $(STAMP)
	CHAOS_PROFILE=long $(VENV)/bin/pytest -q -s -m chaos $(PYTEST_ARGS)

bench: bench-throughput bench-detection bench-strategies

bench-throughput: $(STAMP)
	$(PY) -m bench.throughput $(BENCH_ARGS)

bench-detection: $(STAMP)
	$(PY) -m bench.detection.run $(BENCH_ARGS)

bench-strategies: $(STAMP)
	$(PY) -m bench.strategies $(BENCH_ARGS)

bench-scale: $(STAMP)
	$(PY) -m bench.scale $(BENCH_ARGS)

check-config: $(STAMP)
	$(VENV)/bin/watcher check-config

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info watcher/contract/_turnscan*.so watcher/contract/_otlpscan*.so
