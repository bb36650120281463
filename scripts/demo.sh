#!/usr/bin/env bash
# The main job on the bundled demo assistant: set up, train, export (ONNX + OpenVINO,
# FP32 + INT8), evaluate on held-out sentences, detect.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/distilintent train --data demo --output models/demo --epochs 20 --export
.venv/bin/distilintent evaluate --model models/demo --data demo-test
.venv/bin/distilintent detect --model models/demo \
  "hey there" "will it snow in Oslo tomorrow?" "get me a table for four at 8" "wake me up at 6:30" \
  "are you a real person?" "what is the meaning of life" "what's the capital of peru"
