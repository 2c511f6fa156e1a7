#!/usr/bin/env bash
# slurm_local.sh - a throwaway one-node Slurm cluster on localhost, so the
# sweep's Slurm path (sbatch arrays, --signal, requeue) can be tested for real.
#
#   bash sweep/slurm_local.sh start DIR   # prints `export SLURM_CONF=DIR/slurm.conf` last
#   bash sweep/slurm_local.sh stop DIR
#
# Everything (config, munge key/socket, state, spool, logs, pid files) lives
# under DIR, so /etc is never edited. Needs root and Debian's slurm-wlm + munge.
# No cgroups (proctrack/linuxproc, task/none) and no accounting database, so it
# works inside containers; `sacct` is therefore unavailable, use `scontrol`.
set -euo pipefail

# root's PATH in containers often lacks sbin, where the daemons live.
PATH="$PATH:/usr/sbin:/sbin"
die() { echo "slurm_local.sh: $*" >&2; exit 1; }

cmd=${1:-}
[[ ($cmd == start || $cmd == stop) && $# -eq 2 ]] || die "usage: slurm_local.sh start|stop DIR"
[[ $(id -u) -eq 0 ]] || die "must run as root (slurmd/munged run as root here)"
for bin in slurmctld slurmd sinfo squeue scancel munged mungekey; do
  command -v "$bin" >/dev/null || die "$bin not found (install Debian's slurm-wlm and munge)"
done

dir=$(realpath -m "$2")
conf=$dir/slurm.conf
sock=$dir/munge/munge.socket
pidfiles=("$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid")
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
node_state() { SLURM_CONF=$conf sinfo -h -n localhost -o %T 2>/dev/null || true; }
# the lines a user types, quoted as the shell reads them back
export_line() { printf 'export SLURM_CONF=%q\n' "$conf"; }
stop_command=$(printf 'bash %q stop %q' "$0" "$dir")

stop_pids() {  # TERM the daemons behind the given pid files, wait, then KILL
  local pf pids=()
  for pf in "$@"; do alive "$pf" && pids+=("$(cat "$pf")"); done
  ((${#pids[@]})) || return 0
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "${pids[@]}" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "${pids[@]}" 2>/dev/null || true
  echo "slurm_local.sh: had to kill -9 ${pids[*]}" >&2
}

if [[ $cmd == stop ]]; then
  # Job processes outlive slurmd, and a job trapping SIGTERM would hold the
  # node for KillWait, so cancel every job, then SIGKILL the sessions of this
  # cluster's slurmstepds (found by their cwd, the log dir).
  if alive "$dir/slurmctld.pid"; then
    ids=$(SLURM_CONF=$conf squeue -h -o %F 2>/dev/null | sort -u)
    [[ -z $ids ]] || SLURM_CONF=$conf scancel $ids 2>/dev/null || true
  fi
  for p in $(pgrep -x slurmstepd || true); do
    [[ $(readlink "/proc/$p/cwd" 2>/dev/null) == "$dir/log" ]] || continue
    sid=$(ps -o sid= -p "$p" | tr -d ' ')
    [[ -z $sid ]] || kill -9 $(ps -e -o sid=,pid= | awk -v s="$sid" '$1 == s {print $2}') 2>/dev/null || true
  done
  if [[ -n ${ids:-} ]]; then  # let slurmctld record the jobs as ended
    for _ in $(seq 25); do [[ -z $(SLURM_CONF=$conf squeue -h 2>/dev/null) ]] && break; sleep 0.2; done
  fi
  # munged last: slurmd/slurmctld still need it while shutting down.
  stop_pids "$dir/slurmd.pid" "$dir/slurmctld.pid"
  stop_pids "$dir/munge/munged.pid"
  rm -f "${pidfiles[@]}"
  exit 0
fi

# A second start reuses a complete running cluster; a partial one is ambiguous.
n=0; for pf in "${pidfiles[@]}"; do alive "$pf" && n=$((n + 1)); done
if ((n == 3)); then
  st=$(node_state)
  [[ $st =~ ^(idle|mix|alloc) ]] || die "daemons of $dir running but node is '$st'; run: $stop_command"
  export_line; exit 0
fi
((n == 0)) || die "daemons of $dir partly running; run: $stop_command"

# munged checks that every directory above its socket is world-executable;
# -f lets it start anyway (e.g. DIR from mktemp -d is 0700). Clients are root.
mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
chmod 755 "$dir/munge"
[[ -s $dir/munge/munge.key ]] || mungekey -c -k "$dir/munge/munge.key"
munged -f --socket="$sock" --key-file="$dir/munge/munge.key" \
  --log-file="$dir/munge/munged.log" --pid-file="$dir/munge/munged.pid" \
  --seed-file="$dir/munge/munged.seed" 2>/dev/null \
  || die "munged failed: $(tail -n 3 "$dir/munge/munged.log" 2>/dev/null)"

cpus=$(nproc)
# Leave 10% of RAM as margin: slurmd drains the node if it finds less than this.
mem=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cat >"$conf" <<EOF
ClusterName=local
SlurmctldHost=localhost
SlurmctldPort=${SLURM_LOCAL_CTLD_PORT:-6817}
SlurmdPort=${SLURM_LOCAL_SLURMD_PORT:-6818}
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job must wait before it may start
# again (default 120 s); 5 is the minimum Slurm accepts.
AuthInfo=socket=$sock,cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# No cgroups: containers often cannot delegate them.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Per-CPU allocation, so several 1-CPU jobs share the node.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Rescan pending jobs every second instead of 30/60 s, so a requeued job
# starts as soon as its BeginTime passes.
SchedulerParameters=bf_interval=1,sched_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=30
InactiveLimit=0
NodeName=localhost NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -f "$conf" || die "slurmctld failed: $(tail -n 5 "$dir/log/slurmctld.log" 2>/dev/null)"
# -N: the container's hostname need not match the node's name.
slurmd -f "$conf" -N localhost || die "slurmd failed: $(tail -n 5 "$dir/log/slurmd.log" 2>/dev/null)"

for _ in $(seq 60); do
  [[ $(node_state) == idle ]] && { export_line; exit 0; }
  sleep 0.5
done
{
  echo "slurm_local.sh: node not idle after 30 s (state: '$(node_state)')"
  for log in "$dir/log/slurmctld.log" "$dir/log/slurmd.log"; do
    echo "--- tail $log"; tail -n 15 "$log" 2>/dev/null || true
  done
} >&2
exit 1
