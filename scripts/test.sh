#!/usr/bin/env bash
# Set up and run the whole test suite (the Rasa tests build their Python 3.10 venv on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check distilintent tests benchmarks scripts
# Known vulnerabilities of the installed dependencies (pip-audit needs PyPI's JSON API). Report only: no network
# or a new advisory prints a WARNING but does not fail the run; DISTILINTENT_AUDIT_STRICT=1 fails it on a finding.
audit=0
.venv/bin/python scripts/audit.py || audit=$?
if [ "$audit" = 1 ] && [ "${DISTILINTENT_AUDIT_STRICT:-0}" = 1 ]; then exit 1; fi
.venv/bin/python -m pytest "$@"
