#!/usr/bin/env bash
# Runs every test of the project: formatting and lints, unit tests, the black-box tests that
# start the real `iii` binary (raw WebSocket, HTTP, CLI, zero-loss), the official SDK suites
# (PyPI and npm `iii-sdk`), and the plugin and VM suites when present.
# Installs what the tests need (idempotent) first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# No test reads the terminal; a tool that prompts must see EOF, not wait on
# whatever stdin the CI runner left open.
exec </dev/null
ROOT="$PWD"
export CARGO_TERM_COLOR=never
# One-shot builds gain nothing from incremental state, which costs gigabytes of disk.
export CARGO_INCREMENTAL=0
# The registry tests (OCI pulls) must run here, never skip: the package step installs the registry.
export III_REGISTRY_TESTS=1

bash tests/setup.sh

t0=$(date +%s)
step() { printf '\n==> %s   [%ss]\n' "$*" "$(($(date +%s) - t0))"; }
failed=()
# Every suite runs under a time limit, so a hang fails that suite with what
# it printed so far instead of eating the whole CI budget.
bounded() { local m=$1; shift; timeout -k 30 "${m}m" "$@"; }

# The guest kernel for the VM suite takes ~10 CPU-minutes to build on a
# fresh machine; start it now at the lowest priority so it uses the idle
# time of the suites below instead of adding to the wall clock.
step "start the guest kernel build in the background"
bash tests/vmm.sh --prefetch || true

# The sandbox presets (python, node) are built from Debian packages once and cached by content
# key (about a minute each cold, milliseconds when cached); the sandbox tests need them. Build
# them while the lints run.
step "build the sandbox preset images in the background"
mkdir -p "$ROOT/target"
( bounded 20 bash tests/sandbox-images.sh >"$ROOT/target/sandbox-images.log" 2>&1 ) &
images_pid=$!

step "cargo fmt --check"
cargo fmt --all --check || failed+=("cargo fmt")

step "architecture: the core links no wasmtime and names no service"
if cargo tree -p iii-core -p iii-services -e normal | grep -q wasmtime; then
  echo "iii-core or iii-services depends on wasmtime"; failed+=("architecture")
fi
if git grep -nE '"(iii-)?(state|stream|http|pubsub|queue|cron)"' -- host/core; then
  echo "host/core names a service"; failed+=("architecture")
fi

step "cargo clippy --all-targets -D warnings"
bounded 25 cargo clippy --workspace --all-targets -- -D warnings || failed+=("clippy")

step "build the iii binary, the sandbox daemon and iii-init (the sandbox tests start them)"
bounded 25 cargo build -p iii-cli -p iii-sandbox -p iii-guest-init -p iii-worker-host || failed+=("build")
export III_BIN="$ROOT/target/debug/iii"

step "sandbox preset images"
wait "$images_pid" || failed+=("sandbox images")
cat "$ROOT/target/sandbox-images.log"

step "cargo test (unit and black-box tests)"
bounded 40 cargo test --workspace || failed+=("cargo test")
# The plugin and VM scripts skip the workspace crates' tests that ran here.
export III_WORKSPACE_TESTED=1

step "official SDK suites (Python iii-sdk 0.25, Node iii-sdk 0.22)"
bounded 20 bash tests/sdk/run.sh || failed+=("sdk suites")

step "the web console in headless Chromium (tests/console.sh: chromium + playwright-core)"
bounded 10 bash tests/console.sh || failed+=("console")

for suite in tests/plugins.sh tests/vmm.sh; do
  step "$suite"
  bounded 45 bash "$suite" || failed+=("$suite")
done

step "done"
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all suites passed"
