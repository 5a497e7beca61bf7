#!/usr/bin/env bash
# Runs the black-box SDK suites (official Python iii-sdk 0.25.0 and Node
# iii-sdk 0.22.1) against the engine binary $III_BIN
# (default: /work/main/target/debug/iii, i.e. <repo>/target/debug/iii).
# Usage: tests/sdk/run.sh [python|node]   (default: both)
# Exits non-zero if any suite fails.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export III_BIN="${III_BIN:-$REPO/target/debug/iii}"
WHICH="${1:-all}"

"$HERE/setup.sh" || { echo "run.sh: setup failed" >&2; exit 2; }

if [ ! -x "$III_BIN" ]; then
  echo "run.sh: engine binary not found or not executable: $III_BIN (build it or set III_BIN)" >&2
  exit 2
fi

rc=0
if [ "$WHICH" = all ] || [ "$WHICH" = python ]; then
  echo "== Python SDK suite (iii-sdk 0.25.0) against $III_BIN"
  # The SDK's OpenTelemetry set-up is global to a process, so the observability test (which
  # needs its own exporter to the engine under test) runs in a process of its own.
  (cd "$HERE/python" && .venv/bin/python -m pytest -q --ignore=test_observability.py) || rc=1
  (cd "$HERE/python" && .venv/bin/python -m pytest -q test_observability.py) || rc=1
fi
if [ "$WHICH" = all ] || [ "$WHICH" = node ]; then
  echo "== Node SDK suite (iii-sdk 0.22.1) against $III_BIN"
  (cd "$HERE/node" && node --test --test-concurrency=1 --test-reporter=spec test/) || rc=1
fi
exit $rc
