#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/test-models.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # gpo_core, services and clients ([tool.mypy] in pyproject.toml)
.venv/bin/python -m pytest "$@"
