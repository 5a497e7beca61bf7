#!/usr/bin/env bash
# Builds `iii` (with `iii-worker-host` and `iii-init`, which it runs managed and local workers
# with) from this checkout and installs them into $III_INSTALL_DIR (default ~/.local/bin).
# Idempotent; downloads nothing beyond what cargo already has in its cache for this workspace.
#   III_INSTALL_DIR      where the binaries go            (default: ~/.local/bin)
#   III_INSTALL_PROFILE  cargo profile: release or dev    (default: release)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${III_INSTALL_DIR:-$HOME/.local/bin}
profile=${III_INSTALL_PROFILE:-release}
case "$profile" in
  release) outdir=release ;;
  dev | debug) profile=dev; outdir=debug ;;
  *) echo "install.sh: III_INSTALL_PROFILE must be release or dev, not '$profile'" >&2; exit 2 ;;
esac
command -v cargo >/dev/null || { echo "install.sh: cargo is not on PATH (install Rust: https://rustup.rs)" >&2; exit 1; }

echo "building iii from $root ($profile profile)…" >&2
(cd "$root" && cargo build --profile "$profile" -p iii-cli --bin iii -p iii-worker-host --bin iii-worker-host -p iii-guest-init --bin iii-init)

target=${CARGO_TARGET_DIR:-$root/target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
mkdir -p "$dest"
for bin in iii iii-worker-host iii-init; do
  # Copy then rename, so a running `iii` keeps its old inode and a half-written file is never on PATH.
  install -m 0755 "$target/$outdir/$bin" "$dest/.$bin.tmp"
  mv -f "$dest/.$bin.tmp" "$dest/$bin"
done
echo "installed iii, iii-worker-host and iii-init into $dest" >&2
case ":$PATH:" in
  *":$dest:"*) ;;
  *) echo "note: $dest is not on your PATH; add it:  export PATH=\"$dest:\$PATH\"" >&2 ;;
esac
