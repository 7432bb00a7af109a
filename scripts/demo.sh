#!/usr/bin/env bash
# Set up (if needed) and run the main job: the paper's analyses reproduced into outputs/paper/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/gpo paper --out outputs/paper "$@"
