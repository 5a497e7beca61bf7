#!/usr/bin/env bash
# Installs what building and running iii needs on a fresh machine (Debian, Rust via rustup).
# Idempotent: a second run only checks. Test-only dependencies are installed by tests/run.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null || { echo "setup: cargo is required (install Rust with rustup)" >&2; exit 1; }

# WebAssembly components (plugins/) are built for wasm32-wasip2, Extism policy modules for
# wasm32-unknown-unknown. Check the files, not rustup's bookkeeping, which can disagree with
# what is on disk.
has_target() {
  local dir
  dir="$(rustc --print target-libdir --target "$1" 2>/dev/null)" || return 1
  compgen -G "$dir/libcore-*.rlib" >/dev/null
}
for target in wasm32-wasip2 wasm32-unknown-unknown; do
  if ! has_target "$target"; then
    command -v rustup >/dev/null || { echo "setup: the $target target is missing and rustup is not available to add it" >&2; exit 1; }
    # A concurrent rustup (another build on this machine) can make one attempt fail; retry once.
    rustup target add "$target" || { sleep 5; rustup target add "$target"; }
    has_target "$target" || { echo "setup: $target still missing after rustup target add" >&2; exit 1; }
  fi
done

# Real servers for the adapter tests (tests/tests/adapters): the fixtures start their own
# instances on scratch ports and directories; the system service is never used, so stop it.
need_pkg() {
  local bin="$1" pkg="$2"
  [ -x "$bin" ] && return 0
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
  # Debian starts the packaged service on install; the tests never use it.
  if command -v systemctl >/dev/null; then systemctl disable --now "$pkg" >/dev/null 2>&1 || true; fi
  [ -x "$bin" ] || { echo "setup: $pkg did not install $bin" >&2; exit 1; }
}
need_pkg /usr/sbin/rabbitmq-server rabbitmq-server
# The adapter tests (tests/tests/adapters) run a real redis-server on a free loopback port;
# the fixture spawns it itself, so the system service is never started here.
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  command -v apt-get >/dev/null || { echo "setup: redis-server is missing and apt-get is not available" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools
  # Debian's package starts the system service; the tests use their own servers.
  (command -v systemctl >/dev/null && systemctl disable --now redis-server >/dev/null 2>&1) || true
fi
