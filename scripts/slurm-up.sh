#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine, for the cluster tests (tests/test_slurm.py)
# and for trying profiles/slurm without a real cluster. Idempotent: exits 0 at once when the
# node already answers idle. Needs root and Debian/Ubuntu packages (slurmctld, slurmd,
# slurm-client, munge); prints why and exits 1 when it cannot.
#
#   sudo bash scripts/slurm-up.sh        # start (or check) the cluster
#   sudo bash scripts/slurm-down.sh      # stop it
#
# Environment: SLURM_UP_TIMEOUT (seconds to wait for the node, default 60),
# SLURM_UP_APT_TIMEOUT (seconds for apt-get, default 300), SLURM_UP_PARTITION (default "main").
set -uo pipefail

WAIT=${SLURM_UP_TIMEOUT:-60}
APT_TIMEOUT=${SLURM_UP_APT_TIMEOUT:-300}
PARTITION=${SLURM_UP_PARTITION:-main}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
RUN=/run/slurm-scorebridge

say() { echo "slurm-up: $*" >&2; }
die() { say "$*"; exit 1; }

node_state() { sinfo -h -N -o '%t' 2>/dev/null | head -n1 | tr -d '*~#!%$@^-'; }

node_idle() {
    case "$(node_state)" in idle | mix | alloc | comp) return 0 ;; *) return 1 ;; esac
}

# alive PIDFILE NAME: the pid file names a running NAME (not a stale pid reused by another program).
alive() { [ -s "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]; }

# Already up: nothing to do.
if command -v sinfo >/dev/null 2>&1 && timeout 10 sinfo >/dev/null 2>&1 && node_idle; then
    say "already up: $(sinfo -h -o '%P %D %t' | head -n1)"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "needs root (to install packages and start munged/slurmctld/slurmd); run it with sudo"

# 1. Packages (Slurm 22.05 on Debian 12), without prompts.
PKGS="slurmctld slurmd slurm-client munge"
missing=""
for p in $PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    command -v apt-get >/dev/null 2>&1 || die "packages missing ($missing) and no apt-get: install SLURM and munge yourself"
    export DEBIAN_FRONTEND=noninteractive
    apt_install() {
        timeout "$APT_TIMEOUT" apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $missing
    }
    say "installing$missing"
    if ! apt_install >/tmp/slurm-up-apt.log 2>&1; then
        say "apt-get install failed without a fresh package list; running apt-get update"
        timeout "$APT_TIMEOUT" apt-get update -q >>/tmp/slurm-up-apt.log 2>&1 ||
            { tail -n 20 /tmp/slurm-up-apt.log >&2; die "apt-get update failed (no network to the Debian mirror?)"; }
        apt_install >>/tmp/slurm-up-apt.log 2>&1 ||
            { tail -n 20 /tmp/slurm-up-apt.log >&2; die "apt-get install$missing failed"; }
    fi
fi
for b in munged slurmctld slurmd sinfo sbatch squeue scontrol; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || die "$b not found after installing$PKGS"
done
export PATH="/usr/sbin:/sbin:$PATH"

# 2. munge: a key, then munged as the munge user.
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 ||
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! alive /run/munge/munged.pid munged; then
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --force || die "munged did not start (see /var/log/munge/munged.log)"
fi
for _ in $(seq 1 20); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.5
done
munge -n | unmunge >/dev/null 2>&1 || die "munge does not work (see /var/log/munge/munged.log)"

# 3. slurm.conf: one node (this host), one default partition, no accounting.
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MB=$((MEM_MB * 9 / 10))
[ "$REAL_MB" -ge 256 ] || REAL_MB=256
mkdir -p "$CONF_DIR" "$STATE" "$SPOOL" "$LOGS" "$RUN"
NEW_CONF=$(
    cat <<EOF
# Written by scorebridge scripts/slurm-up.sh: a single-node test cluster.
ClusterName=scorebridge
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=120
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
    printf '%s\n' "$NEW_CONF" >"$CONF"
    changed=1
fi
# Slurm 22.05 refuses to start without cgroup.conf only when cgroup plugins are used; none are.

# 4. Daemons: restart them when the configuration changed, start them when not running.
if [ "$changed" = 1 ]; then
    for d in slurmd slurmctld; do
        if alive "$RUN/$d.pid" "$d"; then
            say "configuration changed: stopping $d"
            kill "$(cat "$RUN/$d.pid")" 2>/dev/null
            for _ in $(seq 1 20); do alive "$RUN/$d.pid" "$d" || break; sleep 0.5; done
        fi
    done
fi
if ! alive "$RUN/slurmctld.pid" slurmctld; then
    say "starting slurmctld"
    slurmctld || die "slurmctld did not start (see $LOGS/slurmctld.log)"
fi
for _ in $(seq 1 20); do
    timeout 5 scontrol ping 2>/dev/null | grep -q UP && break
    sleep 0.5
done
if ! alive "$RUN/slurmd.pid" slurmd; then
    say "starting slurmd"
    slurmd || die "slurmd did not start (see $LOGS/slurmd.log)"
fi

# 5. Wait until the node is idle (resume it if a previous run left it down or drained).
deadline=$((SECONDS + WAIT))
while [ "$SECONDS" -lt "$deadline" ]; do
    node_idle && break
    case "$(node_state)" in
        down | drain | drng | fail | unk) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 ;;
    esac
    sleep 1
done
if ! node_idle; then
    sinfo -N -l >&2 || true
    tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 2>/dev/null
    die "the node did not become idle within ${WAIT}s"
fi
say "up: $(sinfo -h -o 'partition %P, %D node(s) %N, %c CPUs, state %t' | head -n1)"
exit 0
