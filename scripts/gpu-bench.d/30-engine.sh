#!/usr/bin/env bash
# ragkv's engine on this GPU (CUDA backend) on the Llama-3-8B shape, seeded synthetic weights:
# full prefill and decode steps, to set beside transformers' numbers (10-hf-baseline.sh). Runs
# once per math mode (RAGKV_CUDA_MATH=fp32, then bf16) and writes one JSON file,
# {"runs": [{"math": "fp32", ...}, {"math": "bf16", ...}]} (the device tool brings back few files).
set -euo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for math in fp32 bf16; do
  echo "== RAGKV_CUDA_MATH=$math"
  RAGKV_CUDA_MATH=$math "$BUILD/clients/ragkv" bench engine --shape llama3-8b --backend cuda \
    --prefill 1024,4096,8192 --ctx 4096 --batch 1,4 --iters 3 --json "$tmp/$math.json"
done
python3 - "$tmp" "$OUT/engine_bench.json" <<'PY'
import json, sys
runs = []
for math in ("fp32", "bf16"):
    with open(f"{sys.argv[1]}/{math}.json") as f:
        r = json.load(f)
    r["math"] = math
    runs.append(r)
with open(sys.argv[2], "w") as f:
    json.dump({"runs": runs}, f, indent=1)
PY
