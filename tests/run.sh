#!/usr/bin/env bash
# Runs every test of the project: formatting and lints, unit tests, the black-box tests that
# start the real `iii` binary (raw WebSocket, HTTP, CLI, zero-loss), the official SDK suites
# (PyPI and npm `iii-sdk`), and the plugin and VM suites when present.
# Installs what the tests need (idempotent) first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
export CARGO_TERM_COLOR=never

bash tests/setup.sh

t0=$(date +%s)
step() { printf '\n==> %s   [%ss]\n' "$*" "$(($(date +%s) - t0))"; }
failed=()

# The guest kernel for the VM suite takes ~10 CPU-minutes to build on a
# fresh machine; start it now at the lowest priority so it uses the idle
# time of the suites below instead of adding to the wall clock.
if [ -f tests/vmm.sh ]; then
  step "start the guest kernel build in the background"
  bash tests/vmm.sh --prefetch || true
fi

step "cargo fmt --check"
cargo fmt --all --check || failed+=("cargo fmt")

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings || failed+=("clippy")

step "build the iii binary"
cargo build -p iii-cli
export III_BIN="$ROOT/target/debug/iii"

step "cargo test (unit and black-box tests)"
cargo test --workspace || failed+=("cargo test")
# The plugin and VM scripts skip the workspace crates' tests that ran here.
export III_WORKSPACE_TESTED=1

if [ -x tests/sdk/run.sh ] || [ -f tests/sdk/run.sh ]; then
  step "official SDK suites (Python iii-sdk 0.25, Node iii-sdk 0.22)"
  bash tests/sdk/run.sh || failed+=("sdk suites")
fi

for suite in tests/plugins.sh tests/vmm.sh; do
  if [ -f "$suite" ]; then
    step "$suite"
    bash "$suite" || failed+=("$suite")
  fi
done

step "done"
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all suites passed"
