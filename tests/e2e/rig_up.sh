#!/bin/bash
# Bring up the shared OpenStack Zed rig (../shared/rig/openstack, beside this repo) for the e2e tests.
# Idempotent: safe to run again while the rig is up (already-running services are left alone).
#
# Pre-steps done here (the shared rig itself is not edited):
#  1. mkdir -p /etc/mysql/mariadb.conf.d: up.sh writes 99-rig.cnf there, and this machine's MariaDB
#     package config was trimmed to a bare /etc/mysql/my.cnf (no conf.d dirs), so up.sh died on line 43.
#  2. When a MariaDB is already running (started by the machine, not by up.sh), up.sh reuses it and
#     99-rig.cnf is never read (my.cnf has no !includedir either): raise max_connections at runtime
#     to the value the rig asks for (the default 151 is tight for ~15 OpenStack processes with pools).
#  3. The rig's nova.conf says compute_driver = rig_fake_driver.RigFakeDriver, but nova (Zed) loads
#     'nova.virt.' + compute_driver, and up.sh copies rig_fake_driver.py to the top level of
#     /usr/local/lib/python3.11/dist-packages. So nova-compute died at start with
#     "No module named 'nova.virt.rig_fake_driver'" (no hypervisor, no nova-compute service; up.sh
#     then spins ~10 min in its wait loops and still reports UP). Fix: a one-line shim module
#     nova/virt/rig_fake_driver.py that re-exports the rig's driver.
#  4. (after up.sh) up.sh runs nova-api as uwsgi --threads 4; nova-api monkey-patches eventlet, and each
#     uwsgi thread gets its own eventlet hub, so the RPC reply waiter only runs while the thread that
#     created it is busy: nova-api -> nova-compute RPC *calls* (volume attach's reserve_block_device_name,
#     hypervisor uptime, which GET /os-hypervisors/detail makes at microversion >= 2.88, i.e.
#     openstacksdk's hypervisors(details=True)) randomly hang 60 s and then answer 500 MessagingTimeout.
#     Fix: restart only nova-api with the same command line but --threads 1 (same pid file, so down.sh
#     and up.sh still manage it).
#
# Env: RIG_DIR (default: the shared rig beside the repo), RIG_SKIP_INSTALL=1 is passed through to up.sh.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
RIG_DIR=${RIG_DIR:-$(cd "$HERE/../../../shared/rig/openstack" && pwd)}
KEYSTONE_URL=${KEYSTONE_URL:-http://127.0.0.1:5000/v3}
KEYSTONE_TIMEOUT=${KEYSTONE_TIMEOUT:-120}

say() { echo "[rig_up $(date +%T)] $*"; }
T0=$(date +%s)

# ---------------------------------------------------------------- pre-steps
mkdir -p /etc/mysql/mariadb.conf.d

if command -v mysqladmin >/dev/null 2>&1 && mysqladmin ping >/dev/null 2>&1; then
  cur=$(mysql -N -B -e "SELECT @@GLOBAL.max_connections" 2>/dev/null || echo 0)
  if [ "${cur:-0}" -lt 1000 ]; then
    mysql -e "SET GLOBAL max_connections = 1000"
    say "mariadb already running: max_connections $cur -> 1000 (runtime)"
  fi
fi

# Debian's nova lives in /usr/lib/python3/dist-packages/nova (a regular package, so the shim must sit
# inside it). On a fresh machine nova is not installed yet: dpkg unpacks into the existing dir fine.
NOVA_VIRT=/usr/lib/python3/dist-packages/nova/virt
SHIM='# rig_up.sh (stackmap tests/e2e): nova loads "nova.virt." + compute_driver; the rig installs the
# driver as a top-level module (/usr/local/lib/python3.11/dist-packages/rig_fake_driver.py).
from rig_fake_driver import RigFakeDriver  # noqa: F401'
if [ ! -f "$NOVA_VIRT/rig_fake_driver.py" ] || [ "$(cat "$NOVA_VIRT/rig_fake_driver.py")" != "$SHIM" ]; then
  mkdir -p "$NOVA_VIRT"
  printf '%s\n' "$SHIM" >"$NOVA_VIRT/rig_fake_driver.py"
  say "installed $NOVA_VIRT/rig_fake_driver.py (shim for compute_driver = rig_fake_driver.RigFakeDriver)"
fi
T_PRE=$(date +%s)

# ---------------------------------------------------------------- the rig
say "running $RIG_DIR/up.sh"
bash "$RIG_DIR/up.sh"
T_UP=$(date +%s)

# nova-api: same command as up.sh's, with --threads 1 (see 4. above).
NOVA_PID_FILE=${RIG_STATE:-/var/lib/rig-openstack}/pids/nova-api.pid
if [ -s "$NOVA_PID_FILE" ] && kill -0 "$(cat "$NOVA_PID_FILE")" 2>/dev/null; then
  read -r -a cmd < <(tr "\\0" " " <"/proc/$(cat "$NOVA_PID_FILE")/cmdline") || true  # no trailing newline
  threads=""; for ((k=0; k<${#cmd[@]}; k++)); do [ "${cmd[$k]}" = --threads ] && threads=${cmd[$((k+1))]}; done
  if [ -n "$threads" ] && [ "$threads" != 1 ]; then
    for ((k=0; k<${#cmd[@]}; k++)); do [ "${cmd[$k]}" = --threads ] && cmd[$((k+1))]=1; done
    say "restarting nova-api with --threads 1 (was $threads)"
    bash "$RIG_DIR/down.sh" nova-api
    ( source "$RIG_DIR/common.sh"; start_bg nova-api "${cmd[@]}" )
    for i in $(seq 120); do curl -s -o /dev/null --max-time 5 http://127.0.0.1:8774/ && break; sleep 1; done
    curl -s -o /dev/null --max-time 5 http://127.0.0.1:8774/ || { say "nova-api did not come back"; exit 1; }
    say "nova-api answers again (threads 1)"
  fi
fi

T_FIX=$(date +%s)

# A MariaDB that up.sh started itself reads its defaults from my.cnf only; apply the same runtime bump.
cur=$(mysql -N -B -e "SELECT @@GLOBAL.max_connections" 2>/dev/null || echo 1000)
[ "${cur:-1000}" -ge 1000 ] || mysql -e "SET GLOBAL max_connections = 1000"

# ---------------------------------------------------------------- wait for keystone (a real token)
i=0
until curl -sf -o /dev/null --max-time 5 -H 'Content-Type: application/json' \
        -d '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"name":"Default"},"password":"secret"}}},"scope":{"project":{"name":"admin","domain":{"name":"Default"}}}}}' \
        "$KEYSTONE_URL/auth/tokens"; do
  i=$((i+1))
  if [ "$i" -ge "$KEYSTONE_TIMEOUT" ]; then say "TIMEOUT: keystone does not issue tokens at $KEYSTONE_URL"; exit 1; fi
  sleep 1
done
T_END=$(date +%s)
say "keystone issues tokens at $KEYSTONE_URL"

# up.sh reports UP even when a service died after start (its wait loops just time out): check pid files.
dead=""
for f in "${RIG_STATE:-/var/lib/rig-openstack}"/pids/*.pid; do
  [ -e "$f" ] || continue
  kill -0 "$(cat "$f")" 2>/dev/null || dead="$dead $(basename "$f" .pid)"
done
if [ -n "$dead" ]; then say "DEAD after up.sh:$dead (logs: ${RIG_STATE:-/var/lib/rig-openstack}/logs, /var/log/<svc>/)"; exit 1; fi
say "durations: pre-steps $((T_PRE - T0))s, up.sh $((T_UP - T_PRE))s, nova-api fix $((T_FIX - T_UP))s, keystone wait $((T_END - T_FIX))s, total $((T_END - T0))s"
