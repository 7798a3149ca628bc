#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by scripts/slurm-up.sh (slurmd, slurmctld,
# munged), by the process ids in their pid files. Jobs still running are cancelled first.
# Leaves the packages, /etc/slurm/slurm.conf and the state directory in place; a later
# slurm-up.sh starts it again.
set -uo pipefail
RUN=/run/slurm-scorebridge

say() { echo "slurm-down: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "needs root"; exit 1; }

stop() { # name pidfile
    local name=$1 pidfile=$2 pid
    [ -s "$pidfile" ] || { say "$name not running (no $pidfile)"; return 0; }
    pid=$(cat "$pidfile")
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
        say "stopping $name ($pid)"
        kill "$pid"
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && { say "$name ($pid) still running; sending KILL"; kill -9 "$pid"; }
    fi
    rm -f "$pidfile"
}

if command -v scancel >/dev/null 2>&1 && [ -s "$RUN/slurmctld.pid" ]; then
    timeout 10 scancel --user="$(id -un)" 2>/dev/null || true
fi
stop slurmd "$RUN/slurmd.pid"
stop slurmctld "$RUN/slurmctld.pid"
stop munged /run/munge/munged.pid
say "down"
