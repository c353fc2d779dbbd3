#!/usr/bin/env bash
# Issue 5's GPU benchmark: time to first token of blended RAG prompts on the Llama-3-8B shape
# (llama3.1-8b: the 128K context of the transformers config; seeded synthetic weights, CUDA
# backend, bf16): BOS + 4, 8, 16 chunks of 512 tokens + a 64-token query; full vs cacheblend
# r=0.15 vs naive, with the chunk caches (GPU_BLEND_CACHES) as KV blocks already on the GPU
# ("device": the device tier), compressed in host RAM and decoded by the GPU decoder straight
# into KV blocks ("to-block"), compressed and decoded on the CPU pool into floats then uploaded
# ("compressed"), compressed and decoded layer by layer during the assembly, one layer ahead of
# the layer computed: on the GPU, each layer's bytes uploaded and decoded by the codec's CUDA
# reader on a stream of its own straight into KV blocks while the engine's stream waits per layer
# ("pipelined"), or on the CPU pool ("pipelined-cpu", RAGKV_BLEND_GPU_LOAD=0); or as float32 in
# host RAM ("f32", not in the default list); decoding counts in the TTFT. A compressed form
# with "-locked" appended ("pipelined-locked", "to-block-locked") keeps the containers in
# page-locked host memory, as ragkvd's RAM tier does with ram-page-locked on. A form followed
# by @VAR=VALUE runs with that environment variable (and its rows' cache name says so), e.g.
# "pipelined@RAGKV_CUDA_KVBLOCK_CACHE_MB=4096". A form ending in "+deviation", "+attention" or "+lookahead"
# (before any @) ranks cacheblend's tokens by that rule (--select, docs/blend.md; attention is
# the default), e.g. "device+deviation". A form with "/R" after the ranking (before any @) runs
# cacheblend at ratio R instead of 0.15, e.g. "device+lookahead/0.10". Beside
# transformers' full prefill of the same prompt lengths in the same run. Writes
# $OUT/blend_bench.json and prints the table (bench/python/blend_side_by_side.py).
# GPU_BLEND_PROFILE=1 then runs cacheblend once more on the largest prompt from the device tier
# under RAGKV_CUDA_PROFILE=1 (per-phase GPU time of its layer calls: the full layers and the
# partial ones of the selected rows apart), printed and written to $OUT/blend_profile.txt.
set -euo pipefail
tmp=$(mktemp -d); mkdir "$tmp/runs"
trap 'rm -rf "$tmp"' EXIT
chunks=${GPU_BLEND_CHUNKS:-4,8,16}
lens=$(python3 -c "print(' '.join(str(1 + int(c) * 512 + 64) for c in '$chunks'.split(',')))")
PYTHONUNBUFFERED=1 python3 bench/python/hf_baseline.py --prefill $lens --batches --iters 3 --json "$tmp/hf.json"
for form in ${GPU_BLEND_CACHES:-device to-block compressed pipelined pipelined-cpu}; do
  cache=${form%%@*}; extra=(); envs=(); sel=""; ratio=0.15
  case $cache in */*) ratio=${cache##*/}; cache=${cache%/*} ;; esac
  case $cache in *+attention|*+deviation|*+lookahead) sel=${cache##*+}; cache=${cache%+*}; extra=(--select "$sel") ;; esac
  case ${cache%-locked} in
    compressed) ;;
    pipelined-cpu) extra+=(--pipelined); envs=(RAGKV_BLEND_GPU_LOAD=0) ;;
    *) extra+=(--${cache%-locked}) ;;
  esac
  [ "$cache" = "${cache%-locked}" ] || extra+=(--page-locked)
  [ "${form%%@*}" = "$form" ] || envs+=("${form#*@}")
  echo "== caches: $form"
  json="$tmp/runs/${form//[^A-Za-z0-9_.=-]/_}.json"
  env "${envs[@]}" "$BUILD/clients/ragkv" bench blend --shape llama3.1-8b --backend cuda --chunks "$chunks" --chunk-tokens 512 \
    --query 64 --modes full,cacheblend,naive --ratio "$ratio" --iters 3 "${extra[@]}" --json "$json"
  # a form with a ranking or a variable: its rows say so ("cache": "...+attention+VAR=VALUE")
  tag="${sel:++$sel}"; [ "$ratio" = 0.15 ] || tag="$tag/r=$ratio"; [ "${form%%@*}" = "$form" ] || tag="$tag+${form#*@}"
  [ -z "$tag" ] || python3 -c "import json,sys; p=sys.argv[1]; d=json.load(open(p)); d['cache'] += sys.argv[2]; json.dump(d, open(p, 'w'))" "$json" "$tag"
done
python3 bench/python/blend_side_by_side.py --hf "$tmp/hf.json" --runs "$tmp"/runs/*.json \
  --json "$OUT/blend_bench.json"
if [ "${GPU_BLEND_PROFILE:-0}" = 1 ]; then
  big=$(echo "$chunks" | tr , '\n' | sort -n | tail -1)
  echo "== profile: cacheblend, $big chunks from the device tier (RAGKV_CUDA_PROFILE=1; a host wait per layer)"
  RAGKV_CUDA_PROFILE=1 "$BUILD/clients/ragkv" bench blend --shape llama3.1-8b --backend cuda --chunks "$big" \
    --chunk-tokens 512 --query 64 --modes cacheblend --ratio 0.15 --iters 1 --device --json "$tmp/profile.json" 2>&1 |
    tee "$OUT/blend_profile.txt" || echo "(profiled blend failed)"
fi
