#!/usr/bin/env bash
# gpu-check.sh — what a run on the GPU machine executes (through the device tool; see
# docs/development.md): build with CUDA for sm_90, run the `gpu`-labelled tests (then the rest
# of the suite), run the GPU benchmarks that exist, and copy logs and results to $OUT
# (default ./gpu-out). The device tool brings back at most 8 files: at the end everything but
# gpu-check.log and bench.log is packed into results.tar.gz (GPU_CHECK_PACK=0: leave the files
# as they are). Exit status: non-zero when a build or a gpu test failed.
#
#   GPU_CHECK_FULL=0   skip the non-gpu tests (default 1: run everything)
#   GPU_CHECK_BENCH=0  skip benchmarks
#   GPU_CHECK_SANITIZER=1  also run each gpu test binary under compute-sanitizer memcheck
#                      (appends to ctest-gpu.log; slow: allow ~10 minutes)
#   GPU_CHECK_SANITIZER_TOOLS="memcheck racecheck"  the tools to run (racecheck is slower still)
#   GPU_CHECK_BENCHES="35 10 30"  only the benchmarks whose file names start so, in that order
#                      (default: all, in file-name order)
#   GPU_CHECK_DEADLINE_S=540  stop starting sanitizer runs and benchmarks this many seconds
#                      after the script started, and stop a running one at it (timeout), so
#                      that the results are still packed inside a device call's limit
#                      (default: none)
#   GPU_CHECK_SANITIZER_TIMEOUT=300  seconds one test binary may run under one sanitizer tool
#                      (on 2026-12-07 memcheck of the conformance binary, 98 tests, took most
#                      of 330 s: give each binary its own call or a deadline)
#   GPU_CHECK_TESTS=REGEX  only the gpu tests matching REGEX (ctest -R; the sanitizer runs too)
#   GPU_CHECK_TEST_TIMEOUT=300  seconds a gpu test binary may run before ctest stops it (a hung
#                      kernel must not take the whole device call)
#   GPU_CHECK_SANITIZER_ARGS="--filter */causal_rule_by_position"  extra arguments for each test
#                      binary under the sanitizer (a Criterion filter: racecheck of every kernel
#                      once, on small shapes, instead of the whole suite)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
log() { echo "gpu-check: $*" | tee -a "$out/gpu-check.log"; }

# the device image lacks RocksDB, hiredis, Criterion, libsodium, Redis: gpu-deps.sh carries them
if [ -f .gpu-deps/env.sh ]; then
  # shellcheck disable=SC1091
  source .gpu-deps/env.sh
  # the carried .pc files say prefix=/usr: let pkg-config prefix their -I/-L with the folder
  export PKG_CONFIG_SYSROOT_DIR="$root/.gpu-deps/root"
  export PKG_CONFIG="$root/.gpu-deps/root/usr/bin/pkg-config"
  log "using .gpu-deps (models: ${RAGKV_TEST_MODELS:-none})"
fi
log "card: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
log "date: $(date -u +%Y-%m-%dT%H:%MZ)"

build=build-gpu
jobs=$(nproc)
if ! cmake -S . -B "$build" -DRAGKV_CUDA=ON -DCMAKE_BUILD_TYPE=Release >"$out/build.log" 2>&1; then
  log "cmake failed"; tail -40 "$out/build.log"; exit 1
fi
if ! cmake --build "$build" -j "$jobs" >>"$out/build.log" 2>&1; then
  log "build failed"; grep -E "error" "$out/build.log" | head -40; exit 1
fi
log "built with CUDA in $build"

rc=0
(cd "$build" && ctest -L gpu ${GPU_CHECK_TESTS:+-R "$GPU_CHECK_TESTS"} --timeout "${GPU_CHECK_TEST_TIMEOUT:-300}" --output-on-failure -V) >"$out/ctest-gpu.log" 2>&1 || rc=1
grep -E "Passed|Failed|skipped|tests passed|device 0" "$out/ctest-gpu.log" | tee -a "$out/gpu-check.log"
log "gpu tests: $([ $rc = 0 ] && echo PASSED || echo FAILED)"

