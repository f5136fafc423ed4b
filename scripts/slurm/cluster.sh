#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests: munged, slurmctld and slurmd with
# every file (config, keys, sockets, state, logs) under one directory, nothing in /etc.
#
#   scripts/slurm/cluster.sh start DIR   # writes DIR/slurm.conf, starts the daemons, waits for the node
#   scripts/slurm/cluster.sh stop DIR    # stops the daemons started with DIR (by their pid files)
#
# Then `export SLURM_CONF=DIR/slurm.conf` and use sbatch, squeue, scancel as usual.
# Ports: CNNC_SLURM_PORT (slurmctld; default 16817, away from a real Slurm's 6817) and
# the next one (slurmd).
# Runs as root (slurmd must, to start jobs as their user); in a container there are no
# cgroups to rely on, hence proctrack/linuxproc and task/none. Needs Debian's slurm-wlm
# and munge (apt-get install -y slurm-wlm munge).
set -euo pipefail

cmd=${1:?usage: cluster.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: cluster.sh start|stop DIR}")

stop() {
    # slurmd first (it holds the jobs), then the controller, then munged.
    for d in slurmd slurmctld munged; do
        local pidfile="$dir/$d.pid"
        [ -f "$pidfile" ] || continue
        local pid
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

start() {
    for tool in munged slurmctld slurmd sbatch; do
        command -v "$tool" >/dev/null || { echo "cluster.sh: $tool not found (apt-get install -y slurm-wlm munge)" >&2; exit 1; }
    done
    # Whatever fails from here on, the daemons already started are stopped.
    trap stop EXIT
    mkdir -p "$dir"/{state,spool,log,munge}
    chmod 700 "$dir/munge"
    local host cpus port
    port=${CNNC_SLURM_PORT:-16817}
    host=$(hostname -s)
    cpus=$(nproc)
    # munged: its own key and socket, so that a machine's own munge is left alone.
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 600 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munge.seed"
    cat > "$dir/slurm.conf" <<CONF
# One node, this machine; written by scripts/slurm/cluster.sh.
ClusterName=cnnc-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
SlurmctldPort=$port
SlurmdPort=$((port + 1))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -c -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    # The node is up when sinfo says idle (bounded wait: 60 s).
    for _ in $(seq 120); do
        if sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "cluster.sh: slurm up on $host ($cpus CPUs), SLURM_CONF=$SLURM_CONF"
            trap - EXIT
            return 0
        fi
        sleep 0.5
    done
    echo "cluster.sh: the node did not come up; logs in $dir/log:" >&2
    tail -n 20 "$dir"/log/*.log >&2 || true
    sinfo -N >&2 || true
    exit 1
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
