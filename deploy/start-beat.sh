#!/usr/bin/env bash
# Beat role: `celery -A project beat`. Run EXACTLY ONE beat per deployment, or every periodic
# task is sent once per beat (compose: one service, no scale; k8s: replicas 1 + Recreate).
#   BEAT_SCHEDULE_DIR  writable directory for the schedule file (default $TERMINUS_VAR_DIR/beat);
#                      keep it on a volume so last-run times survive restarts
#   BEAT_NAME          node name answering `inspect ping` (default celerybeat@%h)
set -o errexit -o nounset -o pipefail

app_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${app_root}"

schedule_dir="${BEAT_SCHEDULE_DIR:-${TERMINUS_VAR_DIR:-${app_root}/var}/beat}"
mkdir -p "${schedule_dir}"

exec celery -A project beat \
  --schedule "${schedule_dir}/celerybeat-schedule" \
  --enable-remote-control \
  --hostname "${BEAT_NAME:-celerybeat@%h}" \
  --loglevel "${LOG_LEVEL:-INFO}"
