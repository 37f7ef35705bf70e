#!/bin/bash
# Start a one-node Slurm cluster on localhost, without systemd, for the Slurm executor's tests (and to try it).
# Needs root and Debian's packages:
#   apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
# Usage: SLURM_LOCAL_DIR=/tmp/tb-slurm tests/slurm/start-local-slurm.sh ; export SLURM_CONF=/tmp/tb-slurm/slurm.conf
# Running it again while that cluster is up only waits for the node to be idle. Stop it with stop-local-slurm.sh.
# SLURM_LOCAL_PORT (default 16817): slurmctld's port, slurmd's is the next one (two clusters on one host differ).
# The node hides a folder, SLURM_HIDDEN_DIR (default $SLURM_LOCAL_DIR/hidden): slurmd runs in a mount namespace
# of its own with an empty tmpfs over it, so its jobs (which inherit that namespace) cannot see what the host
# keeps there: a state database put there is out of reach of the workers, as on a cluster node without it.
# Seen working with Slurm 22.05.8 (Debian 12): cold start to an idle node in about 3 s.
set -euo pipefail
D=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/tb-slurm}
export SLURM_CONF=$D/slurm.conf
PORT=${SLURM_LOCAL_PORT:-16817}
HIDE=${SLURM_HIDDEN_DIR:-$D/hidden}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_idle() {
  for _ in $(seq 1 100); do
    sinfo -h -n localhost -o %T 2>/dev/null | grep -qx idle && return 0
    sleep 0.2
  done
  echo "slurm node never became idle; see $D/log" >&2
  return 1
}

# Whether the running slurmd has the tmpfs over $HIDE (in its own mount namespace, not the host's).
hides() { grep -q " $HIDE .* - tmpfs tb-hidden " "/proc/$(cat "$D/state/slurmd.pid")/mountinfo" 2>/dev/null; }
# Whether this host lets us make a mount namespace with a tmpfs in it (CAP_SYS_ADMIN; not in every container).
can_hide() { mkdir -p "$HIDE" && unshare --mount --propagation private mount -t tmpfs tb-probe "$HIDE" 2>/dev/null; }

if alive "$D/state/slurmctld.pid" && alive "$D/state/slurmd.pid" && alive "$D/munge/munged.pid" \
  && { hides || ! can_hide; }; then
  wait_idle; exit
fi

mkdir -p "$D/munge" "$D/state/ctld" "$D/state/d" "$D/log" "$HIDE"
chmod 755 "$D/munge"                       # munged wants o+x on its socket folder
[ -f "$D/munge/munge.key" ] || mungekey --create --keyfile="$D/munge/munge.key"
chmod 600 "$D/munge/munge.key"
NODE=$(slurmd -C | head -1 | sed -E 's/^NodeName=\S+ /NodeName=localhost NodeAddr=127.0.0.1 /')
# MinJobAge: finished jobs stay in `scontrol show job` for 5 minutes (this cluster keeps no accounting).
cat > "$SLURM_CONF" <<CONF
ClusterName=localci
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munged.sock
StateSaveLocation=$D/state/ctld
SlurmdSpoolDir=$D/state/d
SlurmctldPidFile=$D/state/slurmctld.pid
SlurmdPidFile=$D/state/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$D/state/jobcomp.txt
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=300
# KillWait: a job at its time limit (or cancelled) gets SIGKILL 5 s after SIGTERM, not 30 s, so tests wait less.
KillWait=5
$NODE State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
alive "$D/munge/munged.pid" || munged --key-file="$D/munge/munge.key" --socket="$D/munge/munged.sock" \
  --pid-file="$D/munge/munged.pid" --seed-file="$D/munge/munged.seed" --log-file="$D/log/munged.log"
alive "$D/state/slurmctld.pid" || slurmctld -i   # daemonizes; -i tolerates missing state files on a first start
if can_hide; then
  if alive "$D/state/slurmd.pid" && ! hides; then  # an older start without the hidden folder: start it again
    kill "$(cat "$D/state/slurmd.pid")"
    for _ in $(seq 1 50); do alive "$D/state/slurmd.pid" || break; sleep 0.1; done
  fi
  # slurmd daemonizes; -N: the node name from slurm.conf. unshare -m makes the tmpfs private to its namespace.
  alive "$D/state/slurmd.pid" || unshare --mount --propagation private \
    sh -c 'mount -t tmpfs -o size=1m,mode=755 tb-hidden "$1" && exec slurmd -N localhost' sh "$HIDE"
else
  echo "note: no mount namespace can be made here: the node sees $HIDE (the hidden-node tests skip)" >&2
  alive "$D/state/slurmd.pid" || slurmd -N localhost
fi
wait_idle
