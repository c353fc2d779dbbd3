#!/usr/bin/env bash
# Nsight Compute on one launch of a kernel inside `ragkv bench engine` on the device machine
# (after scripts/gpu-check.sh built build-gpu/): GPU_NCU_KERNEL (regex, default k_flash3),
# GPU_NCU_SKIP launches skipped first (default 40: past the warm-up prefill), GPU_NCU_COUNT
# launches profiled (1), GPU_NCU_ARGS the bench's arguments (default: an 8K-token prefill of
# the Llama-3-8B shape). Sections: speed of light, occupancy, launch, warp states, memory and
# compute workload. Clocks are left alone (--clock-control none). Writes the report to
# $OUT/ncu-NAME.txt (GPU_NCU_NAME, default the kernel regex). GPU_NCU_FULL=1 collects
# `--set full` instead (adds the warp-stall sampling per instruction: where the waits are) and
# also writes $OUT/ncu-NAME.ncu-rep for the Nsight Compute GUI.
set -uo pipefail
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
[ -n "$ncu" ] || { echo "gpu-ncu: no ncu here"; exit 0; }
source .gpu-deps/env.sh 2>/dev/null || true
k=${GPU_NCU_KERNEL:-k_flash3}
name=${GPU_NCU_NAME:-$k}
out="${OUT:-.}/ncu-$name.txt"
sections=(--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats
  --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis)
[ "${GPU_NCU_FULL:-0}" = 1 ] && sections=(--set full --import-source yes -o "${OUT:-.}/ncu-$name")
# shellcheck disable=SC2086
timeout "${GPU_NCU_TIMEOUT:-150}" "$ncu" --clock-control none -k "regex:$k" --launch-skip "${GPU_NCU_SKIP:-40}" \
  --launch-count "${GPU_NCU_COUNT:-1}" "${sections[@]}" \
  build-gpu/clients/ragkv bench engine ${GPU_NCU_ARGS:---shape llama3.1-8b --backend cuda --prefill 8192 --batch 1 --ctx 16 --iters 1} \
  > "$out" 2>&1
rc=$?
if [ "${GPU_NCU_FULL:-0}" = 1 ] && [ -f "${OUT:-.}/ncu-$name.ncu-rep" ]; then
  "$ncu" --import "${OUT:-.}/ncu-$name.ncu-rep" --page details --print-details all >>"$out" 2>&1
  "$ncu" --import "${OUT:-.}/ncu-$name.ncu-rep" --page source --csv --print-source sass >"${OUT:-.}/ncu-$name-sass.csv" 2>&1 || true
fi
echo "gpu-ncu: $k -> $out (rc $rc)"
grep -E "Duration|Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Warp Cycles Per Issued|Stall|Local" "$out" | head -60
