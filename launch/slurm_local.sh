#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (munge + slurmctld + slurmd), for trying srun/sbatch
# launches and for the Slurm end-to-end test.
#   launch/slurm_local.sh start DIR     writes DIR/slurm.conf, starts the daemons, waits for srun
#   launch/slurm_local.sh stop DIR      stops them
# Then: SLURM_CONF=DIR/slurm.conf srun --mpi=pmix -n 8 build/dcformer train --config ...
set -euo pipefail
cmd="${1:?start|stop}"
D="$(mkdir -p "${2:?state dir}" && cd "$2" && pwd)"
H="$(hostname -s)"
export SLURM_CONF="$D/slurm.conf"
case "$cmd" in
start)
  mkdir -p "$D/state" "$D/spool" /run/munge
  chown munge:munge /run/munge 2>/dev/null || true
  cat > "$D/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=$H NodeAddr=127.0.0.1 CPUs=8 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  if ! (munge -n | unmunge) >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 100); do (munge -n | unmunge) >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  slurmctld -c </dev/null >/dev/null 2>&1
  slurmd </dev/null >/dev/null 2>&1
  for _ in $(seq 150); do
    if timeout 10 srun -n1 -t 1 true 2>/dev/null; then echo "slurm up: SLURM_CONF=$SLURM_CONF"; exit 0; fi
    sleep 0.2
  done
  echo "slurm did not come up; see $D/slurmctld.log and $D/slurmd.log" >&2
  exit 1
  ;;
stop)
  for f in "$D/slurmd.pid" "$D/slurmctld.pid"; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  sleep 1
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
