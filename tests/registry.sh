#!/usr/bin/env bash
# A throwaway OCI registry (Debian's docker-registry, i.e. distribution 2.8) on
# 127.0.0.1 for the image-pull tests. No TLS, no auth, delete enabled; its
# storage lives in the state dir and goes away on `stop`.
#
#   tests/registry.sh start   # installs docker-registry if missing, starts it (or
#                             # finds it running), prints host:port
#   tests/registry.sh url     # prints host:port of the running registry (exit 1 if none)
#   tests/registry.sh stop    # stops the registry this script started, removes its storage
#
# State dir: $III_REGISTRY_STATE, default ${TMPDIR:-/tmp}/iii-registry-<uid>
# (config.yml, pid, addr, log, storage/). The tests find the registry through
# III_REGISTRY=<host:port> (`export III_REGISTRY=$(tests/registry.sh start)`).
set -euo pipefail

state=${III_REGISTRY_STATE:-${TMPDIR:-/tmp}/iii-registry-$(id -u)}
pidf=$state/pid
addrf=$state/addr
logf=$state/log

log() { echo "registry.sh: $*" >&2; }

# The pid in the pid file, if that process is still our registry.
running_pid() {
  [[ -f $pidf ]] || return 1
  local pid
  pid=$(cat "$pidf")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  # The pid may have been reused by something else since: check it is ours.
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$state/config.yml" || return 1
  echo "$pid"
}

answers() {
  # /v2/ answers 200 with no auth configured.
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$1/v2/" 2>/dev/null) || true
  [[ $code == 200 ]]
}

install_registry() {
  command -v docker-registry >/dev/null && return 0
  log "installing docker-registry"
  local sudo_=""
  [[ $(id -u) -eq 0 ]] || sudo_="sudo"
  # Debian starts the packaged service unless policy-rc.d forbids it; the one on
  # :5000 is not ours and is left alone either way.
  $sudo_ apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends \
    docker-registry >&2
}

start() {
  if pid=$(running_pid) && [[ -f $addrf ]] && answers "$(cat "$addrf")"; then
    cat "$addrf"
    return 0
  fi
  # A registry of ours that does not answer (or stale files): start over.
  stop_quiet
  install_registry
  command -v curl >/dev/null || {
    log "curl is needed to probe the registry (apt-get install curl)"
    exit 1
  }
  mkdir -p "$state/storage"
  # Port 0: the kernel picks a free port; the registry logs which one. The
  # secret only signs upload state (one instance: any value will do).
  local secret
  secret=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
  cat >"$state/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $state/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:0
  secret: $secret
EOF
  : >"$logf"
  # setsid: the registry outlives this script and is not in its process group.
  setsid docker-registry serve "$state/config.yml" >>"$logf" 2>&1 </dev/null &
  local child=$!
  echo "$child" >"$pidf"
  local addr="" i
  for ((i = 0; i < 200; i++)); do
    # Liveness by pid, not running_pid: until the forked shell has exec'd the registry its
    # cmdline is still this script's, which a loaded machine shows for a while.
    if ! kill -0 "$child" 2>/dev/null || [[ $(awk '{print $3}' "/proc/$child/stat" 2>/dev/null) == Z ]]; then
      log "docker-registry exited; its log:"
      cat "$logf" >&2
      rm -f "$pidf"
      exit 1
    fi
    if [[ -z $addr ]]; then
      addr=$(grep -o 'listening on 127\.0\.0\.1:[0-9]*' "$logf" | head -1 | sed 's/listening on //') || true
    fi
    if [[ -n $addr ]] && answers "$addr"; then
      echo "$addr" >"$addrf"
      echo "$addr"
      return 0
    fi
    sleep 0.05
  done
  log "docker-registry did not answer on /v2/ within 10 s; its log:"
  cat "$logf" >&2
  stop_quiet
  exit 1
}

stop_quiet() {
  local pid i
  if pid=$(running_pid); then
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      [[ -d /proc/$pid ]] || break
      sleep 0.05
    done
    [[ -d /proc/$pid ]] && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$state/storage" "$pidf" "$addrf"
}

case ${1:-} in
  start) start ;;
  stop) stop_quiet ;;
  url)
    if running_pid >/dev/null && [[ -f $addrf ]]; then
      cat "$addrf"
    else
      log "not running (tests/registry.sh start)"
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 start|stop|url" >&2
    exit 2
    ;;
esac
