#!/usr/bin/env bash
# The engine against transformers on Hugging Face folders: the real models converted, and
# synthetic Qwen2 (q/k/v bias), Llama 3 (rope scaling) and Mistral shapes.
set -euo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ragkv="$BUILD/clients/ragkv"
dirs=()
for m in stories260K babyllama105; do
  src="${RAGKV_TEST_MODELS:-../shared/models}/$m.bin"
  [ -f "$src" ] && "$ragkv" model convert "$src" "$tmp/$m" >/dev/null && dirs+=("$tmp/$m")
done
for s in test-qwen2 test-llama3 test-mistral; do
  "$ragkv" model synth --shape "$s" --seed 1 --out "$tmp/$s" >/dev/null && dirs+=("$tmp/$s")
done
python3 tests/engine/hf_crosscheck.py "$ragkv" "${dirs[@]}" 2>&1 | grep -v "Loading weights"