if [ "${GPU_CHECK_SANITIZER:-0}" = 1 ]; then
  san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  if [ ! -x "$san" ]; then
    log "compute-sanitizer not found"; rc=1
  else
    san_args=(); read -r -a san_args <<<"${GPU_CHECK_SANITIZER_ARGS:-}" # split on spaces, no globbing
    # each gpu test as ctest runs it: its binary and its ENVIRONMENT property (the kvblock16
    # run is the conformance binary with RAGKV_CUDA_KV_BLOCK=16), one line per test:
    # NAME<TAB>BINARY<TAB>VAR=VALUE ...; Criterion forks a child per test and the sanitizer
    # follows children
    san_list=$(cd "$build" && ctest -L gpu ${GPU_CHECK_TESTS:+-R "$GPU_CHECK_TESTS"} --show-only=json-v1 |
      python3 -c '
import json, sys
for t in json.load(sys.stdin)["tests"]:
    env = [v for p in t.get("properties", []) if p["name"] == "ENVIRONMENT" for v in p["value"]]
    print(t["name"], t["command"][0], " ".join(env), sep="\t")')
    while IFS=$'\t' read -r name t envs; do
      [ -n "$name" ] || continue
      san_env=(); read -r -a san_env <<<"$envs"
      for tool in ${GPU_CHECK_SANITIZER_TOOLS:-memcheck}; do
        limit=${GPU_CHECK_SANITIZER_TIMEOUT:-300}
        if [ -n "${GPU_CHECK_DEADLINE_S:-}" ]; then
          left=$((GPU_CHECK_DEADLINE_S - SECONDS))
          if [ "$left" -lt 20 ]; then log "compute-sanitizer $tool $name: skipped (deadline)"; rc=1; continue; fi
          [ "$left" -lt "$limit" ] && limit=$left
        fi
        t0=$SECONDS
        echo "## compute-sanitizer $tool $name ${envs:-}" >>"$out/ctest-gpu.log"
        (cd "$(dirname "$t")" && env "${san_env[@]}" timeout "$limit" "$san" --tool "$tool" --error-exitcode 99 --target-processes all "$t" --jobs 1 "${san_args[@]}") \
          >>"$out/ctest-gpu.log" 2>&1
        src=$?
        if [ $src = 0 ]; then
          log "compute-sanitizer $tool $name: clean ($((SECONDS - t0)) s)"
        elif [ $src = 124 ]; then
          log "compute-sanitizer $tool $name: stopped after $limit s (no verdict)"; rc=1
        else
          log "compute-sanitizer $tool $name: ERRORS or a failed test, exit $src (see ctest-gpu.log)"; rc=1
        fi
      done
    done <<<"$san_list"
  fi
fi

if [ "${GPU_CHECK_FULL:-1}" = 1 ]; then
  if scripts/test.sh "$build" -LE gpu >"$out/ctest-all.log" 2>&1; then
    log "full suite (non-gpu): PASSED"
  else
    log "full suite (non-gpu): FAILED"; rc=1
  fi
  tail -25 "$out/ctest-all.log"
fi

if [ "${GPU_CHECK_BENCH:-1}" = 1 ]; then
  # benchmarks register themselves in scripts/gpu-bench.d/*.sh; each writes into $OUT.
  # GPU_CHECK_BENCHES: space-separated name prefixes, run in that order (default: all)
  benches=()
  if [ -n "${GPU_CHECK_BENCHES:-}" ]; then
    for p in $GPU_CHECK_BENCHES; do
      for b in scripts/gpu-bench.d/"$p"*.sh; do [ -f "$b" ] && benches+=("$b"); done
    done
  else
    for b in scripts/gpu-bench.d/*.sh; do [ -f "$b" ] && benches+=("$b"); done
  fi
  for b in "${benches[@]}"; do
    limit=()
    if [ -n "${GPU_CHECK_DEADLINE_S:-}" ]; then
      left=$((GPU_CHECK_DEADLINE_S - SECONDS))
      if [ "$left" -lt 20 ]; then log "benchmark $(basename "$b"): skipped (deadline)"; continue; fi
      limit=(timeout "$left")
    fi
    log "benchmark $(basename "$b")"
    BUILD="$build" OUT="$out" "${limit[@]}" bash "$b" 2>&1 | tee -a "$out/bench.log" ||
      { log "benchmark $b failed or ran out of time"; rc=1; }
  done
fi
if [ "${GPU_CHECK_PACK:-1}" = 1 ]; then
  (cd "$out" && files=$(ls | grep -v -x -e gpu-check.log -e bench.log -e results.tar.gz) &&
    [ -n "$files" ] && tar czf results.tar.gz $files && rm -f $files) || true
  log "packed: $(tar tzf "$out/results.tar.gz" 2>/dev/null | tr '\n' ' ')"
fi
exit $rc
