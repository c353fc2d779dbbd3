#!/usr/bin/env bash
# soak.sh [REQUESTS] — the long soak (tests/service/test_soak.c): REQUESTS mixed requests
# (default $RAGKV_SOAK_REQUESTS or 1000000) against ragkvd with Redis metadata, one Redis kill
# and one ragkvd restart; asserts RSS growth under 5% after warm-up, flat file descriptors,
# never wrong or cross-tenant data, and a final consistency check. Runs the plain build, then
# the ASan+UBSan build (SOAK_SAN_REQUESTS, default 300000: about 3x slower) so that any
# sanitizer report fails it. SOAK_SAN=0 skips the sanitizer run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
n=${1:-${RAGKV_SOAK_REQUESTS:-1000000}}
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build ${CMAKE_FLAGS:-} >/dev/null
cmake --build build -j "$jobs" --target service_test_soak ragkvd >/dev/null
CRITERION_VERBOSITY_LEVEL=1 RAGKV_SOAK_REQUESTS=$n scripts/test.sh build -R '^service_test_soak$' -V | grep -E '^\S+: \[(----|PASS|FAIL|====)\]|tests passed|Test time'
if [ "${SOAK_SAN:-1}" != 0 ]; then
  cmake -S . -B build-san -DRAGKV_SANITIZE=address,undefined ${CMAKE_FLAGS:-} >/dev/null
  cmake --build build-san -j "$jobs" --target service_test_soak ragkvd >/dev/null
  CRITERION_VERBOSITY_LEVEL=1 RAGKV_SOAK_REQUESTS=${SOAK_SAN_REQUESTS:-300000} scripts/test.sh build-san -R '^service_test_soak$' -V |
    grep -E '^\S+: \[(----|PASS|FAIL|====)\]|runtime error|ERROR: |tests passed|Test time'
fi
