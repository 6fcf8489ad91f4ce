#!/usr/bin/env bash
# swift-saio.sh - single-node OpenStack Swift ("Swift All In One") on
# loopback for CI: 1 replica, tempauth + tempurl, storage in a plain directory.
#
# photo-api's copy of the team's swift-saio.sh, plus an `install` command:
# CI runs `ops/swift-saio.sh install` as root before the tests, and the test
# fixture (tests/swift/conftest.py) runs `start DIR` / `stop DIR` itself, on
# free ports in a temporary DIR, with SWIFT_SAIO_TEMPURL_KEY set.
#
# Usage:  swift-saio.sh [install|start|stop|restart|status|env|selftest|reset] [DIR]
#
#   install   only install the missing Debian packages (needs root or
#             passwordless sudo when something is missing; a no-op otherwise)
#   start     (default) install missing Debian packages, write configs to
#             DIR/etc, build rings, start memcached + account/container/object/
#             proxy servers, wait until a real PUT works, print `export ...`
#             lines on stdout (all progress goes to stderr), e.g.
#                 swift-saio.sh start > /tmp/swift.sh && . /tmp/swift.sh
#             (plain `eval "$(swift-saio.sh start)"` would hide a failure).
#             Idempotent: when the same configuration is already up and
#             healthy it only prints the environment again.
#   stop      stop the processes this script started in DIR (by pid file; the
#             process start time is checked too, so a reused pid is never hit)
#   restart   stop + start
#   status    show each process and the health checks
#   env       print the environment again (export lines); DIR/swift.env has
#             plain KEY=VALUE lines (for $GITHUB_ENV or docker --env-file)
#   selftest  curl-based end-to-end check (auth, PUT/chunked PUT/GET/HEAD/
#             DELETE, TempURL GET+PUT with sha1/sha256/sha512)
#   reset     stop and delete DIR entirely
#
# DIR defaults to $SWIFT_SAIO_DIR or ${TMPDIR:-/tmp}/swift-saio.
#
# Knobs (environment):
#   SWIFT_SAIO_BIND_IP=127.0.0.1
#   SWIFT_SAIO_PROXY_PORT=8080   SWIFT_SAIO_OBJECT_PORT=6200
#   SWIFT_SAIO_CONTAINER_PORT=6201  SWIFT_SAIO_ACCOUNT_PORT=6202
#   SWIFT_SAIO_MEMCACHED_PORT=11311  (not 11211, to stay clear of a system memcached)
#   SWIFT_SAIO_PART_POWER=8
#   SWIFT_SAIO_ACCOUNT=test SWIFT_SAIO_USER=tester SWIFT_SAIO_KEY=testing
#   SWIFT_SAIO_TEMPURL_KEY=        if set, stored as X-Account-Meta-Temp-URL-Key
#   SWIFT_SAIO_UPDATERS=0          1 = also run container-/object-updater
#                                  (needed only for up-to-date account-level
#                                  object/byte counts; +2 processes)
#   SWIFT_SAIO_FRESH=0             1 = wipe stored objects/DBs on start
#   SWIFT_SAIO_TIMEOUT=90          seconds to wait for readiness
#   SWIFT_SAIO_INSTALL=auto        auto = apt-get install what is missing; never
#   SWIFT_SAIO_PACKAGES="python3-swift memcached curl python3-swiftclient"
#                                  (the swift/swift-proxy/... server packages are
#                                  not needed: wrappers, units and extra deps only)
#   SWIFT_SAIO_PYTHON=/usr/bin/python3   must be the interpreter python3-swift is for
# The knobs from BIND_IP to UPDATERS are saved in DIR/settings.env and reused
# by later commands on the same DIR (environment > saved > built-in default).
set -Eeuo pipefail

CMD=${1:-start}
[ $# -gt 0 ] && shift
DIR=${1:-${SWIFT_SAIO_DIR:-${TMPDIR:-/tmp}/swift-saio}}

# Settings of an instance are saved in DIR/settings.env at start; for every
# command they are the defaults (precedence: environment > saved > built-in),
# so stop/status/env/selftest/restart need no environment.
SAVED_KNOBS="BIND_IP PROXY_PORT OBJECT_PORT CONTAINER_PORT ACCOUNT_PORT MEMCACHED_PORT PART_POWER ACCOUNT USER KEY TEMPURL_KEY UPDATERS"
if [ -f "$DIR/settings.env" ]; then
  while IFS='=' read -r _k _v; do
    case " $SAVED_KNOBS " in *" ${_k#SWIFT_SAIO_} "*)
      if [ -z "${!_k+x}" ]; then printf -v "$_k" '%s' "$_v"; fi ;;
    esac
  done < "$DIR/settings.env"
