#!/usr/bin/env bash
# Install what the Docker Compose Slurm cluster (clusters/compose.py) needs on the submit host:
# Docker engine, the v1 docker-compose command, debootstrap (to make a base image without a registry),
# and the Slurm client + munge (the host submits jobs to the containers' slurmctld). Safe to run again:
# it only calls apt when something is missing.
set -euo pipefail

need=()
for pkg in docker.io docker-compose debootstrap slurm-client munge iptables; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        need+=("$pkg")
    fi
done
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-docker.sh: missing packages ${need[*]}; run as root to install them" >&2
    exit 1
fi
# Other jobs on the machine may hold the dpkg lock; wait for it rather than fail.
apt_opts=(-o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet.
if ! apt-cache show docker.io >/dev/null 2>&1; then
    apt-get -o DPkg::Lock::Timeout=600 update -q
fi
apt-get "${apt_opts[@]}" install "${need[@]}"
