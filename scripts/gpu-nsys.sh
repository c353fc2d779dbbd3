#!/usr/bin/env bash
# Nsight Systems over one `ragkv bench blend` run on the device machine (after
# scripts/gpu-check.sh built build-gpu/): where a blend from compressed containers spends its
# time — the CUDA API calls (cudaMalloc / cudaFree of the KV blocks, the readers' streams,
# events and waits), the copies and the kernels, summed. GPU_NSYS_ARGS: the bench's arguments
# (default: 16 chunks of 512 tokens of the Llama-3-8B shape, cacheblend, layer-pipelined GPU
# loading, one run after the warm-up). Writes $OUT/nsys-NAME.txt (GPU_NSYS_NAME, default
# "blend") with `nsys stats` of the CUDA API, kernel and memory-operation summaries, and
# $OUT/nsys-NAME.nsys-rep (GPU_NSYS_REP=0: not kept) for the Nsight Systems GUI.
set -uo pipefail
nsys=$(command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys 2>/dev/null | head -1)
[ -n "$nsys" ] || { echo "gpu-nsys: no nsys here"; exit 0; }
source .gpu-deps/env.sh 2>/dev/null || true
name=${GPU_NSYS_NAME:-blend}
rep="${OUT:-.}/nsys-$name"
out="${OUT:-.}/nsys-$name.txt"
# shellcheck disable=SC2086
timeout "${GPU_NSYS_TIMEOUT:-150}" "$nsys" profile --trace cuda,osrt --sample none --cpuctxsw none --force-overwrite true \
  -o "$rep" build-gpu/clients/ragkv bench blend ${GPU_NSYS_ARGS:---shape llama3.1-8b --backend cuda --chunks 16 \
  --chunk-tokens 512 --query 64 --modes cacheblend --ratio 0.15 --iters 1 --pipelined} > "$out" 2>&1
rc=$?
if [ -f "$rep.nsys-rep" ]; then
  "$nsys" stats --force-export true --report cuda_api_sum,cuda_gpu_kern_sum,cuda_gpu_mem_time_sum,osrt_sum \
    --format table "$rep.nsys-rep" >>"$out" 2>&1
  [ "${GPU_NSYS_REP:-1}" = 1 ] || rm -f "$rep.nsys-rep"
  rm -f "$rep.sqlite"
fi
echo "gpu-nsys: $name -> $out (rc $rc)"
grep -E -A14 "cuda_api_sum|CUDA API Summary" "$out" | head -40
