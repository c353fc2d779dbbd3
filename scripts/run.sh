#!/usr/bin/env bash
# run.sh BUILD_DIR — start ragkvd in the foreground with embedded defaults: data under ./var,
# no Redis, and a model: $RAGKV_MODEL, else the real test model beside the checkout, else a
# seeded synthetic demo model generated into ./var/models. Ctrl-C stops it cleanly.
set -euo pipefail
build=${1:-build}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mkdir -p var
model=${RAGKV_MODEL:-}
tok=${RAGKV_TOKENIZER:-}
args=()
if [ -z "$model" ] && [ -f ../shared/models/stories260K.bin ]; then
  model=../shared/models/stories260K.bin
  tok=../shared/models/tok512.bin
  echo "run.sh: model: the real test model $model"
fi
if [ -z "$model" ]; then
  model=var/models/demo
  if [ ! -f "$model/config.json" ]; then
    echo "run.sh: no real model found; generating a seeded synthetic demo model in $model"
    mkdir -p "$(dirname "$model")"
    if ! "$build/clients/ragkv" model synth --shape demo --seed 1 --out "$model"; then
      echo "run.sh: this build cannot generate a demo model yet; starting without a model"
      model=""
    fi
  fi
  [ -n "$model" ] && echo "run.sh: model: synthetic demo model $model (random weights: output is gibberish)"
fi
[ -n "$model" ] && args+=(--model "$model")
[ -n "$tok" ] && args+=(--tokenizer "$tok")
port=${RAGKV_PORT:-7470}
http_port=${RAGKV_HTTP_PORT:-7471}
echo "run.sh: try: curl 127.0.0.1:$http_port/healthz   (Ctrl-C stops ragkvd)"
exec "$build/service/ragkvd" --data-dir ./var --port "$port" --http-port "$http_port" "${args[@]}" "$@"
