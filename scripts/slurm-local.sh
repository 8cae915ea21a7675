#!/usr/bin/env bash
# A throwaway single-node Slurm on localhost, for the integration test of
# `harness run --executor slurm` (tests/slurm.rs) and for trying the executor by hand.
#
#   scripts/slurm-local.sh start DIR   # installs slurm-wlm + munge if missing, starts munged,
#                                      # slurmctld -D and slurmd -D with a slurm.conf in DIR;
#                                      # prints `export SLURM_CONF=DIR/slurm.conf`
#   scripts/slurm-local.sh stop DIR    # stops them, by their process ids
#
# Exit status 2 from `start`: the packages are missing and cannot be installed (no root, no
# registry); the test then skips with that message. No systemd, cgroups or accounting are needed:
# TaskPlugin=task/none, ProctrackType=proctrack/linuxproc, AccountingStorageType=none.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[[ -n "$cmd" && -n "$dir" ]] || { echo "usage: $0 start|stop DIR" >&2; exit 64; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

stop() {
    for p in slurmd slurmctld munged; do
        if [[ -f "$dir/$p.pid" ]]; then
            kill "$(cat "$dir/$p.pid")" 2>/dev/null || true
        fi
    done
    sleep 1
    for p in slurmd slurmctld munged; do
        if [[ -f "$dir/$p.pid" ]]; then
            kill -9 "$(cat "$dir/$p.pid")" 2>/dev/null || true
            rm -f "$dir/$p.pid"
        fi
    done
}

if [[ "$cmd" == stop ]]; then
    stop
    exit 0
fi
[[ "$cmd" == start ]] || { echo "usage: $0 start|stop DIR" >&2; exit 64; }

need() { command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; }
PATH="$PATH:/usr/sbin:/sbin"
if ! need; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "slurm-wlm and munge are not installed and this user is not root to install them" >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q slurm-wlm munge >"$dir/apt.log" 2>&1; then
        apt-get update -q >>"$dir/apt.log" 2>&1 && apt-get install -y -q slurm-wlm munge >>"$dir/apt.log" 2>&1 || {
            echo "could not install slurm-wlm and munge from Debian's packages (see $dir/apt.log)" >&2
            exit 2
        }
    fi
    need || { echo "slurm-wlm and munge installed, but sbatch / slurmctld / slurmd / munged are not on PATH" >&2; exit 2; }
fi

stop  # anything left from an earlier start in DIR
mkdir -p "$dir/state" "$dir/spool"
chmod 700 "$dir"

# munge, on a socket of our own
dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge.key"
munged --force --socket="$dir/munge.sock" --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
    --log-file="$dir/munged.log" --seed-file="$dir/munge.seed"

# free ports for slurmctld and slurmd
read -r ctl_port node_port < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
cpus=$(nproc)
cat >"$dir/slurm.conf" <<EOF
ClusterName=harnesstest
SlurmctldHost=localhost
SlurmctldPort=$ctl_port
SlurmdPort=$node_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=30
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -D -f "$SLURM_CONF" >"$dir/slurmctld.out" 2>&1 &
echo $! >"$dir/slurmctld.pid"
slurmd -D -N localhost -f "$SLURM_CONF" >"$dir/slurmd.out" 2>&1 &
echo $! >"$dir/slurmd.pid"

# wait until the node takes jobs
for _ in $(seq 1 60); do
    if sinfo -h -N -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
echo "Slurm did not come up in 60 s; logs in $dir (slurmctld.log, slurmd.log, munged.log)" >&2
tail -5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
stop
exit 1
