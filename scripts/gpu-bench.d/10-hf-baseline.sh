#!/usr/bin/env bash
# The outside baseline: transformers' full prefill and decode on this GPU (bench/python/hf_baseline.py).
set -euo pipefail
PYTHONUNBUFFERED=1 python3 bench/python/hf_baseline.py --json "$OUT/hf_baseline.json"
