#!/usr/bin/env bash
# The GPU check: CUDA-marked tests and the GPU benchmark at the embedded model's and Llama-2-7B's shapes,
# within 8 minutes on one GPU, ending with one JSON summary on stdout (logs on stderr; reports in $OUT or
# ./gpu_check_out). Runs without a GPU too: the CUDA parts are skipped and the summary says "cuda": false.
#
#     bash scripts/gpu_check.sh [--out DIR] [--budget SECONDS]
#
# The interpreter: $PYTHON, else the project's .venv if it travelled, else python3 (the GPU machine's).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
else
    python="$(command -v python3 || command -v python)"
fi
exec "$python" scripts/gpu_check.py "$@"
