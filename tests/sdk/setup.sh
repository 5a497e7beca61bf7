#!/usr/bin/env bash
# Installs the official SDKs used by the black-box SDK suites. Idempotent: a
# second run is a fast no-op when everything is already installed.
#   python/.venv  : iii-sdk==0.25.0 + pytest (python/requirements.txt)
#   node/node_modules : iii-sdk@0.22.1 (node/package.json + package-lock.json)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# ---- Python ---------------------------------------------------------------
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
[ -n "$PY" ] || { echo "setup.sh: no python3 found" >&2; exit 1; }

VENV="$HERE/python/.venv"
REQ="$HERE/python/requirements.txt"
STAMP="$VENV/.installed-requirements"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || ! cmp -s "$REQ" "$STAMP"; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$STAMP"
fi

# ---- Node -----------------------------------------------------------------
NODE_DIR="$HERE/node"
NSTAMP="$NODE_DIR/node_modules/.installed-lock"
if [ ! -f "$NSTAMP" ] || ! cmp -s "$NODE_DIR/package-lock.json" "$NSTAMP"; then
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$NODE_DIR/package-lock.json" "$NSTAMP"
fi
