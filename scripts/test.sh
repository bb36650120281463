#!/usr/bin/env bash
# Set up and run the whole test suite (the Rasa tests build their Python 3.10 venv on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check distilintent tests benchmarks
.venv/bin/python -m pytest "$@"
