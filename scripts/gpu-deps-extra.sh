#!/usr/bin/env bash
# gpu-deps-extra.sh DEST — add to ../shared/tools/gpu-deps.sh's folder the Debian packages
# ragkv also needs on the GPU machine's image (libevent, lz4 headers, pkg-config), unpacked the
# same way. Run here after gpu-deps.sh:
#   ../shared/tools/gpu-deps.sh .gpu-deps && scripts/gpu-deps-extra.sh .gpu-deps
set -euo pipefail
dest=$(realpath -m "${1:-.gpu-deps}")
[ -f "$dest/env.sh" ] || { echo "gpu-deps-extra: run ../shared/tools/gpu-deps.sh $1 first" >&2; exit 1; }
pkgs=(libevent-dev libevent-2.1-7 libevent-core-2.1-7 libevent-extra-2.1-7
      libevent-pthreads-2.1-7 libevent-openssl-2.1-7
      liblz4-dev liblz4-1 pkgconf pkgconf-bin libpkgconf3 pkg-config)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download "${pkgs[@]}" >/dev/null 2>&1)
for f in "$tmp"/*.deb; do dpkg -x "$f" "$dest/root"; done
find "$dest/root" -name "*.a" -delete
rm -rf "$dest/root/usr/share/doc" "$dest/root/usr/share/man"
# pkgconf looks in its compiled-in paths; point it at the unpacked ones too (env.sh does that)
du -sh "$dest" | sed 's/^/gpu-deps-extra: /'
