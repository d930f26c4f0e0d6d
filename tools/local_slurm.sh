#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (slurmctld + slurmd + munge, Debian's
# slurm-wlm packages), for tests/test_slurm.py and for trying launch/slurm.sbatch by hand.
#
#   sudo tools/local_slurm.sh        # idempotent: installs, configures, starts; exits 0 when idle
#
# Two partitions share the node: `debug` (default) and `urgent`, whose jobs preempt debug's
# (PreemptMode=REQUEUE after a GraceTime of LCMSM_SLURM_GRACE seconds, default 60), so that
# a preemption can be tried as well as a time limit and scancel. Needs root; installs the
# packages with apt when they are missing. Exit status 3: it could not come up (says why).
set -uo pipefail

fail() {
  echo "local slurm: $*" >&2
  exit 3
}
((EUID == 0)) || fail "needs root (it starts munged, slurmctld and slurmd)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null; then
  log=/tmp/local-slurm-install.log
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    slurmctld slurmd slurm-client munge; } >"$log" 2>&1 || fail "apt-get install failed (see $log)"
fi

mkdir -p /etc/munge /run/munge /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
[[ -s /etc/munge/munge.key ]] || /usr/sbin/mungekey -c || fail "mungekey -c failed"
chown munge:munge /etc/munge/munge.key /run/munge
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged || fail "munged did not start"

grace=${LCMSM_SLURM_GRACE:-60}
memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
wanted=$(
  cat <<CONF
ClusterName=local
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
KillWait=30
MpiDefault=none
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=localhost CPUs=$(nproc) RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=1 PreemptMode=REQUEUE GraceTime=$grace
PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=2 PreemptMode=OFF
CONF
)
if [[ $(cat /etc/slurm/slurm.conf 2>/dev/null) != "$wanted" ]]; then
  echo "$wanted" >/etc/slurm/slurm.conf
  pkill -x slurmctld
  pkill -x slurmd
  for _ in $(seq 50); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 0.2; done
fi
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld || fail "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd || fail "slurmd did not start (see /var/log/slurm/slurmd.log)"
for _ in $(seq 60); do
  state=$(sinfo -h -p debug -o %T 2>/dev/null)
  [[ $state == idle* || $state == mix* || $state == alloc* ]] && exit 0
  [[ $state == down* || $state == drain* ]] && scontrol update nodename=localhost state=resume 2>/dev/null
  sleep 1
done
fail "the node did not become idle: $(sinfo 2>&1 | tail -1)"
