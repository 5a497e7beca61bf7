#!/usr/bin/env bash
# The web console in a real browser: starts an engine, a Node SDK worker and `iii console`, and
# drives the page in Debian's headless Chromium with playwright-core (no browser download).
# Installs chromium (apt) and the npm packages idempotently. Screenshots of every page go to
# target/console-screenshots/. Usage: tests/console.sh [--bench]   (--bench: page load with 1000
# functions, prints a table; not a test)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
export III_BIN="${III_BIN:-$ROOT/target/debug/iii}"

if ! command -v chromium >/dev/null; then
  sudo_=""
  [[ $(id -u) -eq 0 ]] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends chromium
fi
export CHROMIUM_BIN="${CHROMIUM_BIN:-$(command -v chromium)}"

# The tests reuse the Node SDK suite's harness and its iii-sdk install.
bash tests/sdk/setup.sh >/dev/null
stamp=tests/console/node_modules/.installed-lock
if ! cmp -s tests/console/package-lock.json "$stamp" 2>/dev/null; then
  (cd tests/console && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
  cp tests/console/package-lock.json "$stamp"
fi
[[ -x "$III_BIN" ]] || { echo "console.sh: $III_BIN missing (cargo build -p iii-cli)" >&2; exit 2; }

export III_CONSOLE_SCREENSHOTS="$ROOT/target/console-screenshots"
mkdir -p "$III_CONSOLE_SCREENSHOTS"
cd tests/console
if [[ "${1:-}" == --bench ]]; then
  exec node bench.mjs
fi
exec node --test --test-concurrency=1 --test-reporter=spec test/
