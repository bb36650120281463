#!/usr/bin/env bash
# Create .venv with distilintent and everything training, export, serving and the tests need.
# torch is pinned to the CPU build on purpose: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[train,openvino,server,test]"
.venv/bin/python -m pip check
