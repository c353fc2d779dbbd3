#!/usr/bin/env bash
# The outside baseline: transformers' full prefill and decode on this GPU (bench/python/hf_baseline.py).
# HF_PREFILL="1024 4096 8192" times only those prompt lengths (default 1K, 4K, 8K, 16K);
# HF_BATCHES="1" only those decode batch sizes (default 1 and 32).
set -euo pipefail
read -r -a lens <<< "${HF_PREFILL:-1024 4096 8192 16384}"
read -r -a batches <<< "${HF_BATCHES:-1 32}"
PYTHONUNBUFFERED=1 python3 bench/python/hf_baseline.py --prefill "${lens[@]}" --batches "${batches[@]}" \
  --json "$OUT/hf_baseline.json"
