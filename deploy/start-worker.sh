#!/usr/bin/env bash
# Worker role: `celery -A project worker` consuming WORKER_QUEUES.
#   WORKER_QUEUES       comma-separated queues (default "default"); one deployment per queue
#   WORKER_CONCURRENCY  pool processes (default 2; nproc in a container is the host's CPU count)
#   WORKER_POOL         prefork (default) | threads | solo
#   WORKER_NAME         node name (default terminus@%h); deploy/healthcheck.py pings it
#   WORKER_GOSSIP_MINGLE=1  keep gossip and mingle (default off: no broker chatter between
#                       workers, faster start; Terminus cancels through the database, not revoke)
# SIGTERM is a warm shutdown: no new messages, running jobs finish. Give the supervisor a stop
# timeout longer than TERMINUS_MAX_TIME_LIMIT (default 3600 s) so nothing is killed mid-job.
set -o errexit -o nounset -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

args=(
  --queues "${WORKER_QUEUES:-default}"
  --concurrency "${WORKER_CONCURRENCY:-2}"
  --pool "${WORKER_POOL:-prefork}"
  --hostname "${WORKER_NAME:-terminus@%h}"
  --loglevel "${LOG_LEVEL:-INFO}"
)
if [[ "${WORKER_GOSSIP_MINGLE:-0}" != "1" ]]; then
  args+=(--without-gossip --without-mingle)
fi

exec celery -A project worker "${args[@]}"
