#!/usr/bin/env bash
# The compose smoke test, from nothing: a Docker engine (scripts/docker-engine.sh starts one if
# none answers), the images built without a registry (deploy/docker/build-offline.sh), then the
# stack run through scripts/compose_smoke.py: a job, kills and a Redis restart mid-job, down -v.
#
#   scripts/compose-smoke.sh            # SKIP_BUILD=1: use the images already built
#
# Prints the build and run figures; exits non-zero when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

scripts/docker-engine.sh
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    deploy/docker/build-offline.sh
fi
python=".venv/bin/python"
[[ -x "$python" ]] || { echo "run ./scripts/setup.sh first (the SDK and docker-compose come from it)" >&2; exit 1; }
PATH="$PWD/.venv/bin:$PATH" "$python" scripts/compose_smoke.py "$@"
echo "compose smoke test passed in $(( $(date +%s) - started )) s"
