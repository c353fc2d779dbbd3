#!/usr/bin/env bash
# test.sh BUILD_DIR [ctest args...] — run the whole suite against a private redis-server on a
# free loopback port (never the system one), then print CTest's summary. Exit status: ctest's.
set -euo pipefail
build=${1:-build}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

redis_dir=$(mktemp -d "${TMPDIR:-/tmp}/ragkv-redis-XXXXXX")
redis_pid=""
cleanup() {
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
  rm -rf "$redis_dir"
}
trap cleanup EXIT

port=$(free_port)
redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$redis_dir" \
  --daemonize no --logfile "$redis_dir/redis.log" &
redis_pid=$!
# readiness: redis answers PING (bounded: 10 s)
for _ in $(seq 1 100); do
  if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then break; fi
  kill -0 "$redis_pid" 2>/dev/null || { echo "test.sh: redis-server failed to start:"; cat "$redis_dir/redis.log"; exit 1; }
  sleep 0.1
done
export RAGKV_TEST_REDIS="127.0.0.1:$port"
echo "test.sh: private redis-server on $RAGKV_TEST_REDIS"

if [ -z "${RAGKV_TEST_MODELS:-}" ] && [ -f "$root/../shared/models/stories260K.bin" ]; then
  export RAGKV_TEST_MODELS="$root/../shared/models"
fi
echo "test.sh: test models: ${RAGKV_TEST_MODELS:-none (tests that need them skip)}"

cd "$build"
set +e
ctest --output-on-failure -j "${RAGKV_TEST_JOBS:-2}" "$@"
rc=$?
set -e
exit $rc
