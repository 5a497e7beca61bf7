#!/usr/bin/env bash
# Builds the policies written in Python and JavaScript into components of
# iii:policy@0.1.0:
#   python-allowlist/app.py  --componentize-py-->  python-allowlist.wasm
#   js-tenant/tenant.js      --componentize-js-->  js-tenant.wasm
#
# Usage: plugins/policies/build-lang.sh [python-allowlist] [js-tenant]   (default: both)
#
# Offline except the package registries (PyPI, npm). The tools are installed
# into the cache, never into the repo:
#   $CACHE/lang-tools/componentize-py-<req hash>/     a venv (python-allowlist/build-requirements.txt)
#   $CACHE/lang-tools/componentize-js-<lock hash>/    npm ci of js-tenant/package-lock.json
# and each component is kept under a content key (the guest's sources, the
# policy WIT with its deps, the tool pins and this script), so a warm run only
# copies:
#   $CACHE/lang-policies/<name>-<key>.wasm
# with CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/iii. The results are copied to
# ${III_LANG_POLICIES:-<repo>/target/lang-policies}/<name>.wasm, where the
# tests look for them (they honour III_LANG_POLICIES too).
set -euo pipefail
exec </dev/null

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WIT="$ROOT/wit/policy-0.1.0"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/iii"
TOOLS="$CACHE/lang-tools"
ARTIFACTS="$CACHE/lang-policies"
OUT="${III_LANG_POLICIES:-$ROOT/target/lang-policies}"
ALL=(python-allowlist js-tenant)

say() { printf 'build-lang: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

targets=("$@")
((${#targets[@]})) || targets=("${ALL[@]}")
for t in "${targets[@]}"; do
  [[ " ${ALL[*]} " == *" $t "* ]] || die "unknown policy '$t' (known: ${ALL[*]})"
done

mkdir -p "$TOOLS" "$ARTIFACTS" "$OUT"
# Test binaries may run this concurrently (each builds on first use): one at a time.
exec 9>"$CACHE/lang-policies.lock"
flock 9

# sha256 (first 16 hex digits) over the relative path and content of every
# file under the arguments, symlinks followed (the WIT deps are symlinks).
content_key() {
  local f
  while IFS= read -r -d '' f; do
    printf '%s\n' "${f#"$ROOT"/}"
    sha256sum <"$f"
  done < <(find -L "$@" -type f ! -path '*/node_modules/*' ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | LC_ALL=C sort -z) |
    sha256sum | cut -c1-16
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
size_of() { du -h "$1" | cut -f1; }

# ---- tools ------------------------------------------------------------------

componentize_py() {
  local req="$HERE/python-allowlist/build-requirements.txt"
  local venv="$TOOLS/componentize-py-$(content_key "$req")"
  if [[ ! -f $venv/.complete ]]; then
    local py="${PYTHON:-python3}" t0
    command -v "$py" >/dev/null || die "python3 is required to install componentize-py"
    t0=$(now)
    say "installing componentize-py into $venv"
    rm -rf "$venv"
    "$py" -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2 ||
      die "pip could not install componentize-py"
    touch "$venv/.complete"
    say "componentize-py installed in $(since "$t0")"
  fi
  printf '%s\n' "$venv/bin/componentize-py"
}

componentize_js() {
  local src="$HERE/js-tenant"
  local dir="$TOOLS/componentize-js-$(content_key "$src/package.json" "$src/package-lock.json")"
  if [[ ! -f $dir/.complete ]]; then
    command -v npm >/dev/null || die "node and npm are required to install componentize-js"
    local t0
    t0=$(now)
    say "installing componentize-js into $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$src/package.json" "$src/package-lock.json" "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2) || die "npm ci of componentize-js failed"
    touch "$dir/.complete"
    say "componentize-js installed in $(since "$t0")"
  fi
  printf '%s\n' "$dir/node_modules/.bin/componentize-js"
}

# ---- components ---------------------------------------------------------------

# build NAME KEY-INPUTS... -- COMMAND...: COMMAND writes the component to $TMP_OUT.
build() {
  local name=$1
  shift
  local inputs=()
  while [[ $1 != -- ]]; do inputs+=("$1"); shift; done
  shift
  local key cached t0
  key=$(content_key "${inputs[@]}" "$WIT" "$HERE/build-lang.sh")
  cached="$ARTIFACTS/$name-$key.wasm"
  if [[ -f $cached ]]; then
    say "$name: cached ($key, $(size_of "$cached"))"
  else
    say "$name: building ($key)"
    t0=$(now)
    TMP_OUT="$cached.tmp.$$"
    "$@" || { rm -f "$TMP_OUT"; die "$name: build failed"; }
    mv -f "$TMP_OUT" "$cached"
    say "$name: built in $(since "$t0"), $(size_of "$cached")"
  fi
  cp -f "$cached" "$OUT/$name.wasm.tmp"
  mv -f "$OUT/$name.wasm.tmp" "$OUT/$name.wasm"
}

py_build() {
  local tool src=$1 stage
  tool=$(componentize_py) || return 1
  # componentize-py writes __pycache__ beside the module it imports: build from a copy.
  stage=$(mktemp -d)
  cp "$src"/*.py "$stage/"
  "$tool" -d "$WIT" -w policy componentize app -p "$stage" -o "$TMP_OUT" >/dev/null
  local rc=$?
  rm -rf "$stage"
  return $rc
}

js_build() {
  local tool src=$1
  tool=$(componentize_js) || return 1
  # Every optional WASI feature off: the component then imports nothing but
  # iii:adapter (no clocks, random, stdio or HTTP; Math.random is seeded at build time).
  "$tool" "$src/tenant.js" --wit "$WIT" --world-name policy \
    --disable stdio random clocks http fetch-event -o "$TMP_OUT"
}

one() {
  case $1 in
    python-allowlist)
      build "$1" "$HERE/$1"/*.py "$HERE/$1/build-requirements.txt" -- py_build "$HERE/$1" ;;
    js-tenant)
      build "$1" "$HERE/$1/tenant.js" "$HERE/$1/package.json" "$HERE/$1/package-lock.json" -- js_build "$HERE/$1" ;;
  esac
}

# Both toolchains are single-threaded: on two cores building side by side halves the wall time.
t0=$(now)
pids=()
for t in "${targets[@]}"; do
  one "$t" &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do
  wait "$pid" || failed=1
done
((failed == 0)) || die "some policies did not build (see above)"
say "components in $OUT ($(since "$t0"))"