fi

BIND_IP=${SWIFT_SAIO_BIND_IP:-127.0.0.1}
PROXY_PORT=${SWIFT_SAIO_PROXY_PORT:-8080}
OBJECT_PORT=${SWIFT_SAIO_OBJECT_PORT:-6200}
CONTAINER_PORT=${SWIFT_SAIO_CONTAINER_PORT:-6201}
ACCOUNT_PORT=${SWIFT_SAIO_ACCOUNT_PORT:-6202}
MEMCACHED_PORT=${SWIFT_SAIO_MEMCACHED_PORT:-11311}
PART_POWER=${SWIFT_SAIO_PART_POWER:-8}
S_ACCOUNT=${SWIFT_SAIO_ACCOUNT:-test}
S_USER=${SWIFT_SAIO_USER:-tester}
S_KEY=${SWIFT_SAIO_KEY:-testing}
TEMPURL_KEY=${SWIFT_SAIO_TEMPURL_KEY:-}
UPDATERS=${SWIFT_SAIO_UPDATERS:-0}
FRESH=${SWIFT_SAIO_FRESH:-0}
TIMEOUT=${SWIFT_SAIO_TIMEOUT:-90}
INSTALL=${SWIFT_SAIO_INSTALL:-auto}
PACKAGES=${SWIFT_SAIO_PACKAGES:-python3-swift memcached curl python3-swiftclient}
PY=${SWIFT_SAIO_PYTHON:-/usr/bin/python3}

# Probe identity (a separate account, so the test account stays empty).
PROBE_USER="saioprobe:probe"
PROBE_KEY="probe-$(printf '%s' "$DIR" | cksum | cut -d' ' -f1)"

log() { printf '[swift-saio] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

abs_dir() { # make DIR absolute (creating it only when asked to)
  if [ "${1:-}" = create ]; then mkdir -p "$DIR"; fi
  if [ -d "$DIR" ]; then DIR=$(cd "$DIR" && pwd -P); fi
  ETC=$DIR/etc; DATA=$DIR/data; LOGD=$DIR/log; RUND=$DIR/run; BIN=$DIR/bin
}

services() {
  echo memcached account container object proxy
  if [ "$UPDATERS" = 1 ]; then echo container-updater object-updater; fi
}
all_known_services() { echo proxy container-updater object-updater object container account memcached; }

# ---------------------------------------------------------------- processes
# pid files hold "PID STARTTIME" (field 22 of /proc/PID/stat), so that a
# recycled pid is never mistaken for one of ours.
stat_field() { # $1 pid, $2 index after "pid (comm) ": 0 = state, 19 = starttime
  local s fields
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }   # comm may contain spaces; it ends at the last ')'
  read -r -a fields <<< "$s"
  echo "${fields[$2]}"
}
starttime_of() { stat_field "$1" 19; }
state_of() { stat_field "$1" 0; }

pid_of() { # prints pid if service $1 is running (ours), else fails
  local f=$RUND/$1.pid pid st cur state
  [ -f "$f" ] || return 1
  read -r pid st < "$f" || return 1
  [ -n "${pid:-}" ] && [ -n "${st:-}" ] || return 1
  cur=$(starttime_of "$pid") || return 1
  [ "$cur" = "$st" ] || return 1
  state=$(state_of "$pid") || return 1
  [ "$state" != Z ] && [ "$state" != X ] || return 1
  echo "$pid"
}

stop_one() {
  local name=$1 pid _
  if pid=$(pid_of "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do pid_of "$name" >/dev/null || break; sleep 0.1; done
    if pid_of "$name" >/dev/null; then
      log "$name (pid $pid) ignored SIGTERM for 10s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do pid_of "$name" >/dev/null || break; sleep 0.1; done
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$RUND/$name.pid"
}

stop_all() {
  local s
  [ -d "$RUND" ] || return 0
  for s in $(all_known_services); do stop_one "$s"; done
}

start_bg() { # $1 name, rest: command
  local name=$1; shift
  nohup "$@" >> "$LOGD/$name.log" 2>&1 < /dev/null &
  local pid=$!
  local st; st=$(starttime_of "$pid") || st=0
  echo "$pid $st" > "$RUND/$name.pid"
}

tail_log() { if [ -f "$LOGD/$1.log" ]; then tail -n 25 "$LOGD/$1.log" | sed "s/^/[$1.log] /" >&2; fi; }

# ---------------------------------------------------------------- install
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo "$@"
  else die "need root (or passwordless sudo) to run: $*"; fi
}

