#!/usr/bin/env bash
# Create .venv with distilintent and everything training, export, serving and the tests need.
# torch is the CPU build of 2.13.0, from PyTorch's CPU wheel index: PyPI's torch is a multi-GB CUDA build.
# TORCH_INDEX_URL overrides the index (e.g. https://download.pytorch.org/whl/cu128 for an NVIDIA GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -m pip show torch 2>/dev/null | grep -q '^Version: 2\.13\.0'; then
  # where PyTorch's index is out of reach (e.g. behind a registry mirror with a local CPU wheel), plain pip
  .venv/bin/python -m pip install --quiet --timeout 20 --retries 1 --index-url "$TORCH_INDEX_URL" "torch==2.13.0" \
    || .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[train,openvino,server,test]"
.venv/bin/python -m pip check
