#!/usr/bin/env bash
# Installs what the plugin-host tests need (idempotent) and runs them all:
# the plugin host (kv adapter through the host, hostile plugins, Extism
# policies, the example policies of plugins/policies built for wasm32-wasip2
# and wasm32-unknown-unknown, SIGKILL durability) and the guest crates' native
# unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Guest targets: components (wasm32-wasip2) and Extism policy modules
# (wasm32-unknown-unknown), installed by the project's setup script.
bash tests/setup.sh

# The policies written in Python and JavaScript (componentize-py, componentize-js; tools
# from PyPI and npm into ~/.cache/iii): a content-keyed cache makes a warm run a copy. The
# plugin host's tests read them from here (without the variable they run the script).
export III_LANG_POLICIES="$PWD/target/lang-policies"
bash plugins/policies/build-lang.sh

# Under tests/run.sh the plugin host's tests already ran in
# `cargo test --workspace`; building them again alone would recompile
# wasmtime with other features for nothing.
if [[ -z ${III_WORKSPACE_TESTED:-} ]]; then
  cargo test -p iii-plugin-host
fi
cargo test --manifest-path plugins/Cargo.toml -p iii-kv -p iii-update-ops -p iii-wal -p iii-queue