ensure_packages() {
  local missing=() p
  for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then return 0; fi
  [ "$INSTALL" = auto ] || die "missing packages: ${missing[*]} (SWIFT_SAIO_INSTALL=$INSTALL)"
  log "installing: ${missing[*]}"
  local t0; t0=$(now)
  # Keep maintainer scripts from starting system services (Debian's memcached
  # would grab 11211; swift-* units would try /etc/swift) unless a policy exists.
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
    made_policy=1
    trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  local rc=0 aptopts=(-y -q --no-install-recommends -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -q -o Acquire::Retries=3 -o DPkg::Lock::Timeout=300 update >&2 || rc=$?
  if [ $rc -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install "${aptopts[@]}" "${missing[@]}" >&2 || rc=$?
  fi
  if [ $made_policy = 1 ]; then as_root rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  [ $rc -eq 0 ] || die "apt-get failed (rc=$rc)"
  log "packages installed in $(elapsed "$t0")s"
}

preflight() {
  [ -x "$PY" ] || die "$PY not found (SWIFT_SAIO_PYTHON)"
  "$PY" -c 'import swift, eventlet' 2>/dev/null \
    || die "$PY cannot import swift (python3-swift is built for Debian's /usr/bin/python3)"
  command -v memcached >/dev/null || die "memcached not found"
  command -v curl >/dev/null || die "curl not found"
  mkdir -p "$DATA/d1"
  "$PY" - "$DATA/d1" <<'EOF' || die "the filesystem under $DATA lacks user xattrs (Swift needs them); use another SWIFT_SAIO_DIR"
import os, sys, tempfile
fd, p = tempfile.mkstemp(dir=sys.argv[1])
try:
    os.setxattr(p, 'user.swift.saio-check', b'1')
    assert os.getxattr(p, 'user.swift.saio-check') == b'1'
finally:
    os.close(fd); os.unlink(p)
EOF
}

check_ports_free() {
  "$PY" - "$BIND_IP" "$@" <<'EOF' || die "port(s) already in use on $BIND_IP (see above); set SWIFT_SAIO_*_PORT"
import socket, sys
ip, bad = sys.argv[1], []
for p in sys.argv[2:]:
    s = socket.socket(socket.AF_INET6 if ':' in ip else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((ip, int(p)))
    except OSError as e:
        bad.append(p); print('[swift-saio] port %s: %s' % (p, e), file=sys.stderr)
    finally:
        s.close()
sys.exit(1 if bad else 0)
EOF
}

# ---------------------------------------------------------------- configs
CHANGED=0
write_file() { # $1 path; content on stdin; sets CHANGED=1 if different
  local tmp; tmp=$(mktemp "$1.XXXXXX")
  cat > "$tmp"; chmod 644 "$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; CHANGED=1; fi
}

url_host() { case $BIND_IP in *:*) echo "[$BIND_IP]";; *) echo "$BIND_IP";; esac; }

write_configs() {
  mkdir -p "$ETC" "$DATA/d1" "$LOGD" "$RUND" "$BIN" "$DIR/cache"
  local me; me=$(id -un)
  local saved=$CHANGED
  printf '%s\n' "SWIFT_SAIO_BIND_IP=$BIND_IP" "SWIFT_SAIO_PROXY_PORT=$PROXY_PORT" \
    "SWIFT_SAIO_OBJECT_PORT=$OBJECT_PORT" "SWIFT_SAIO_CONTAINER_PORT=$CONTAINER_PORT" \
    "SWIFT_SAIO_ACCOUNT_PORT=$ACCOUNT_PORT" "SWIFT_SAIO_MEMCACHED_PORT=$MEMCACHED_PORT" \
    "SWIFT_SAIO_PART_POWER=$PART_POWER" "SWIFT_SAIO_ACCOUNT=$S_ACCOUNT" "SWIFT_SAIO_USER=$S_USER" \
    "SWIFT_SAIO_KEY=$S_KEY" "SWIFT_SAIO_TEMPURL_KEY=$TEMPURL_KEY" "SWIFT_SAIO_UPDATERS=$UPDATERS" \
    | write_file "$DIR/settings.env"
  CHANGED=$saved   # settings only matter through the files below

  write_file "$BIN/swift_saio_server.py" <<'EOF'
"""Run one Swift server/daemon in the foreground with swift.conf, rings and
all other config taken from $SWIFT_SAIO_ETC (not /etc/swift).
Usage: swift_saio_server.py SERVER CONF_FILE [-v]
SERVER: proxy-server|account-server|container-server|object-server|
        container-updater|object-updater"""
import logging
import os
import sys


def _saio_logging(adapted_logger):
    """Drop the syslog handler (no /dev/log in containers; don't spam a host
    syslog either) and put a timestamp on the stderr (-v) handler."""
    from swift.common import utils
    logger = adapted_logger.logger
    syslog = getattr(utils.get_logger, 'handler4logger', {}).get(logger)
    if syslog is not None:
        logger.removeHandler(syslog)
    for h in logger.handlers:
        if isinstance(h, logging.StreamHandler) and \
                not getattr(h, '_saio_fmt', False):
            h.setFormatter(utils.SwiftLogFormatter(
                fmt='%(asctime)s %(server)s: %(message)s'))
            h._saio_fmt = True
    return adapted_logger


def _wrap_get_logger():
    # Wrapping (instead of log_custom_handlers) also covers the proxy's
    # access logger, which is built from a filtered copy of the config.
    from swift.common import utils
    orig = utils.get_logger

    def get_logger(*args, **kwargs):
        return _saio_logging(orig(*args, **kwargs))
    utils.get_logger = get_logger


def main():
    server = sys.argv.pop(1)
    try:
        os.setsid()   # own session: not killed with the caller's job/group
    except OSError:
        pass
    from swift.common import utils
    _wrap_get_logger()  # before anything does "from ...utils import get_logger"
    utils.set_swift_dir(os.environ['SWIFT_SAIO_ETC'])  # swift.conf location
    from swift.common import constraints, storage_policy
    storage_policy.reload_storage_policies()
    constraints.reload_constraints()
    if server.endswith('-server'):
        from swift.common.wsgi import run_wsgi
        conf_file, options = utils.parse_options()
        kwargs = dict(options)
        if server == 'object-server':
            from swift.obj import server as object_server
            kwargs['global_conf_callback'] = object_server.global_conf_callback
        return run_wsgi(conf_file, server, **kwargs)
    from swift.common.daemon import run_daemon
    conf_file, options = utils.parse_options(once=True)
    if server == 'container-updater':
        from swift.container.updater import ContainerUpdater as klass
    elif server == 'object-updater':
        from swift.obj.updater import ObjectUpdater as klass
    else:
        sys.exit('unknown server %r' % server)
    run_daemon(klass, conf_file, **options)
    return 0


if __name__ == '__main__':
    sys.exit(main())
EOF

  write_file "$ETC/swift.conf" <<EOF
[swift-hash]
swift_hash_path_prefix = saio-prefix
swift_hash_path_suffix = saio-suffix

[storage-policy:0]
name = Policy-0
default = yes

[swift-constraints]
EOF

  local common
  common="bind_ip = $BIND_IP
workers = 0
user = $me
swift_dir = $ETC
devices = $DATA
mount_check = false
disable_fallocate = true
fallocate_reserve = 0
recon_cache_path = $DIR/cache
log_level = INFO
"

  write_file "$ETC/account-server.conf" <<EOF
[DEFAULT]
bind_port = $ACCOUNT_PORT
$common

[pipeline:main]
pipeline = healthcheck account-server

[app:account-server]
use = egg:swift#account

[filter:healthcheck]
use = egg:swift#healthcheck
EOF

  write_file "$ETC/container-server.conf" <<EOF
[DEFAULT]
bind_port = $CONTAINER_PORT
$common

[pipeline:main]
pipeline = healthcheck container-server

[app:container-server]
use = egg:swift#container

[filter:healthcheck]
use = egg:swift#healthcheck

[container-updater]
interval = 2
EOF

  write_file "$ETC/object-server.conf" <<EOF
[DEFAULT]
bind_port = $OBJECT_PORT
$common

[pipeline:main]
pipeline = healthcheck object-server

[app:object-server]
use = egg:swift#object

[filter:healthcheck]
use = egg:swift#healthcheck

[object-updater]
interval = 2
EOF

  local users="user_${S_ACCOUNT}_${S_USER} = ${S_KEY} .admin"
  [ "${S_ACCOUNT}_${S_USER}" = test_tester2 ] || users+=$'\n'"user_test_tester2 = testing2 .admin"
  [ "${S_ACCOUNT}_${S_USER}" = test_tester3 ] || users+=$'\n'"user_test_tester3 = testing3"
  [ "${S_ACCOUNT}_${S_USER}" = test2_tester2 ] || users+=$'\n'"user_test2_tester2 = testing2 .admin"
  users+=$'\n'"user_${PROBE_USER%%:*}_${PROBE_USER##*:} = ${PROBE_KEY} .admin"

  write_file "$ETC/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = $BIND_IP
bind_port = $PROXY_PORT
workers = 0
user = $me
swift_dir = $ETC
log_level = INFO

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl tempauth copy slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:tempauth]
use = egg:swift#tempauth
reseller_prefix = AUTH
token_life = 86400
$users

[filter:tempurl]
use = egg:swift#tempurl

[filter:cache]
use = egg:swift#memcache
memcache_servers = $(url_host):$MEMCACHED_PORT

[filter:healthcheck]
use = egg:swift#healthcheck
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
allow_versioned_writes = true
[filter:symlink]
use = egg:swift#symlink
EOF
}

