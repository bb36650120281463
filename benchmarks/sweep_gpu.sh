#!/usr/bin/env bash
# The sweep of benchmarks/sweep_grid.json on a lent GPU machine (no network there): the all-MiniLM-L6-v2
# weights travel as an fp16 copy in .device/minilm-fp16 (loaded as fp32), the data as .device/data/*.jsonl.
# Writes sweep.jsonl, int8.jsonl and log.txt into ${OUT:-runs/sweep-report}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/sweep-report}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PYTHON:-python3}
{
  nvidia-smi -L
  $PY -c "import torch, transformers, onnx, onnxruntime, tokenizers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'onnx', onnx.__version__, 'ort', onnxruntime.__version__)"
  # smoke: one epoch on the demo data, so that an incompatibility shows in seconds
  $PY -m distilintent train --data demo --output /tmp/smoke --base .device/minilm-fp16 --epochs 1 --max-length 16 \
      --dtype fp32 --no-progress --json | head -c 400 || { echo "SMOKE FAILED"; exit 1; }
  echo
  $PY benchmarks/sweep.py --grid "${GRID:-benchmarks/sweep_grid.json}" --data clinc150=.device/data/clinc150.jsonl \
      --data banking77=.device/data/banking77.jsonl --data clinc150noos=.device/data/clinc150-noos.jsonl --base .device/minilm-fp16 --out /tmp/sweep \
      --report-dir "$OUT" --parallel "${PARALLEL:-6}" --threads 2 ${INT8:+--int8-best} ${ONLY:+--only "$ONLY"}
} 2>&1 | tee "$OUT/log.txt"
