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

python=${PYTHON:-$(bash scripts/ensure-venv.sh dev)}

bash scripts/install-slurm.sh

# Two clusters can run side by side with different directories and name prefixes.
exec bash scripts/with-local-slurm.sh test-slurm-local --python "$python" \
    --dir "${HTEX_SLURM_DIR:-/tmp/htex-local-slurm}" --prefix "${HTEX_SLURM_PREFIX:-htexs}" --nodes 3 --accounting \
    -- "$python" -m pytest tests/cluster -p no:cacheprovider "$@"
