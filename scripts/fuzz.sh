#!/usr/bin/env bash
# fuzz.sh [SECONDS] — build every tests/fuzz/fuzz_*.c as a libFuzzer binary (clang, ASan+UBSan)
# in build-fuzz/ and run each for SECONDS (default $FUZZ_SECONDS or 60) on a scratch copy of its
# seed corpus. New crashes land in tests/fuzz/crashes/<name>/: commit them with the fix, and
# they are replayed by every `make test` from then on.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
secs=${1:-${FUZZ_SECONDS:-60}}
command -v clang >/dev/null || { echo "fuzz.sh: needs clang (apt-get install clang)"; exit 1; }
CC=clang cmake -S . -B build-fuzz -DRAGKV_FUZZ=ON -DRAGKV_CUDA=OFF -DRAGKV_TESTS=ON \
  -DRAGKV_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j "$(nproc)" >/dev/null
rc=0
failed=""
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for bin in build-fuzz/tests/fuzz/fuzz_*; do
  [ -x "$bin" ] || continue
  name=$(basename "$bin"); name=${name#fuzz_}
  work=tests/fuzz/corpus-tmp/$name
  mkdir -p "$work" "tests/fuzz/crashes/$name"
  [ -d "tests/fuzz/corpus/$name" ] && cp -n tests/fuzz/corpus/$name/* "$work"/ 2>/dev/null || true
  echo "fuzz.sh: $name for ${secs}s"
  if ! "$bin" -max_total_time="$secs" -max_len=65536 -artifact_prefix="tests/fuzz/crashes/$name/" \
      -print_final_stats=1 "$work" >"$log" 2>&1; then
    rc=1
    failed="$failed $name"
    # what the sanitizer or libFuzzer said, again at the very end (CI logs keep only the tail)
    grep -E 'ERROR: |SUMMARY: |^==[0-9]+==|^    #[0-9]+ |Test unit written|deadly signal|out-of-memory|timeout' "$log" \
      | head -n 40 > "build-fuzz/last-failure-$name.txt" || true
  fi
  tail -n 12 "$log"
done
for name in $failed; do
  echo "fuzz.sh: $name FOUND A CRASH (tests/fuzz/crashes/$name/):"
  sed 's/^/  /' "build-fuzz/last-failure-$name.txt"
done
exit $rc
