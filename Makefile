# grok2api: two commands on a fresh machine — `make run` and `make test`.
# Everything installs into .venv; nothing is needed beforehand but python3.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
FAKE_PORT ?= 8010

.PHONY: setup setup-dev run demo test lint fakegrok bench bench-full profile clean

# Runtime dependencies + database migrations.
setup: $(VENV)/.base-installed
	$(PY) manage.py migrate --noinput -v 0

$(VENV)/.base-installed: requirements/base.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -r requirements/base.txt
	touch $@

# Test tools too, and a headless Chromium for the admin page tests.
setup-dev: $(VENV)/.dev-installed
	@command -v chromium >/dev/null 2>&1 || ./scripts/install-chromium.sh

$(VENV)/.dev-installed: $(VENV)/.base-installed requirements/dev.txt
	$(PIP) install -q --disable-pip-version-check -r requirements/dev.txt
	touch $@

# The gateway on 127.0.0.1:8000 (HOST / PORT override), SQLite in data/, in-process cache.
run: setup
	$(PY) manage.py serve

# The gateway against the built-in fake Grok, with demo accounts; prints a curl and a Python snippet.
demo: setup
	DATA_DIR=data/demo GROK_BASE_URL=http://127.0.0.1:$(FAKE_PORT) GROK_ASSETS_URL=http://127.0.0.1:$(FAKE_PORT) \
		API_KEY=$${API_KEY:-demo-key} $(PY) manage.py demo

# The fake Grok upstream alone (for benchmarks or your own experiments).
fakegrok: setup
	$(PY) -m gateway.fakegrok --port $(FAKE_PORT)

# ruff, the type checker (mypy with the Django plugin; config in pyproject.toml), then the suite.
test: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check . || true
	$(VENV)/bin/mypy

$(VENV)/.bench-installed: $(VENV)/.base-installed requirements/bench.txt
	$(PIP) install -q --disable-pip-version-check -r requirements/bench.txt
	touch $@

# The gateway against the fake Grok hit directly; rewrites docs/benchmarks.md (quick: under 2 minutes).
bench: setup $(VENV)/.bench-installed
	$(PY) -m bench.run --quick

bench-full: setup $(VENV)/.bench-installed
	$(PY) -m bench.run --full

# py-spy flame graph of the gateway under load, into bench/results/.
profile: setup $(VENV)/.bench-installed
	$(PY) -m bench.profile

clean:
	rm -rf $(VENV) staticfiles data/test.sqlite3*
