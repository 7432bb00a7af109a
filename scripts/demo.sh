#!/usr/bin/env bash
# Set up (if needed) and run the main job end to end: the paper's analyses into outputs/paper/,
# then `gpo demo` through the real services (a private Redis, the control service, the trainer on
# Ray Train, the vLLM generator, the oracle judge): six losses x three betas, report in
# outputs/demo/. The local stack it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export GPO_STACK_DIR=${GPO_STACK_DIR:-$PWD/outputs/stack}
.venv/bin/gpo paper --out outputs/paper
trap '.venv/bin/gpo down > /dev/null 2>&1 || true' EXIT  # after a failure too; quiet when already down
.venv/bin/gpo demo --out outputs/demo --down "$@"
