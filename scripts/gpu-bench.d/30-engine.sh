#!/usr/bin/env bash
# ragkv's engine on this GPU (CUDA backend, bf16) on the Llama-3-8B shape (llama3.1-8b: the 128K
# context the transformers config has, so 16K prompts fit; the compute is llama3-8b's), seeded synthetic
# weights: full prefill at 1K/4K/8K/16K tokens and one decode step at 8K context for batch 1
# and 32 — the shapes bench/python/hf_baseline.py times through transformers (10-hf-baseline.sh
# runs first). Prefill and decode run as two processes (a batch of 32 sequences of 8K context
# needs the memory the prefill scratch held). GPU_ENGINE_FP32=1 adds the fp32 reference mode at
# 1K/4K. Writes $OUT/engine_bench.json: {"runs": [...], "side_by_side": [...]}, and prints the
# side-by-side table with ratios (bench/python/side_by_side.py). GPU_ENGINE_SPLITS="32 64 128"
# also times the decode step with those keys per split of the decode attention kernel
# (RAGKV_ATTN_SPLIT; by default the split shrinks from 256 until the grid fills the card),
# printed only: a sweep for choosing the default. GPU_ENGINE_SCALAR=1 also times the decode step
# with the first decode kernel (RAGKV_ATTN_DECODE=scalar, 256 keys per split) for comparison.
# GPU_ENGINE_NOGRAPH=1 also times it without decode CUDA graphs (RAGKV_CUDA_GRAPH=0).
# GPU_ENGINE_FLASH_ALSO="1 2" also times the prefills with those earlier flash-attention kernels
# (RAGKV_ATTN_FLASH=V; the third is the default), printed and written to
# $OUT/engine_prefill_flashV.json (GPU_ENGINE_FLASH1=1 is GPU_ENGINE_FLASH_ALSO=1).
# GPU_ENGINE_NOGEMV=1 also times the decode step with cuBLAS for its few-row products
# (RAGKV_CUDA_GEMV=0) instead of the backend's k_gemv. GPU_ENGINE_PROFILE=1 also runs one prefill at the largest
# GPU_ENGINE_PREFILL length and the batch-1 decode step without graphs under
# RAGKV_CUDA_PROFILE=1 (the backend's per-phase GPU times: products with their TFLOP/s,
# attention, the small kernels), printed and written to $OUT/engine_profile.txt.
# GPU_ENGINE_ENV_ALSO="A=1 B=2,C=3" also times the prefills and the decode steps once per
# word with those variables set (commas separate several), printed and written to
# $OUT/engine_env_<word>.json: an A/B of the backend's knobs (RAGKV_ATTN_DECODE=vec,
# RAGKV_ATTN_LAZY=0, ...) on the same machine in the same call.
set -euo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() { # math name args...
  local math=$1 name=$2; shift 2
  echo "== RAGKV_CUDA_MATH=$math $*"
  RAGKV_CUDA_MATH=$math "$BUILD/clients/ragkv" bench engine --shape "${GPU_ENGINE_SHAPE:-llama3.1-8b}" --backend cuda "$@" \
    --json "$tmp/$name.json"
}
run bf16 bf16-prefill --prefill "${GPU_ENGINE_PREFILL:-1024,4096,8192,16384}" --batch 1 --ctx 16 --iters 3
run bf16 bf16-decode --prefill 16 --ctx "${GPU_ENGINE_CTX:-8192}" --batch "${GPU_ENGINE_BATCH:-1,32}" --iters 5
for sp in ${GPU_ENGINE_SPLITS:-}; do
  echo "== decode attention: $sp keys per split"
  RAGKV_ATTN_SPLIT=$sp RAGKV_CUDA_MATH=bf16 "$BUILD/clients/ragkv" bench engine --shape "${GPU_ENGINE_SHAPE:-llama3.1-8b}" \
    --backend cuda --prefill 16 --ctx "${GPU_ENGINE_CTX:-8192}" --batch "${GPU_ENGINE_BATCH:-1,32}" --iters 5 \
    --json "$OUT/engine_decode_split$sp.json" || echo "(split $sp failed)"
done
if [ "${GPU_ENGINE_SCALAR:-0}" = 1 ]; then
  echo "== decode attention: the scalar kernel, 256 keys per split"
  RAGKV_ATTN_DECODE=scalar RAGKV_ATTN_SPLIT=256 RAGKV_CUDA_MATH=bf16 "$BUILD/clients/ragkv" bench engine \
    --shape "${GPU_ENGINE_SHAPE:-llama3.1-8b}" --backend cuda --prefill 16 --ctx "${GPU_ENGINE_CTX:-8192}" \
    --batch "${GPU_ENGINE_BATCH:-1,32}" --iters 5 --json "$OUT/engine_decode_scalar.json" || echo "(scalar failed)"
