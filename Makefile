# Terminus: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
HOST ?= 127.0.0.1
PORT ?= 8000

# Test settings shared by both passes: short backoff and time limits so retries take seconds; the
# webhook tests' receivers listen on loopback, an internal receiver the outbound policy must be told of
# (tests/security/test_outbound.py starts its own workers without it: the production default); the
# suite's tenant users drive the diagnostics job types (tests/security/test_audience.py proves the default);
# the shared workers leave the repair pass to the tests that drive it (tests/tasks/recovery start their
# workers with the production default, TERMINUS_REPAIR_INTERVAL=15).
TEST_ENV := TERMINUS_RETRY_BACKOFF_BASE=0.2 TERMINUS_RETRY_BACKOFF_MAX=1 TERMINUS_DIAGNOSTICS_TIME_LIMIT=3 TERMINUS_ALERT_WINDOW=5 \
	TERMINUS_OUTBOUND_ALLOW=127.0.0.1/32 TERMINUS_DIAGNOSTICS_AUDIENCE=everyone TERMINUS_REPAIR_INTERVAL=0
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/terminus
TEST_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672//

.PHONY: install browser promtool run test test-services test-rabbitmq test-embedded bench lint format clean

## make run's install: the runtime dependencies and the process runner (the `run` extra), nothing else.
$(RUN_STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[run]'
	touch $(RUN_STAMP)

## make install (make test, CI): the tools and the tests too (the `dev` extra), the client, chromium, promtool.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet -e clients/python  # the Python client (tests/clients drive it against a live server)
	touch $(STAMP)

install: $(STAMP) browser promtool

## Debian's chromium for the browser tests (tests/results/web drive it with Playwright; nothing is downloaded
## through a test tool). A no-op when present; where apt cannot run, the browser tests skip, saying why.
browser:
	@if [ -x /usr/bin/chromium ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "note: no apt-get: install chromium at /usr/bin/chromium or the browser tests skip"; exit 0; fi; \
	SUDO=; if [ "$$(id -u)" != 0 ]; then SUDO="sudo -n"; fi; \
	echo "installing chromium (apt-get) for the browser tests"; \
	{ $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "note: could not install chromium with apt-get: the browser tests will skip"

## Debian's promtool (package prometheus) for tests/deploy: `promtool check rules` and `promtool test rules` on
## deploy/prometheus, and the Grafana dashboard's queries parsed as PromQL. A no-op when present; where apt
## cannot run, those tests skip, saying why. (Installing the package does not start a Prometheus server in a
## container; on a systemd host, `systemctl disable --now prometheus` if you don't want one.)
promtool:
	@if command -v promtool >/dev/null; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "note: no apt-get: install promtool or the promtool tests skip"; exit 0; fi; \
	SUDO=; if [ "$$(id -u)" != 0 ]; then SUDO="sudo -n"; fi; \
	echo "installing prometheus (apt-get) for promtool"; \
	{ $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
		|| echo "note: could not install prometheus with apt-get: the promtool tests will skip"

## make run: web + worker + beat on the embedded default (SQLite + filesystem broker under var/),
## or on whatever DATABASE_URL / CELERY_BROKER_URL point at.
run: $(RUN_STAMP)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py bootstrap_dev --host $(HOST) --port $(PORT)
	PATH="$(CURDIR)/$(BIN):$$PATH" TERMINUS_HOST=$(HOST) TERMINUS_PORT=$(PORT) $(BIN)/python -m project.devrun -f Procfile start

## make test: lint, then the whole suite on Redis + PostgreSQL, the broker-specific tests on
## RabbitMQ + PostgreSQL, and the whole suite again on the embedded default.
test: install lint test-services test-rabbitmq test-embedded

test-services: install
	env $(TEST_ENV) CELERY_BROKER_URL=$(TEST_BROKER_URL) DATABASE_URL=$(TEST_DATABASE_URL) \
		TERMINUS_VAR_DIR=$(CURDIR)/var/test-services $(BIN)/pytest $(PYTEST_ARGS)

test-rabbitmq: install
	env $(TEST_ENV) CELERY_BROKER_URL=$(TEST_AMQP_URL) DATABASE_URL=$(TEST_DATABASE_URL) \
		TERMINUS_VAR_DIR=$(CURDIR)/var/test-rabbitmq $(BIN)/pytest -m rabbitmq $(PYTEST_ARGS)

test-embedded: install
	env -u CELERY_BROKER_URL -u DATABASE_URL $(TEST_ENV) \
		TERMINUS_VAR_DIR=$(CURDIR)/var/test-embedded $(BIN)/pytest $(PYTEST_ARGS)

## make chaos: the fault-injection scenarios with bigger batches (CI runs them with CHAOS_JOBS=120), and the
## recovery scenarios at production defaults (kill9-worker-restart, kill9-worker-no-restart, ...), each
## printing its figure line.
CHAOS_JOBS ?= 500
chaos: install
	env $(TEST_ENV) CHAOS_JOBS=$(CHAOS_JOBS) CELERY_BROKER_URL=$(TEST_BROKER_URL) DATABASE_URL=$(TEST_DATABASE_URL) \
		TERMINUS_VAR_DIR=$(CURDIR)/var/test-chaos $(BIN)/pytest tests/reliability tests/tasks/recovery -s $(PYTEST_ARGS)

## make bench: Terminus against bare Celery and Celery + django-celery-results on Redis + PostgreSQL
## (its own workers, web server, database terminus_bench and Redis database 10); writes bench/RESULTS.md.
## BENCH_ARGS="--quick" for a one-minute smoke, or e.g. "--only throughput,latency --jobs 2000".
bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## make lint: style, the floors (import-linter's contract in pyproject.toml; no file cycles, no import
## hidden in a function: tests/architecture), docs that match the code (tests/docs), migrations.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	env -u CELERY_BROKER_URL -u DATABASE_URL TERMINUS_VAR_DIR=$(CURDIR)/var/test-lint \
		$(BIN)/pytest -q -p no:cacheprovider tests/architecture tests/docs
	$(BIN)/python manage.py makemigrations --check --dry-run

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf var/test-services var/test-embedded var/test-lint test-artifacts .pytest_cache
