#!/usr/bin/env bash
# Create .venv with the project and its test tools. Idempotent: a second run only checks.
# TORCH_SPEC picks the torch build (default torch==2.13.0, a CPU build on the project's machines;
# on a GPU cluster use the CUDA build your site provides, e.g. TORCH_SPEC="torch>=2.4").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=.venv/.longctx-installed
want="$(cat pyproject.toml | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch first and alone, so no other requirement can pull a different (multi-GB) build
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
  .venv/bin/python -m pip install -q -e '.[dev,eval,gguf,lora,slurm]'
  echo "$want" > "$stamp"
fi
echo "ready: $(.venv/bin/python -c 'import torch, transformers, snakemake; print("torch", torch.__version__, "transformers", transformers.__version__, "snakemake", snakemake.__version__)')"
