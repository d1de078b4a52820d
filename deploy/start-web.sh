#!/usr/bin/env bash
# Web role: gunicorn serving project.wsgi on 0.0.0.0:${PORT:-8000}; access and error log to stdout.
#   GUNICORN_WORKERS (3)  GUNICORN_THREADS (2)  GUNICORN_TIMEOUT (30)  GUNICORN_GRACEFUL_TIMEOUT (25)
# Set worker counts explicitly: nproc in a container reports the host's CPUs, not the limit.
# On SIGTERM gunicorn stops accepting, lets requests finish for the graceful timeout, then exits;
# keep the supervisor's stop timeout above it (compose stop_grace_period, k8s
# terminationGracePeriodSeconds, systemd TimeoutStopSec). More flags: GUNICORN_CMD_ARGS.
# Logs: with LOG_FORMAT=json (production's default) gunicorn's error and access lines are JSON too,
# each access line with the request's X-Correlation-ID (project/logging.py: GunicornLogger).
# HTTP metrics: each gunicorn worker counts requests in files under PROMETHEUS_MULTIPROC_DIR, and
# /metrics adds them up, whichever worker answers the scrape (results/ops/http_metrics.py).
set -o errexit -o nounset -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/terminus-metrics}"

exec gunicorn project.wsgi:application \
  --bind "0.0.0.0:${PORT:-8000}" \
  --workers "${GUNICORN_WORKERS:-3}" \
  --threads "${GUNICORN_THREADS:-2}" \
  --timeout "${GUNICORN_TIMEOUT:-30}" \
  --graceful-timeout "${GUNICORN_GRACEFUL_TIMEOUT:-25}" \
  --keep-alive 5 \
  --max-requests "${GUNICORN_MAX_REQUESTS:-1000}" \
  --max-requests-jitter 100 \
  --worker-tmp-dir "${GUNICORN_WORKER_TMP_DIR:-/dev/shm}" \
  --no-control-socket \
  --logger-class project.logging.GunicornLogger \
  --access-logfile - \
  --error-logfile -
