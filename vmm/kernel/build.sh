#!/usr/bin/env bash
# Build the iii microVM guest kernel once into a cache keyed by
# sha256(Debian linux-source version + fragment + this script), and print the
# cache directory (which then holds vmlinux, bzImage, .config, source-version).
#
# Needs: apt-get install linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev
# Env:   III_KERNEL_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/iii/kernel)
#        JOBS              make -j (default: nproc)
#        KSRC_DIR          reuse an already extracted source tree (development only)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
frag=$here/microvm.fragment
cache_root=${III_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/iii/kernel}
src_pkg=linux-source-6.1
src_tar=/usr/src/linux-source-6.1.tar.xz
jobs=${JOBS:-$(nproc)}

log() { echo "kernel: $*" >&2; }

src_ver=$(dpkg-query -W -f='${Version}' "$src_pkg" 2>/dev/null) || {
  log "$src_pkg is not installed; run: apt-get install -y $src_pkg build-essential flex bison bc libelf-dev libssl-dev"
  exit 1
}
key=$( { echo "$src_ver"; cat "$frag" "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-16)
out=$cache_root/$key

done_already() { [[ -f $out/vmlinux && -f $out/bzImage ]]; }
if done_already; then echo "$out"; exit 0; fi

mkdir -p "$cache_root"
# One builder at a time: a second caller waits and then finds the result.
exec 9>"$cache_root/.lock"
flock 9
if done_already; then echo "$out"; exit 0; fi

work=${KSRC_DIR:-}
if [[ -z $work ]]; then
  work=$(mktemp -d "$cache_root/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  log "extracting $src_tar ($src_ver)"
  tar -xf "$src_tar" -C "$work" --strip-components=1
fi

# allnoconfig, not tinyconfig: tinyconfig turns off FUTEX/EPOLL/PRINTK behind EXPERT.
make -C "$work" -s ARCH=x86_64 allnoconfig >/dev/null
"$work/scripts/kconfig/merge_config.sh" -m -O "$work" "$work/.config" "$frag" >/dev/null 2>&1
make -C "$work" -s ARCH=x86_64 olddefconfig
missing=$(grep '^CONFIG_' "$frag" | while read -r line; do grep -qx "$line" "$work/.config" || echo "$line"; done)
if [[ -n $missing ]]; then
  log "fragment options not applied (unmet dependency?):"
  echo "$missing" >&2
  exit 1
fi

log "building with -j$jobs (several minutes)"
nice -n 19 make -C "$work" -s ARCH=x86_64 -j"$jobs" bzImage >&2
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
cp "$work/vmlinux" "$work/arch/x86/boot/bzImage" "$work/.config" "$out.tmp/"
echo "$src_ver" >"$out.tmp/source-version"
rm -rf "$out"
mv "$out.tmp" "$out"   # publish atomically
echo "$out"
