#!/usr/bin/env bash
# Sandbox images (issue 12): builds the `python` and `node` presets into the
# image cache (${XDG_CACHE_HOME:-$HOME/.cache}/iii/images, or $III_IMAGE_CACHE)
# and prints each build's wall time. Idempotent: installs mmdebstrap and
# erofs-utils only when missing; a preset already in the cache is a hit
# (milliseconds). Prints each lower's path; ends with "N passed, N failed".
#
#   tests/sandbox-images.sh            # both presets
#   tests/sandbox-images.sh python     # just one
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
passed=0
failed=0
log() { echo "sandbox-images.sh: $*"; }
finish() {
  echo "$passed passed, $failed failed"
  [[ $failed -eq 0 ]]
  exit $?
}

# mmdebstrap and erofs-utils build the presets; the sandbox runtime's tests also need
# slirp4netns (network: true) and busybox-static (their minimal test root); the OCI pull tests
# start Debian's docker-registry.
pkgs=(mmdebstrap erofs-utils slirp4netns busybox-static docker-registry)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  sudo_=""; [[ $(id -u) -eq 0 ]] || sudo_="sudo"
  if ! { $sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq \
      --no-install-recommends "${missing[@]}" >/dev/null; }; then
    log "FAIL apt-get install ${missing[*]}"
    failed=$((failed + 1))
    finish
  fi
fi

if ! cargo build -q -p iii-oci-rootfs --bin iii-mkrootfs; then
  log "FAIL cargo build -p iii-oci-rootfs"
  failed=$((failed + 1))
  finish
fi
mk="${CARGO_TARGET_DIR:-$root/target}/debug/iii-mkrootfs"
cache=()
[[ -n ${III_IMAGE_CACHE:-} ]] && cache=(--cache "$III_IMAGE_CACHE")

presets=("$@")
((${#presets[@]})) || presets=(python node)
for name in "${presets[@]}"; do
  log "preset $name"
  t0=$(date +%s.%N)
  if lower=$("$mk" preset "$name" "${cache[@]}"); then
    t1=$(date +%s.%N)
    size=$(du -m "$lower" | cut -f1)
    printf 'PASS preset %s: %s (%s MiB) in %s s\n' "$name" "$lower" "$size" \
      "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
    passed=$((passed + 1))
  else
    echo "FAIL preset $name"
    failed=$((failed + 1))
  fi
done
finish
