#!/usr/bin/env bash
# ragkv's engine on this GPU (CUDA backend) on the Llama-3-8B shape, seeded synthetic weights:
# full prefill and decode steps, to set beside transformers' numbers (10-hf-baseline.sh).
set -euo pipefail
"$BUILD/clients/ragkv" bench engine --shape llama3-8b --backend cuda --prefill 1024,4096,8192 --ctx 4096 \
  --batch 1,4 --iters 3 --json "$OUT/engine_bench.json"
