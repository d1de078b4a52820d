# Terminus: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

# Test settings shared by both passes: short backoff and time limits so retries take seconds.
TEST_ENV := TERMINUS_RETRY_BACKOFF_BASE=0.2 TERMINUS_RETRY_BACKOFF_MAX=1 TERMINUS_DIAGNOSTICS_TIME_LIMIT=3 TERMINUS_ALERT_WINDOW=5
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/terminus
TEST_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672//

.PHONY: install run test test-services test-rabbitmq test-embedded lint format clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make run: web + worker + beat on the embedded default (SQLite + filesystem broker under var/),
## or on whatever DATABASE_URL / CELERY_BROKER_URL point at.
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py bootstrap_dev --host $(HOST) --port $(PORT)
	PATH="$(CURDIR)/$(BIN):$$PATH" TERMINUS_HOST=$(HOST) TERMINUS_PORT=$(PORT) $(BIN)/honcho -f Procfile start

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

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python manage.py makemigrations --check --dry-run

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf var/test-services var/test-embedded test-artifacts .pytest_cache
