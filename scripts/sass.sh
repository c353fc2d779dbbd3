#!/usr/bin/env bash
# sass.sh — the Hopper machine code (SASS) of a CUDA source, here, without a GPU: what the
# compiler made of a kernel (instruction counts per function, or the listing of one), so that
# time on the device goes to measuring rather than guessing. The CUDA 13 toolkit here has no
# disassembler; Debian's non-free nvidia-cuda-toolkit 11.8 has nvdisasm, which reads sm_90
# code once the cubin's ELF header says so in the older encoding (the instructions are the
# same). The package is fetched once into a private apt folder (the system's sources are left
# alone) and only nvdisasm is kept.
#
#   scripts/sass.sh engine/cuda/attn.cu                 # instruction counts per kernel
#   scripts/sass.sh engine/cuda/attn.cu 'k_flash3ILi128ELb0'   # the listing of the kernels matching
#
# Environment: RAGKV_SASS_CACHE (default ~/.cache/ragkv-sass) holds nvdisasm.
set -euo pipefail
src=${1:?usage: scripts/sass.sh FILE.cu [FUNCTION-REGEX]}
pat=${2:-}
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${RAGKV_SASS_CACHE:-$HOME/.cache/ragkv-sass}
dis=$cache/nvdisasm
if [ ! -x "$dis" ]; then
  echo "sass.sh: fetching nvdisasm (Debian nvidia-cuda-toolkit 11.8, 84 MB, once)" >&2
  apt=$cache/apt
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/etc" "$cache/x"
  echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm non-free' \
    > "$apt/etc/sources.list"
  opts=(-o "Dir::Etc::SourceList=$apt/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Debug::NoLocking=1)
  apt-get "${opts[@]}" update -qq
  (cd "$apt" && apt-get "${opts[@]}" download nvidia-cuda-toolkit 2>/dev/null)
  dpkg -x "$apt"/nvidia-cuda-toolkit_*.deb "$cache/x"
  cp "$cache/x/usr/bin/nvdisasm" "$dis"
  rm -rf "$cache/x" "$apt"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
nvcc -arch=sm_90 -O3 -std=c++17 -I"$root/engine/cuda" -I"$root/engine" -I"$root/common/include" -I"$root/include" \
  -I"$root/codec" -I"$root/codec/include" -cubin -o "$tmp/k.cubin" "$src"
# CUDA 13 writes e_flags 0x0600_5a04 / ABI 0x41 v8; nvdisasm 11.8 wants 0x005a_055a / 0x33 v7
python3 - "$tmp/k.cubin" <<'PY'
import struct, sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
sm = (struct.unpack_from('<I', b, 48)[0] >> 8) & 0xff
b[7], b[8] = 0x33, 7
struct.pack_into('<I', b, 48, sm | 0x500 | (sm << 16))
open(p, 'wb').write(b)
PY
"$dis" -c "$tmp/k.cubin" > "$tmp/k.sass"
python3 - "$tmp/k.sass" "$pat" <<'PY'
import re, sys
from collections import Counter
text, pat = open(sys.argv[1]).read().split('\n'), sys.argv[2]
funcs, cur = {}, None
for line in text:
    m = re.match(r'^\.text\.(\S+):', line)
    if m:
        cur = m.group(1); funcs[cur] = []
        continue
    m = re.match(r'^(\.L_x_\d+):', line.strip())
    if m and cur:
        funcs[cur].append(m.group(1) + ':') # branch targets, kept for reading loops
        continue
    m = re.match(r'\s*/\*([0-9a-f]{4,})\*/\s+(.*?);', line)
    if m and cur:
        funcs[cur].append(m.group(2).strip())
for name, ins in funcs.items():
    if pat and not re.search(pat, name):
        continue
    ins_only = [t for t in ins if not t.endswith(':')]
    ops = Counter((t.split(None, 1)[1] if t.startswith('@') else t).split()[0].split('.')[0] for t in ins_only)
    print(f"{name}: {len(ins_only)} instructions; " + ", ".join(f"{k} {v}" for k, v in ops.most_common(10)))
    if pat:
        for t in ins:
            print(t if t.endswith(':') else "    " + t)
PY