build_rings() {
  local stamp="pp=$PART_POWER ip=$BIND_IP a=$ACCOUNT_PORT c=$CONTAINER_PORT o=$OBJECT_PORT dev=d1"
  if [ -f "$ETC/ring.stamp" ] && [ "$(cat "$ETC/ring.stamp")" = "$stamp" ] \
     && [ -f "$ETC/account.ring.gz" ] && [ -f "$ETC/container.ring.gz" ] && [ -f "$ETC/object.ring.gz" ]; then
    return 0
  fi
  local t0; t0=$(now)
  # Same result as: swift-ring-builder X.builder create PP 1 1;
  #   ... add r1z1-IP:PORT/d1 100; ... rebalance  (but one interpreter start
  #   instead of nine, ~1s instead of ~7s; swift-ring-builder lives in the
  #   'swift' package, which this script does not need).
  "$PY" - "$ETC" "$PART_POWER" "$BIND_IP" "$ACCOUNT_PORT" "$CONTAINER_PORT" "$OBJECT_PORT" <<'EOF' >&2
import os, sys
from swift.common.ring import RingBuilder
etc, pp, ip = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ports = dict(zip(('account', 'container', 'object'), map(int, sys.argv[4:7])))
for kind, port in ports.items():
    b = RingBuilder(pp, 1, 1)          # part_power, replicas, min_part_hours
    b.add_dev({'id': 0, 'region': 1, 'zone': 1, 'ip': ip, 'port': port,
               'device': 'd1', 'weight': 100, 'meta': ''})
    b.rebalance()
    for path, obj in ((kind + '.builder', b), (kind + '.ring.gz', b.get_ring())):
        tmp = os.path.join(etc, '.tmp.' + path)
        obj.save(tmp)
        os.rename(tmp, os.path.join(etc, path))
EOF
  echo "$stamp" > "$ETC/ring.stamp"
  CHANGED=1
  log "rings built in $(elapsed "$t0")s (part power $PART_POWER, 1 replica)"
}