fi
if [ "${GPU_ENGINE_NOGRAPH:-0}" = 1 ]; then
  echo "== decode without CUDA graphs"
  RAGKV_CUDA_GRAPH=0 RAGKV_CUDA_MATH=bf16 "$BUILD/clients/ragkv" bench engine --shape "${GPU_ENGINE_SHAPE:-llama3.1-8b}" \
    --backend cuda --prefill 16 --ctx "${GPU_ENGINE_CTX:-8192}" --batch "${GPU_ENGINE_BATCH:-1,32}" --iters 5 \
    --json "$OUT/engine_decode_nograph.json" || echo "(no-graph run failed)"
fi
for word in ${GPU_ENGINE_ENV_ALSO:-}; do
  echo "== prefill and decode with $word"
  tag=$(echo "$word" | tr -c 'A-Za-z0-9_\n' _)
  (
    IFS=, read -r -a assigns <<< "$word"
    for kv in "${assigns[@]}"; do export "${kv?}"; done
    RAGKV_CUDA_MATH=bf16 "$BUILD/clients/ragkv" bench engine --shape "${GPU_ENGINE_SHAPE:-llama3.1-8b}" \
      --backend cuda --prefill "${GPU_ENGINE_PREFILL:-1024,4096,8192,16384}" --batch 1 --ctx 16 --iters 3 \
      --json "$OUT/engine_env_${tag}_prefill.json"
    RAGKV_CUDA_MATH=bf16 "$BUILD/clients/ragkv" bench engine --shape "${GPU_ENGINE_SHAPE:-llama3.1-8b}" \
      --backend cuda --prefill 16 --ctx "${GPU_ENGINE_CTX:-8192}" --batch "${GPU_ENGINE_BATCH:-1,32}" --iters 5 \
      --json "$OUT/engine_env_${tag}_decode.json"
  ) || echo "($word run failed)"
done
also="${GPU_ENGINE_FLASH_ALSO:-}"
[ "${GPU_ENGINE_FLASH1:-0}" = 1 ] && also="1 $also"
for v in $also; do
  echo "== prefill with flash-attention kernel $v (RAGKV_ATTN_FLASH=$v)"
  RAGKV_ATTN_FLASH=$v RAGKV_CUDA_MATH=bf16 "$BUILD/clients/ragkv" bench engine --shape "${GPU_ENGINE_SHAPE:-llama3.1-8b}" \
    --backend cuda --prefill "${GPU_ENGINE_PREFILL:-1024,4096,8192,16384}" --batch 1 --ctx 16 --iters 3 \
    --json "$OUT/engine_prefill_flash$v.json" || echo "(flash $v run failed)"
done
if [ "${GPU_ENGINE_NOGEMV:-0}" = 1 ]; then
  echo "== decode with cuBLAS for the few-row products (RAGKV_CUDA_GEMV=0)"
  RAGKV_CUDA_GEMV=0 RAGKV_CUDA_MATH=bf16 "$BUILD/clients/ragkv" bench engine --shape "${GPU_ENGINE_SHAPE:-llama3.1-8b}" \
    --backend cuda --prefill 16 --ctx "${GPU_ENGINE_CTX:-8192}" --batch "${GPU_ENGINE_BATCH:-1,32}" --iters 5 \
    --json "$OUT/engine_decode_nogemv.json" || echo "(cuBLAS decode run failed)"
fi
if [ "${GPU_ENGINE_PROFILE:-0}" = 1 ]; then
  plen=$(echo "${GPU_ENGINE_PREFILL:-1024,4096,8192,16384}" | tr , '\n' | sort -n | tail -1)
  {
    echo "== profile: prefill $plen tokens (RAGKV_CUDA_PROFILE=1; a host wait per layer)"
    RAGKV_CUDA_PROFILE=1 RAGKV_CUDA_MATH=bf16 "$BUILD/clients/ragkv" bench engine --shape "${GPU_ENGINE_SHAPE:-llama3.1-8b}" \
      --backend cuda --prefill "$plen" --batch 1 --ctx 16 --iters 1 --json "$tmp/profile-prefill.json" 2>&1 || echo "(profiled prefill failed)"
    echo "== profile: decode batch 1 at ${GPU_ENGINE_CTX:-8192} context, no graphs"
    RAGKV_CUDA_PROFILE=1 RAGKV_CUDA_GRAPH=0 RAGKV_CUDA_MATH=bf16 "$BUILD/clients/ragkv" bench engine \
      --shape "${GPU_ENGINE_SHAPE:-llama3.1-8b}" --backend cuda --prefill 16 --ctx "${GPU_ENGINE_CTX:-8192}" --batch 1 \
      --iters 5 --json "$tmp/profile-decode.json" 2>&1 || echo "(profiled decode failed)"
  } | tee "$OUT/engine_profile.txt"
  rm -f "$tmp/profile-prefill.json" "$tmp/profile-decode.json"
fi
if [ "${GPU_ENGINE_FP32:-0}" = 1 ]; then
  run fp32 fp32 --prefill 1024,4096 --ctx 4096 --batch 1 --iters 3
fi
python3 bench/python/side_by_side.py --engine-dir "$tmp" --hf "$OUT/hf_baseline.json" --json "$OUT/engine_bench.json"
