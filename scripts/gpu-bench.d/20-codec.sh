#!/usr/bin/env bash
# The codec on the GPU: CUDA decode throughput of an 8K-token Llama-3-8B-shaped KV, checked
# bit-identical to the CPU decoder (ragkv bench codec --cuda).
set -euo pipefail
"$BUILD/clients/ragkv" bench codec --cuda --cuda-tokens 8192 --threads "$(nproc)" \
  --json "$OUT/codec_bench.json"
