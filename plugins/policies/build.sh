#!/usr/bin/env bash
# Builds every policy the SDK suites load and prints one `name=path` line each
# on stdout (progress goes to stderr):
#   bearer, audit, tenant-prefix   Rust components  (wasm32-wasip2)
#   rate-limit                     Rust Extism      (wasm32-unknown-unknown)
#   hostile                        host/plugin-host/tests/fixtures/hostile-policy (wasm32-wasip2)
#   python-allowlist, js-tenant    build-lang.sh    (componentize-py / componentize-js)
#
# Usage: plugins/policies/build.sh [NAME...]   (default: all of the above)
#
# The Rust ones are built into the directories the cargo tests use, so a
# `cargo test --workspace` run leaves them warm and this is a no-op then:
#   <target>/wasm-plugins              (tests/tests/all/policies.rs, plugin-host examples)
#   <target>/tmp/plugin-fixtures       (the plugin-host fixtures: CARGO_TARGET_TMPDIR)
# with <target> = ${III_TARGET_DIR:-<repo>/target}. The Python/JS components
# come from build-lang.sh (its content-keyed cache) in
# ${III_LANG_POLICIES:-<target>/lang-policies}.
set -euo pipefail
exec </dev/null

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TARGET="${III_TARGET_DIR:-$ROOT/target}"
PLUGINS="$TARGET/wasm-plugins"
FIXTURES="$TARGET/tmp/plugin-fixtures"
LANG_OUT="${III_LANG_POLICIES:-$TARGET/lang-policies}"
CARGO="${CARGO:-cargo}"
ALL=(bearer audit tenant-prefix rate-limit hostile python-allowlist js-tenant)

say() { printf 'build: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Called from a cargo test (the Rust SDK suite) the outer build's settings are in
# the environment: they must not reach the guest build (see host/plugin-host/guest_build.rs).
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_TARGET_DIR CARGO_BUILD_TARGET \
  CARGO_PROFILE_RELEASE_LTO RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS

targets=("$@")
((${#targets[@]})) || targets=("${ALL[@]}")
want() { [[ " ${targets[*]} " == *" $1 "* ]]; }
for t in "${targets[@]}"; do
  [[ " ${ALL[*]} " == *" $t "* ]] || die "unknown policy '$t' (known: ${ALL[*]})"
done

guest() { # MANIFEST TARGET DIR PACKAGE...
  local manifest=$1 target=$2 dir=$3
  shift 3
  local args=()
  for p in "$@"; do args+=(-p "$p"); done
  "$CARGO" build --quiet --release --manifest-path "$manifest" --target "$target" --target-dir "$dir" "${args[@]}" >&2 ||
    die "building $* for $target failed (if the target is missing: rustup target add $target)"
}

out=()
# The same package sets as host/plugin-host/tests/all/fixtures.rs, so its artefacts are reused.
if want bearer || want audit || want tenant-prefix; then
  guest "$ROOT/plugins/Cargo.toml" wasm32-wasip2 "$PLUGINS" iii-policy-bearer iii-policy-tenant-prefix iii-policy-audit
  for n in bearer audit tenant-prefix; do
    want "$n" && out+=("$n=$PLUGINS/wasm32-wasip2/release/iii_policy_${n//-/_}.wasm")
  done
fi
if want rate-limit; then
  guest "$ROOT/plugins/Cargo.toml" wasm32-unknown-unknown "$PLUGINS" iii-policy-rate-limit
  out+=("rate-limit=$PLUGINS/wasm32-unknown-unknown/release/iii_policy_rate_limit.wasm")
fi
if want hostile; then
  guest "$ROOT/host/plugin-host/tests/fixtures/Cargo.toml" wasm32-wasip2 "$FIXTURES" fixture-hostile-policy
  out+=("hostile=$FIXTURES/wasm32-wasip2/release/fixture_hostile_policy.wasm")
fi
lang=()
want python-allowlist && lang+=(python-allowlist)
want js-tenant && lang+=(js-tenant)
if ((${#lang[@]})); then
  III_LANG_POLICIES="$LANG_OUT" bash "$HERE/build-lang.sh" "${lang[@]}" >&2
  for n in "${lang[@]}"; do out+=("$n=$LANG_OUT/$n.wasm"); done
fi

for line in "${out[@]}"; do
  [[ -f ${line#*=} ]] || die "${line%%=*}: ${line#*=} was not built"
  printf '%s\n' "$line"
done
