#!/usr/bin/env bash
# simcluster's validation against real Slurm (simcluster/validate_real.py): installs Slurm when missing
# (scripts/install-slurm.sh), starts a local 3-node cluster (clusters/local_slurm.py, no accounting),
# measures the job start latency, runs both cases there and in simcluster (300 tasks at once; four waves
# that scale blocks out and in), writes real.json, sim.json, comparison.json and validation.png (the
# waves case's with a waves- prefix), and always stops the cluster again, whatever happened. Exits 1 when
# makespan, block-seconds, block submissions or the blocks-over-time curve differ by more than 15%, or
# when the cluster did not start or stop cleanly. Needs root. Extra arguments go to
# `python -m simcluster.validate_real` (--out, --repeats, --cases, --max-load, --load-wait).
#
# PYTHON names the interpreter of an environment with htex_ref[sim] installed (nox passes its own); the
# nodes share this machine's file system, so their worker pools run with it too. Without PYTHON, .venv
# is created or updated here. HTEX_SLURM_DIR and HTEX_SLURM_PREFIX choose the cluster's directory and
# name prefix; the defaults differ from the test cluster's, so that both can run at the same time.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-$(bash scripts/ensure-venv.sh sim)}

bash scripts/install-slurm.sh

cluster_dir=${HTEX_SLURM_DIR:-/tmp/htex-validate-slurm}
exec bash scripts/with-local-slurm.sh sim-validate --python "$python" \
    --dir "$cluster_dir" --prefix "${HTEX_SLURM_PREFIX:-htexv}" --nodes 3 \
    -- "$python" -m simcluster.validate_real --info "$cluster_dir.info.json" "$@"
