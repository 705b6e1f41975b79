#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for CI and for developing the slurm profile:
# munge + slurmctld + slurmd on localhost, no accounting database (accounting_storage/none).
# Installs Debian's slurm-wlm and munge when missing, writes /etc/slurm/slurm.conf, starts the
# daemons (no systemd needed) and waits until `sinfo` shows the node ready for jobs.
# Idempotent: when the cluster already answers and the node is usable, it changes nothing.
# Run as root. Env: SLURM_UP_TIMEOUT (seconds to wait for the node, default 90).
set -euo pipefail

TIMEOUT=${SLURM_UP_TIMEOUT:-90}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
NODE=$(hostname -s)

log() { echo "slurm_up: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts daemons)"

node_state() { sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null | head -n1 || true; }
usable() { case "$(node_state)" in idle*|mix*|alloc*|comp*) return 0 ;; *) return 1 ;; esac; }

if command -v sinfo >/dev/null && [ -f "$CONF" ] && scontrol ping >/dev/null 2>&1 && usable; then
  log "cluster already up: $(sinfo -h -N -o '%N %t %c CPUs %m MB')"
  exit 0
fi

# --- packages ------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packages' own service starts from racing ours (there may be no init system)
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# --- munge ---------------------------------------------------------------------------------------
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating the munge key"
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
  else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
  munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# --- slurm.conf ----------------------------------------------------------------------------------
CPUS=$(nproc)
# leave 10% (at least 1 GB) of the memory to the system
MEM_MB=$(awk '/MemTotal/ {m = int($2 / 1024); r = int(m * 0.9); if (m - r < 1024) r = m - 1024; print r}' /proc/meminfo)
mkdir -p "$CONF_DIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/slurm
cat >"$CONF.new" <<EOF
# Written by .ci/slurm_up.sh: a one-node cluster for CI (slurmctld and slurmd on this host).
ClusterName=longctx-ci
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# no accounting database: sacct has nothing to ask, so job status comes from squeue, which keeps
# finished jobs for MinJobAge seconds
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
# a cancelled job is killed quickly (SIGTERM, then SIGKILL after KillWait seconds)
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
if ! cmp -s "$CONF.new" "$CONF"; then
  mv "$CONF.new" "$CONF"
  CHANGED=1
else
  rm -f "$CONF.new"
  CHANGED=0
fi

# --- daemons -------------------------------------------------------------------------------------
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$CHANGED" = 1 ]; then
  # a new config: restart whatever runs with the old one
  for pidfile in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid; do
    if running "$pidfile"; then
      kill "$(cat "$pidfile")"
      for _ in $(seq 20); do running "$pidfile" || break; sleep 0.5; done
    fi
  done
fi
if ! running /run/slurm/slurmctld.pid; then
  log "starting slurmctld"
  slurmctld
fi
for _ in $(seq 30); do scontrol ping >/dev/null 2>&1 && break; sleep 0.5; done
scontrol ping >/dev/null 2>&1 || die "slurmctld does not answer (see /var/log/slurm/slurmctld.log)"
if ! running /run/slurm/slurmd.pid; then
  log "starting slurmd"
  slurmd
fi

# --- wait for the node ---------------------------------------------------------------------------
deadline=$((SECONDS + TIMEOUT))
while ! usable; do
  state=$(node_state)
  case "$state" in
    down*|drain*|fail*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  [ "$SECONDS" -lt "$deadline" ] || die "node $NODE is '$state' after ${TIMEOUT}s (see /var/log/slurm/slurmd.log)"
  sleep 1
done
log "cluster up: $(sinfo -h -N -o '%N %t %c CPUs %m MB')"
