#!/usr/bin/env bash
# Container entrypoint (and systemd ExecStart wrapper) for every process role:
#   1. wait for the database and the broker (deploy/prestart.py, up to WAIT_TIMEOUT seconds);
#   2. only when RUN_MIGRATIONS=1: `manage.py migrate --noinput` under a PostgreSQL advisory
#      lock. Set it on ONE role (compose: web; Kubernetes: the migration Job; systemd: web),
#      never on workers, so N workers never race to migrate;
#   3. exec the role's start script (or any command) given as arguments, so it becomes PID 1
#      and receives SIGTERM directly.
set -o errexit -o nounset -o pipefail

app_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${app_root}"

if [[ $# -eq 0 ]]; then
  set -- "${app_root}/deploy/start-web.sh"
fi

if [[ "${RUN_MIGRATIONS:-0}" == "1" ]]; then
  python "${app_root}/deploy/prestart.py" --migrate
else
  python "${app_root}/deploy/prestart.py"
fi

exec "$@"