# ---------------------------------------------------------------- env
proxy_url() { echo "http://$(url_host):$PROXY_PORT"; }

env_lines() {
  local base; base=$(proxy_url)
  cat <<EOF
SWIFT_AUTH_URL=$base/auth/v1.0
SWIFT_USER=$S_ACCOUNT:$S_USER
SWIFT_KEY=$S_KEY
SWIFT_STORAGE_URL=$base/v1/AUTH_$S_ACCOUNT
SWIFT_ACCOUNT=AUTH_$S_ACCOUNT
SWIFT_PROXY_URL=$base
ST_AUTH=$base/auth/v1.0
ST_USER=$S_ACCOUNT:$S_USER
ST_KEY=$S_KEY
SWIFT_SAIO_DIR=$DIR
EOF
  if [ -n "$TEMPURL_KEY" ]; then echo "SWIFT_TEMPURL_KEY=$TEMPURL_KEY"; fi
}

print_env() {
  env_lines > "$DIR/swift.env"
  sed 's/^/export /' "$DIR/swift.env"
}

# ---------------------------------------------------------------- health
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@" 2>/dev/null || true; }
http_code_to() { local f=$1; shift; curl -s -o "$f" -w '%{http_code}' --max-time 30 "$@" 2>/dev/null || true; }

