#!/usr/bin/env bash
# Installs what building and running iii needs on a fresh machine (Debian, Rust via rustup).
# Idempotent: a second run only checks. Test-only dependencies are installed by tests/run.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null || { echo "setup: cargo is required (install Rust with rustup)" >&2; exit 1; }

# WebAssembly components (plugins/) are built for this target.
if command -v rustup >/dev/null; then
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    # A concurrent rustup (another build on this machine) can make one attempt fail; retry once.
    rustup target add wasm32-wasip2 || { sleep 5; rustup target add wasm32-wasip2; }
  fi
fi
