#!/bin/bash
# Stop what start-local-slurm.sh started (same SLURM_LOCAL_DIR), by pid file: SIGTERM to slurmd, slurmctld and
# munged, then wait up to 10 s for them to exit.
D=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/tb-slurm}
pids=()
for f in "$D/state/slurmd.pid" "$D/state/slurmctld.pid" "$D/munge/munged.pid"; do
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null && pids+=("$pid")
done
for _ in $(seq 1 100); do
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && exit 0
  sleep 0.1
done
echo "some Slurm daemons of $D are still running: ${pids[*]}" >&2; exit 1
