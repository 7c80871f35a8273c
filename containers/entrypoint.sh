#!/bin/bash
# Start one node of the Compose Slurm cluster: munged, then slurmctld ("controller") or slurmd ("slurmd")
# in the foreground, so the container lives exactly as long as the Slurm daemon.
#
# slurm.conf is written here from the environment (docker-compose.yml sets it), so the compose file is
# the one place that names the nodes and their addresses:
#   SLURM_CONTROLLER  name=address of the slurmctld host, e.g. controller=10.100.0.10
#   SLURM_NODES       space-separated name=address of the compute nodes, e.g. "c1=10.100.0.11 c2=10.100.0.12"
#   SLURM_CPUS        CPUs each compute node offers (may exceed the real count; config_overrides)
#   SLURM_MEMORY      RealMemory of each compute node in MB
#   SLURM_ACCOUNTING  1: accounting through slurmdbd, which the controller runs with a private MariaDB
#                     (socket only, no TCP), so that sacct works; it must be the same on every node
# A slurm.conf bind-mounted at /etc/slurm/slurm.conf is used as it is. `entrypoint.sh conf` only prints
# the slurm.conf the environment gives.
set -euo pipefail

role=${1:-slurmd}
conf=/etc/slurm/slurm.conf

render_conf() {
    local ctl_name=${SLURM_CONTROLLER%%=*} ctl_addr=${SLURM_CONTROLLER#*=}
    local names=() entry
    {
        cat <<CONF
# Written by htex-slurm-entrypoint from the container environment.
ClusterName=${SLURM_CLUSTER_NAME:-compose}
SlurmctldHost=${ctl_name}(${ctl_addr})
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# Without these, back-to-back jobs start seconds apart.
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=300
KillWait=5
SlurmdTimeout=30
# Containers share the host's cores; let each node claim SLURM_CPUS regardless.
SlurmdParameters=config_overrides
CONF
        if [ "${SLURM_ACCOUNTING:-0}" = 1 ]; then
            # By address: Slurm commands on the submit host cannot resolve the container names.
            echo "AccountingStorageType=accounting_storage/slurmdbd"
            echo "AccountingStorageHost=${ctl_addr}"
        else
            echo "AccountingStorageType=accounting_storage/none"
        fi
        for entry in ${SLURM_NODES}; do
            names+=("${entry%%=*}")
            echo "NodeName=${entry%%=*} NodeAddr=${entry#*=} CPUs=${SLURM_CPUS:-2} RealMemory=${SLURM_MEMORY:-2000} State=UNKNOWN"
        done
        local IFS=,
        echo "PartitionName=${SLURM_PARTITION:-debug} Nodes=${names[*]} Default=YES MaxTime=INFINITE State=UP"
    }
}

if [ "$role" = conf ]; then
    # Print the slurm.conf this environment gives, touch nothing (for checks and for the curious).
    render_conf
    exit 0
fi

if [ ! -s "$conf" ] || grep -q '^# Written by htex-slurm-entrypoint' "$conf"; then
    : "${SLURM_CONTROLLER:?SLURM_CONTROLLER (name=address) must be set}"
    : "${SLURM_NODES:?SLURM_NODES (name=address ...) must be set}"
    mkdir -p /etc/slurm
    render_conf > "$conf"
fi

mkdir -p /var/log/slurm /var/spool/slurmctld /var/spool/slurmd /run/munge
chown munge:munge /run/munge
chmod 0755 /run/munge
runuser -u munge -- /usr/sbin/munged

start_slurmdbd() {
    mkdir -p /run/mysqld /var/log/slurm/mariadb
    chown mysql:mysql /run/mysqld /var/log/slurm/mariadb
    if [ ! -d /var/lib/mysql/mysql ]; then
        mariadb-install-db --user=mysql --skip-test-db >/var/log/slurm/mariadb-install.log 2>&1
    fi
    runuser -u mysql -- mariadbd --skip-networking --socket=/run/mysqld/mysqld.sock \
        --log-error=/var/log/slurm/mariadb/mariadbd.log &
    local i
    for i in $(seq 100); do
        mariadb -e 'select 1' >/dev/null 2>&1 && break
        sleep 0.1
    done
    mariadb -e 'create database if not exists slurm_acct_db'
    # slurmdbd runs as root and reaches MariaDB over its socket, where root is authenticated by uid.
    cat > /etc/slurm/slurmdbd.conf <<DBD
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
DBD
    chmod 0600 /etc/slurm/slurmdbd.conf
    /usr/sbin/slurmdbd
    for i in $(seq 300); do
        sacctmgr -n list cluster >/dev/null 2>&1 && break
        sleep 0.1
    done
    local cluster
    cluster=$(sed -n 's/^ClusterName=//p' "$conf")
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$cluster"; then
        sacctmgr -i add cluster "$cluster" >/dev/null
    fi
}

case "$role" in
    controller|slurmctld)
        if grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$conf"; then
            start_slurmdbd
        fi
        exec /usr/sbin/slurmctld -D -f "$conf" ;;
    slurmd|node) exec /usr/sbin/slurmd -D -f "$conf" -N "$(hostname)" ;;
    *) exec "$@" ;;
esac
