#!/usr/bin/env bash
# install-deps.sh — install the Debian 12 packages ragkv builds and tests with.
# Idempotent: asks apt only for what is missing; uses sudo when not root.
# Set RAGKV_SKIP_DEPS=1 to skip (e.g. on a machine prepared another way).
set -euo pipefail
if [ "${RAGKV_SKIP_DEPS:-0}" = 1 ]; then exit 0; fi
pkgs=(build-essential cmake pkg-config
      libevent-dev librocksdb-dev libhiredis-dev liblz4-dev libsodium-dev
      libxxhash-dev libcriterion-dev redis-server redis-tools python3 curl
      clang libclang-rt-14-dev)  # clang + libFuzzer: the short fuzz runs of make test
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: missing ${missing[*]} and no apt-get here; install them by hand" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian redis-server package starts a system daemon on :6379; ragkv's tests start their own
# instances on free ports and never rely on it.
echo "install-deps: done"
