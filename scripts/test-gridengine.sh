#!/usr/bin/env bash
# The Grid Engine cluster tests (tests/cluster/test_gridengine.py) on a real Son of Grid Engine: installs
# it when missing (scripts/install-gridengine.sh), starts the cluster (clusters/gridengine.py: a qmaster
# on this host and 2 execution hosts in network namespaces), runs the tests, and always stops the cluster
# again, whatever happened. Exits with pytest's code, or 1 if the cluster did not start or did not stop
# cleanly (its logs are then kept and named). Needs root. Extra arguments go to pytest.
#
# PYTHON names the interpreter of an environment with htex_ref installed (nox passes its own); the
# execution hosts share this machine's file system, so their worker pools run with that same interpreter.
# Without PYTHON, .venv is created or updated here. HTEX_GE_DIR and HTEX_GE_PREFIX choose the cluster's
# directory and name prefix (defaults /tmp/htex-gridengine and htexg).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-$(bash scripts/ensure-venv.sh dev)}
cluster_dir=${HTEX_GE_DIR:-/tmp/htex-gridengine}
prefix=${HTEX_GE_PREFIX:-htexg}
# Outside the cluster directory, which up clears and down removes.
info="$cluster_dir.info.json"

bash scripts/install-gridengine.sh

stop_cluster() {
    local rc=$? keep=()
    # After a failure keep the cluster's logs (the daemons and network are removed all the same).
    [ "$rc" -ne 0 ] && keep=(--keep-dir)
    local t0=$SECONDS
    if ! "$python" -m clusters.gridengine down --info "$info" --dir "$cluster_dir" --prefix "$prefix" "${keep[@]}"; then
        echo "test-gridengine: the cluster did not stop cleanly (see above)" >&2
        rc=1
    fi
    echo "test-gridengine: cluster down took $((SECONDS - t0)) s" >&2
    [ "$rc" -ne 0 ] && [ -d "$cluster_dir" ] && echo "test-gridengine: cluster files and logs kept in $cluster_dir" >&2
    exit "$rc"
}
trap stop_cluster EXIT
# So that an interrupted run still stops the cluster (through the EXIT trap).
trap 'exit 130' INT
trap 'exit 143' TERM

"$python" -m clusters.gridengine up --info "$info" --dir "$cluster_dir" --prefix "$prefix" --nodes 2
HTEX_CLUSTER_INFO="$info" "$python" -m pytest tests/cluster/test_gridengine.py -p no:cacheprovider "$@"
