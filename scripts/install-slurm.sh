#!/usr/bin/env bash
# Install the Debian packages the local Slurm cluster (clusters/local_slurm.py) needs: munge, slurmctld,
# slurmd and the client commands, plus slurmdbd and MariaDB for accounting (sacct), the network tools
# the namespaces use, and MPICH (mpiexec; mpicc and mpi.h from libmpich-dev) for the MPI-mode tests
# (tests/cluster/test_mpi.py build an MPI program and run it across the nodes). Fast when everything is
# already there; never starts a service (the cluster script starts its own daemons and stops them by
# PID). Needs root.
set -euo pipefail

packages=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server iproute2 iptables util-linux mpich libmpich-dev)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-slurm: all packages present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-slurm: missing packages ${missing[*]}; run this script as root" >&2
    exit 1
fi
echo "install-slurm: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Other jobs may hold the dpkg lock for a while: wait for it instead of failing.
apt-get -o DPkg::Lock::Timeout=600 update -q
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
