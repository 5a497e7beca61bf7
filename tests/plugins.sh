#!/usr/bin/env bash
# Installs what the plugin-host tests need (idempotent) and runs them all:
# the plugin host (kv adapter through the host, hostile plugins, Extism
# policies, SIGKILL durability) and the guest crates' native unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Guest targets: components (wasm32-wasip2) and Extism policy modules
# (wasm32-unknown-unknown). `rustup target add` is a no-op when installed.
# Check the sysroot itself rather than `rustup target list`, whose view can
# lag behind the files when several rustup runs race on one machine.
sysroot="$(rustc --print sysroot)"
for t in wasm32-wasip2 wasm32-unknown-unknown; do
    [ -d "$sysroot/lib/rustlib/$t/lib" ] || rustup target add "$t"
done

cargo test -p iii-plugin-host
cargo test --manifest-path plugins/Cargo.toml -p iii-kv -p iii-update-ops
