#!/usr/bin/env bash
# Start or stop a real single-node Slurm cluster on this (Debian) machine, as root and
# without systemd, so the workflow can be run through Snakemake's Slurm executor for real
# (tests/test_slurm.py, profiles/slurm-local). Needs the Debian packages
# slurmctld slurmd slurm-client munge (scripts/setup.sh installs them).
#
#   scripts/slurm-local.sh start    write the config if needed, start what is not running,
#                                   wait until the node is idle (idempotent)
#   scripts/slurm-local.sh stop     stop only the daemons this script started (by pid)
#   scripts/slurm-local.sh status   say what runs and the node's state
#
# Environment: SLURM_LOCAL_TIMEOUT (s to wait for the idle node, default 60),
# SLURM_LOCAL_STATE (where the pids of started daemons are kept, default
# /run/mdiff-slurm-local). An existing /etc/slurm/slurm.conf not written by this script is
# never overwritten: the script stops with an error instead.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARKER="# written by mdiff scripts/slurm-local.sh"
STATE=${SLURM_LOCAL_STATE:-/run/mdiff-slurm-local}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
NODE=$(hostname -s)

say() { echo "[slurm-local] $*"; }
die() { echo "[slurm-local] error: $*" >&2; exit 1; }

need_root_and_slurm() {
  [ "$(id -u)" = 0 ] || die "must run as root (it starts munged, slurmctld and slurmd)"
  local missing=""
  for tool in munged mungekey slurmctld slurmd sinfo scontrol; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing="$missing $tool"
  done
  [ -z "$missing" ] || die "missing:$missing (apt-get install slurmctld slurmd slurm-client munge)"
  id slurm >/dev/null 2>&1 || die "no 'slurm' user (installed by the Debian slurmctld package)"
  id munge >/dev/null 2>&1 || die "no 'munge' user (installed by the Debian munge package)"
}

# pid recorded for a daemon we started, if that process still runs that program.
started_pid() {
  local name=$1 file=$STATE/$1.pid pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ] \
    && echo "$pid"
}

# pid of a running daemon of that name, whoever started it.
running_pid() { pgrep -x "$1" | head -n1; }

write_config() {
  if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; not overwriting it"
  fi
  local mem_mb cpus tmp
  # Leave ~10% of the memory to the system so jobs' --mem requests are really available.
  mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  cpus=$(nproc)
  mkdir -p "$CONF_DIR"
  tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
  cat >"$tmp" <<EOF
$MARKER
# A single-node cluster for tests: no accounting database, no cgroups, no systemd.
ClusterName=local
SlurmctldHost=$NODE
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.daemon.pid
SlurmdPidFile=$STATE/slurmd.daemon.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol for 10 minutes: the executor's status
# polling (squeue, no sacct without accounting) and the tests rely on it.
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  chmod 644 "$tmp"
  if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"
  else
    mv -f "$tmp" "$CONF"
    say "wrote $CONF (node $NODE, $cpus CPUs, ${mem_mb} MB)"
  fi
}

prepare_dirs() {
  mkdir -p "$STATE" /run/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  chown munge:munge /run/munge
  chmod 755 /run/munge
  chown slurm:slurm /var/spool/slurmctld /var/log/slurm
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    chown munge:munge /etc/munge
    runuser -u munge -- mungekey -c
    say "created /etc/munge/munge.key"
  fi
}

# Start a daemon unless one runs; record its pid (read from its own pid file) as ours.
start_daemon() {
  local name=$1 pidfile=$2
  shift 2
  if pid=$(started_pid "$name"); then
    say "$name already running (pid $pid, started by this script)"
    return
  fi
  if pid=$(running_pid "$name"); then
    say "$name already running (pid $pid, not started by this script: left alone on stop)"
    return
  fi
  rm -f "$pidfile"
  "$@"
  for _ in $(seq 50); do
    [ -s "$pidfile" ] && break
    sleep 0.1
  done
  [ -s "$pidfile" ] || die "$name did not start (no pid file $pidfile); see /var/log/slurm/"
  cp "$pidfile" "$STATE/$name.pid"
  say "started $name (pid $(cat "$STATE/$name.pid"))"
}

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1; }

wait_idle() {
  local state="" deadline=$((SECONDS + TIMEOUT)) resumed=0
  while [ $SECONDS -lt $deadline ]; do
    state=$(node_state || true)
    case "$state" in
      idle | mixed | allocated) say "node $NODE is $state"; return 0 ;;
      down* | drain* | drained*)
        # A node left down by an earlier unclean stop: bring it back once.
        if [ $resumed = 0 ]; then
          scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
          resumed=1
        fi ;;
    esac
    sleep 1
  done
  die "node $NODE not idle after ${TIMEOUT}s (state '${state:-unknown}'); see /var/log/slurm/"
}

cmd_start() {
  need_root_and_slurm
  write_config
  prepare_dirs
  start_daemon munged /run/munge/munged.pid runuser -u munge -- munged
  start_daemon slurmctld "$STATE/slurmctld.daemon.pid" slurmctld
  start_daemon slurmd "$STATE/slurmd.daemon.pid" slurmd
  wait_idle
}

cmd_stop() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  local name pid stopped=0
  # Reverse start order: the node daemon, the controller, then authentication.
  for name in slurmd slurmctld munged; do
    if pid=$(started_pid "$name"); then
      kill -TERM "$pid"
      for _ in $(seq 100); do
        [ -d "/proc/$pid" ] || break
        sleep 0.1
      done
      if [ -d "/proc/$pid" ]; then
        kill -KILL "$pid" 2>/dev/null || true
        say "killed $name (pid $pid) after 10 s"
      else
        say "stopped $name (pid $pid)"
      fi
      stopped=$((stopped + 1))
    fi
    rm -f "$STATE/$name.pid"
  done
  [ $stopped -gt 0 ] || say "nothing started by this script is running"
}

cmd_status() {
  local name pid
  for name in munged slurmctld slurmd; do
    if pid=$(started_pid "$name"); then
      echo "$name: running (pid $pid, started by slurm-local.sh)"
    elif pid=$(running_pid "$name"); then
      echo "$name: running (pid $pid, not started by slurm-local.sh)"
    else
      echo "$name: not running"
    fi
  done
  echo "node $NODE: $(node_state || echo unknown)"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