healthy_http() {
  local p
  for p in "$PROXY_PORT" "$ACCOUNT_PORT" "$CONTAINER_PORT" "$OBJECT_PORT"; do
    [ "$(http_code "http://$(url_host):$p/healthcheck")" = 200 ] || return 1
  done
}

memcached_up() { timeout 2 bash -c "exec 3<>/dev/tcp/$BIND_IP/$MEMCACHED_PORT" 2>/dev/null; }

all_running() { local s; for s in $(services); do pid_of "$s" >/dev/null || return 1; done; }

auth_get() { # $1 user $2 key -> "TOKEN URL" on stdout
  local hdr tok url
  hdr=$(curl -s -D - -o /dev/null --max-time 10 -H "X-Auth-User: $1" -H "X-Auth-Key: $2" "$(proxy_url)/auth/v1.0" | tr -d '\r') || return 1
  tok=$(printf '%s\n' "$hdr" | awk 'tolower($1)=="x-auth-token:" {print $2}')
  url=$(printf '%s\n' "$hdr" | awk 'tolower($1)=="x-storage-url:" {print $2}')
  [ -n "$tok" ] && [ -n "$url" ] || return 1
  echo "$tok $url"
}

e2e_probe() { # full write path through proxy/account/container/object + memcached
  local a tok url c
  a=$(auth_get "$PROBE_USER" "$PROBE_KEY") || return 1
  tok=${a%% *}; url=${a#* }
  c="$url/saio-probe"
  case $(http_code -X PUT -H "X-Auth-Token: $tok" "$c") in 201|202) ;; *) return 1 ;; esac
  [ "$(http_code -X PUT -H "X-Auth-Token: $tok" --data-binary probe "$c/o")" = 201 ] || return 1
  [ "$(curl -s --max-time 5 -H "X-Auth-Token: $tok" "$c/o")" = probe ] || return 1
  http_code -X DELETE -H "X-Auth-Token: $tok" "$c/o" >/dev/null
  http_code -X DELETE -H "X-Auth-Token: $tok" "$c" >/dev/null
  return 0
}

