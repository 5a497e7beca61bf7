#!/usr/bin/env bash
# Installs what building and running iii needs on a fresh machine (Debian, Rust via rustup).
# Idempotent: a second run only checks. Test-only dependencies are installed by tests/run.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null || { echo "setup: cargo is required (install Rust with rustup)" >&2; exit 1; }

# WebAssembly components (plugins/) are built for this target. Check the files, not rustup's
# bookkeeping, which can disagree with what is on disk.
has_wasip2() {
  local dir
  dir="$(rustc --print target-libdir --target wasm32-wasip2 2>/dev/null)" || return 1
  compgen -G "$dir/libstd-*.rlib" >/dev/null
}
if ! has_wasip2; then
  command -v rustup >/dev/null || { echo "setup: the wasm32-wasip2 target is missing and rustup is not available to add it" >&2; exit 1; }
  # A concurrent rustup (another build on this machine) can make one attempt fail; retry once.
  rustup target add wasm32-wasip2 || { sleep 5; rustup target add wasm32-wasip2; }
  has_wasip2 || { echo "setup: wasm32-wasip2 still missing after rustup target add" >&2; exit 1; }
fi
