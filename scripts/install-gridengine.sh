#!/usr/bin/env bash
# Install the Debian packages the Grid Engine test cluster (clusters/gridengine.py) needs: Son of Grid
# Engine 8.1.9 (gridengine-master, -exec, -client) and the network tools the namespaces use. debconf is
# preseeded so that apt asks nothing and creates no cell of its own (the cluster script makes a private
# SGE_ROOT and cell under its directory). Fast when everything is already there; never starts a service
# (the cluster script starts its own daemons and stops them). Needs root.
set -euo pipefail

packages=(gridengine-master gridengine-exec gridengine-client iproute2 util-linux)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-gridengine: all packages present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-gridengine: missing packages ${missing[*]}; run this script as root" >&2
    exit 1
fi
echo "install-gridengine: installing ${missing[*]}"
host=$(hostname)
for pkg in gridengine-common gridengine-client gridengine-master; do
    printf '%s shared/gridenginemaster string %s\n%s shared/gridenginecell string default\n%s shared/gridengineconfig boolean false\n' \
        "$pkg" "$host" "$pkg" "$pkg"
done | debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
# Other jobs may hold the dpkg lock for a while: wait for it instead of failing.
apt-get -o DPkg::Lock::Timeout=600 update -q
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