wait_ready() {
  local t0=$1 deadline s stage=health
  deadline=$(awk -v a="$(now)" -v t="$TIMEOUT" 'BEGIN { printf "%d", a + t }')
  while :; do
    for s in $(services); do
      if ! pid_of "$s" >/dev/null; then tail_log "$s"; die "$s exited during startup (log: $LOGD/$s.log)"; fi
    done
    if [ $stage = health ] && healthy_http; then
      log "all servers answer /healthcheck after $(elapsed "$t0")s"; stage=probe
    fi
    if [ $stage = probe ] && e2e_probe; then
      log "first successful auth + PUT + GET after $(elapsed "$t0")s"; return 0
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      for s in $(services); do tail_log "$s"; done
      die "not ready after ${TIMEOUT}s (stage: $stage)"
    fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------- commands
do_start() {
  local t_all; t_all=$(now)
  abs_dir create
  ensure_packages
  preflight
  write_configs
  build_rings
  if [ "$CHANGED" = 0 ] && [ "$FRESH" != 1 ] && all_running && healthy_http && e2e_probe; then
    log "already running with the same configuration in $DIR"
  else
    stop_all
    if [ "$FRESH" = 1 ]; then rm -rf "${DATA:?}"/* "$DIR/cache"/*; mkdir -p "$DATA/d1"; log "wiped stored data"; fi
    check_ports_free "$MEMCACHED_PORT" "$PROXY_PORT" "$ACCOUNT_PORT" "$CONTAINER_PORT" "$OBJECT_PORT"
    local t0; t0=$(now)
    local mcuser=(); [ "$(id -u)" = 0 ] && mcuser=(-u root)
    # (exec'd through python only to give it its own session, like the servers; pid is kept)
    start_bg memcached "$PY" -c 'import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])' \
      memcached "${mcuser[@]}" -l "$BIND_IP" -p "$MEMCACHED_PORT" -U 0 -m 64 -c 1024
    # the proxy error-limits memcached for 60s after repeated failures: start it first
    local _; for _ in $(seq 1 50); do memcached_up && break; pid_of memcached >/dev/null || break; sleep 0.1; done
    memcached_up || { tail_log memcached; die "memcached did not start"; }
    local s
    for s in account container object proxy; do
      start_bg "$s" env SWIFT_SAIO_ETC="$ETC" "$PY" "$BIN/swift_saio_server.py" "$s-server" "$ETC/$s-server.conf" -v
    done
    if [ "$UPDATERS" = 1 ]; then
      start_bg container-updater env SWIFT_SAIO_ETC="$ETC" "$PY" "$BIN/swift_saio_server.py" container-updater "$ETC/container-server.conf" -v
      start_bg object-updater env SWIFT_SAIO_ETC="$ETC" "$PY" "$BIN/swift_saio_server.py" object-updater "$ETC/object-server.conf" -v
    fi
    wait_ready "$t0"
  fi
  if [ -n "$TEMPURL_KEY" ]; then
    local a; a=$(auth_get "$S_ACCOUNT:$S_USER" "$S_KEY") || die "auth failed"
    [ "$(http_code -X POST -H "X-Auth-Token: ${a%% *}" -H "X-Account-Meta-Temp-URL-Key: $TEMPURL_KEY" "${a#* }")" = 204 ] \
      || die "could not set the TempURL key"
  fi
  log "Swift is up: $(proxy_url)  user $S_ACCOUNT:$S_USER / $S_KEY  (total $(elapsed "$t_all")s, logs in $LOGD)"
  print_env
}

do_status() {
  abs_dir
  local s pid rc=0
  for s in $(services); do
    if pid=$(pid_of "$s" 2>/dev/null); then
      printf '%-18s running  pid %-7s rss %s KiB\n' "$s" "$pid" "$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")"
    else printf '%-18s stopped\n' "$s"; rc=1; fi
  done
  for s in "proxy:$PROXY_PORT" "account:$ACCOUNT_PORT" "container:$CONTAINER_PORT" "object:$OBJECT_PORT"; do
    printf '%-18s /healthcheck -> %s\n' "${s%%:*}" "$(http_code "http://$(url_host):${s#*:}/healthcheck")"
  done
  return $rc
}

do_selftest() {
  abs_dir
  all_running || die "not running (start it first)"
  local fails=0 tmp a tok url c code
  tmp=$(mktemp -d)
  ok() { printf '  PASS %s\n' "$*" >&2; }
  bad() { printf '  FAIL %s\n' "$*" >&2; fails=$((fails + 1)); }
  expect() { # $1 label $2 wanted-regex $3 got
    if [[ $3 =~ ^($2)$ ]]; then ok "$1 ($3)"; else bad "$1 (got $3, want $2)"; fi
  }
  a=$(auth_get "$S_ACCOUNT:$S_USER" "$S_KEY") || die "auth v1 failed"
  tok=${a%% *}; url=${a#* }
  ok "auth v1.0: X-Auth-Token ${tok:0:10}..., X-Storage-Url $url"
  c="$url/saio-selftest-$$"
  expect "PUT container" '201|202' "$(http_code -X PUT -H "X-Auth-Token: $tok" "$c")"
  printf 'hello swift\n' > "$tmp/small"
  head -c 3000000 /dev/urandom > "$tmp/big"
  expect "PUT object (Content-Length)" 201 "$(http_code -X PUT -H "X-Auth-Token: $tok" --data-binary @"$tmp/small" "$c/small.txt")"
  expect "PUT object (Transfer-Encoding: chunked, 3 MB)" 201 \
    "$(http_code -X PUT -H "X-Auth-Token: $tok" -H 'Transfer-Encoding: chunked' -H 'Content-Type: application/octet-stream' --data-binary @"$tmp/big" "$c/big.bin")"
  curl -s --max-time 30 -H "X-Auth-Token: $tok" -o "$tmp/got" "$c/big.bin"
  if cmp -s "$tmp/big" "$tmp/got"; then ok "GET chunked object: content matches"; else bad "GET chunked object: content differs"; fi
  local hdr; hdr=$(curl -s -I --max-time 5 -H "X-Auth-Token: $tok" "$c/small.txt" | tr -d '\r')
  local etag; etag=$(printf '%s\n' "$hdr" | awk 'tolower($1)=="etag:" {print $2}')
  if [ "$etag" = "$(md5sum < "$tmp/small" | cut -d' ' -f1)" ] && printf '%s\n' "$hdr" | grep -qi '^content-length: 12$'; then
    ok "HEAD object: Etag = md5, Content-Length 12"; else bad "HEAD object: $hdr"; fi
  code=$(curl -s --max-time 5 -H "X-Auth-Token: $tok" "$c?format=json")
  if [[ $code == *'"name": "big.bin"'* && $code == *'"name": "small.txt"'* ]]; then ok "container listing (json)"; else bad "listing: $code"; fi
  # TempURL
  local key=${TEMPURL_KEY:-selftest-key-$$} path=${c#*://*/}
  path=/$path
  [ -n "$TEMPURL_KEY" ] || expect "POST X-Account-Meta-Temp-URL-Key" 204 \
    "$(http_code -X POST -H "X-Auth-Token: $tok" -H "X-Account-Meta-Temp-URL-Key: $key" "$url")"
  sig() { # $1 method $2 object-path $3 digest [$4 key] [$5 ttl]
    "$PY" - "$1" "$2" "$3" "${4:-$key}" "${5:-300}" <<'EOF'
import base64, hashlib, hmac, sys, time
method, path, algo, key, ttl = sys.argv[1:6]
exp = int(time.time()) + int(ttl)
d = hmac.new(key.encode(), ('%s\n%d\n%s' % (method, exp, path)).encode(), getattr(hashlib, algo))
s = d.hexdigest() if algo in ('sha1', 'sha256') else algo + ':' + base64.urlsafe_b64encode(d.digest()).decode()
print('temp_url_sig=%s&temp_url_expires=%d' % (s, exp))
EOF
  }
  local base=${url%%/v1/*} alg
  for alg in sha256 sha1 sha512; do
    code=$(http_code_to "$tmp/tu" "$base$path/big.bin?$(sig GET "$path/big.bin" "$alg")")
    if [ "$code" = 200 ] && cmp -s "$tmp/tu" "$tmp/big"; then ok "TempURL GET ($alg): 200, content matches"; else bad "TempURL GET ($alg): $code"; fi
  done
  expect "TempURL PUT (sha256)" 201 "$(http_code -X PUT --data-binary 'via tempurl' "$base$path/tu.txt?$(sig PUT "$path/tu.txt" sha256)")"
  expect "TempURL PUT chunked (sha256)" 201 "$(http_code -X PUT -H 'Transfer-Encoding: chunked' --data-binary @"$tmp/small" "$base$path/tu2.txt?$(sig PUT "$path/tu2.txt" sha256)")"
  if [ "$(curl -s --max-time 5 -H "X-Auth-Token: $tok" "$c/tu.txt")" = 'via tempurl' ]; then
    ok "object written via TempURL reads back"; else bad "TempURL PUT content"; fi
  expect "TempURL with wrong key -> 401" 401 "$(http_code "$base$path/big.bin?$(sig GET "$path/big.bin" sha256 wrong-key)")"
  expect "TempURL expired -> 401" 401 "$(http_code "$base$path/big.bin?$(sig GET "$path/big.bin" sha256 "$key" -10)")"
  expect "TempURL GET sig used for PUT -> 401" 401 "$(http_code -X PUT --data-binary x "$base$path/big.bin?$(sig GET "$path/big.bin" sha256)")"
  # cleanup + DELETE checks
  for o in small.txt big.bin tu.txt tu2.txt; do
    expect "DELETE $o" 204 "$(http_code -X DELETE -H "X-Auth-Token: $tok" "$c/$o")"
  done
  expect "GET deleted object -> 404" 404 "$(http_code -H "X-Auth-Token: $tok" "$c/small.txt")"
  expect "DELETE container" 204 "$(http_code -X DELETE -H "X-Auth-Token: $tok" "$c")"
  [ -n "$TEMPURL_KEY" ] || http_code -X POST -H "X-Auth-Token: $tok" -H "X-Remove-Account-Meta-Temp-URL-Key: x" "$url" >/dev/null
  expect "invalid token -> 401" 401 "$(http_code -H "X-Auth-Token: AUTH_tkbogus" "$url")"
  code=$(http_code -X POST -H 'Content-Type: application/json' \
    -d "{\"auth\":{\"passwordCredentials\":{\"username\":\"$S_ACCOUNT:$S_USER\",\"password\":\"$S_KEY\"}}}" "$base/v2.0/tokens")
  printf '  INFO POST /v2.0/tokens (Keystone v2) -> %s (not offered by tempauth)\n' "$code" >&2
  rm -rf "$tmp"
  if [ $fails -eq 0 ]; then log "selftest: all checks passed"; else die "selftest: $fails check(s) failed"; fi
}

case $CMD in
  install) ensure_packages; log "packages present: $PACKAGES" ;;
  start) do_start ;;
  stop) abs_dir; stop_all; log "stopped (data kept in $DIR/data)" ;;
  restart) abs_dir; stop_all; do_start ;;
  status) do_status ;;
  env) abs_dir; [ -d "$DIR" ] || die "no $DIR"; print_env ;;
  selftest) do_selftest ;;
  reset) abs_dir; stop_all; if [ -d "$DIR" ]; then rm -rf "$DIR"; fi; log "removed $DIR" ;;
  -h|--help|help) sed -n '2,/^set -Eeuo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) die "unknown command '$CMD' (install|start|stop|restart|status|env|selftest|reset)" ;;
esac
