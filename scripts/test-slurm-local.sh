#!/usr/bin/env bash
# The cluster tests (tests/cluster) on a local multi-node Slurm: installs Slurm when missing
# (scripts/install-slurm.sh), starts the cluster (clusters/local_slurm.py: 3 nodes in network
# namespaces, with slurmdbd so that both the sacct and the squeue status paths run), runs the tests,
# and always stops the cluster again, whatever happened. Exits with pytest's code, or 1 if the
# cluster did not start or did not stop cleanly. Needs root. Extra arguments go to pytest.
#
# PYTHON names the interpreter of an environment with htex_ref installed (nox passes its own). The
# nodes share this machine's file system, so worker pools on the nodes run with that same interpreter.
# Without PYTHON, .venv is created or updated here. HTEX_SLURM_DIR and HTEX_SLURM_PREFIX choose the
# cluster's directory and name prefix (defaults /tmp/htex-local-slurm and htexs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

python=${PYTHON:-}
if [ -z "$python" ]; then
    .venv/bin/python -m pip --version >/dev/null 2>&1 || { rm -rf .venv; python3 -m venv .venv; }
    .venv/bin/python -m pip install -q -e '.[dev]'
    python="$root/.venv/bin/python"
fi

bash scripts/install-slurm.sh

# Two clusters can run side by side with different directories and name prefixes.
cluster_dir=${HTEX_SLURM_DIR:-/tmp/htex-local-slurm}
prefix=${HTEX_SLURM_PREFIX:-htexs}
# Outside the cluster directory, which up clears and down removes.
info="$cluster_dir.info.json"

stop_cluster() {
    local rc=$? keep=()
    # After a failure keep the cluster's logs (the daemons and network are removed all the same).
    [ "$rc" -ne 0 ] && keep=(--keep-dir)
    local t0=$SECONDS
    if ! "$python" -m clusters.local_slurm down --info "$info" --dir "$cluster_dir" --prefix "$prefix" "${keep[@]}"; then
        echo "test-slurm-local: the cluster did not stop cleanly (see above)" >&2
        rc=1
    fi
    echo "test-slurm-local: cluster down took $((SECONDS - t0)) s" >&2
    [ "$rc" -ne 0 ] && [ -d "$cluster_dir/log" ] && echo "test-slurm-local: cluster logs kept in $cluster_dir/log" >&2
    exit "$rc"
}
trap stop_cluster EXIT
# So that an interrupted run still stops the cluster (through the EXIT trap).
trap 'exit 130' INT
trap 'exit 143' TERM

"$python" -m clusters.local_slurm up --info "$info" --dir "$cluster_dir" --prefix "$prefix" --nodes 3 --accounting
HTEX_CLUSTER_INFO="$info" "$python" -m pytest tests/cluster -p no:cacheprovider "$@"
