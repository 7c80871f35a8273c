"""An ensemble of MPI runs inside one allocation: the ALCF Polaris tutorial's workflow in MPI mode.

On Polaris (``--polaris ACCOUNT``): one PBS Pro job of 4 nodes; one worker pool on its first node runs
up to 4 tasks at a time and gives each the nodes it asks for; a bash app starts its MPI program with
``$PARSL_MPI_PREFIX`` (``mpiexec -n R -ppn P -hosts NODES``). Here (the default): the same executor with
``LocalProvider`` and this machine named twice as two "nodes" (``localhost`` and ``127.0.0.1``), so
MPICH's ``mpiexec`` really starts the ranks; each rank prints its rank and the name it was placed on.

    python examples/5_mpi_ensemble.py             # on any machine with MPICH's mpiexec
    python examples/5_mpi_ensemble.py --polaris ACCOUNT --worker-init "module load conda; conda activate env"
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any

from htex_ref import Config, LocalProvider, MPIExecutor, PBSProProvider, SimpleLauncher, bash_app, load


def polaris_config(account: str, worker_init: str, queue: str = "debug", walltime: str = "0:30:00") -> Config:
    """Polaris: one PBS Pro job of 4 nodes, MPI tasks placed inside it."""
    return Config(executors=[MPIExecutor(
        label="polaris_mpi",
        max_workers_per_block=4,  # tasks running at once in a block
        mpi_launcher="mpiexec",  # Cray PALS' mpiexec on Polaris
        provider=PBSProProvider(
            account=account, queue=queue, walltime=walltime, nodes_per_block=4, init_blocks=1, max_blocks=1,
            cpus_per_node=64, select_options="ngpus=4", scheduler_options="#PBS -l filesystems=home:eagle",
            worker_init=worker_init,
            # MPI mode runs one pool per block, on its first node: the job script starts it once.
            launcher=SimpleLauncher(),
        ),
    )])


def local_config(run_dir: str | None = None) -> Config:
    """This machine as a 2-node block: the same settings, with an explicit node list."""
    return Config(executors=[MPIExecutor(
        label="local_mpi",
        max_workers_per_block=2,
        mpi_launcher="mpiexec",
        mpi_nodes=["localhost", "127.0.0.1"],
        provider=LocalProvider(launcher=SimpleLauncher()),
        address="127.0.0.1",
        run_dir=run_dir,
    )])


@bash_app
def ranks(stdout: str = "", parsl_resource_specification: dict[str, Any] | None = None) -> str:
    # Each rank reports itself: MPICH's Hydra gives every rank PMI_RANK, PMI_SIZE and the host name it
    # was placed on (MPIR_CVAR_CH3_INTERFACE_HOSTNAME); on Polaris, the node's own name. pipefail: a
    # failing mpiexec fails the task (with its stderr), rather than leaving sort's empty output.
    return ('set -o pipefail; $PARSL_MPI_PREFIX sh -c \'echo "rank $PMI_RANK of $PMI_SIZE on '
            '${MPIR_CVAR_CH3_INTERFACE_HOSTNAME:-$(hostname)}"\' | sort')


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--polaris", metavar="ACCOUNT", help="run on Polaris, charging ACCOUNT")
    p.add_argument("--worker-init", default="", help="Polaris: commands that activate htex_ref's environment")
    a = p.parse_args()
    if a.polaris:
        config = polaris_config(a.polaris, a.worker_init)
        sizes = [{"num_nodes": 1, "ranks_per_node": 4}, {"num_nodes": 2, "ranks_per_node": 4},
                 {"num_nodes": 4, "ranks_per_node": 4}]
    else:
        if shutil.which("mpiexec") is None:
            print("This example needs an mpiexec (Debian: apt-get install mpich)", file=sys.stderr)
            return 2
        config = local_config()
        sizes = [{"num_nodes": 1, "ranks_per_node": 2}, {"num_nodes": 2, "ranks_per_node": 1},
                 {"num_nodes": 2, "num_ranks": 4}]
    with load(config):
        outputs = [f"mpi-{i}.out" for i in range(len(sizes))]
        futures = [ranks(stdout=out, parsl_resource_specification=spec)
                   for out, spec in zip(outputs, sizes, strict=True)]
        for spec, out, fut in zip(sizes, outputs, futures, strict=True):
            fut.result()
            with open(out) as f:
                lines = [line.strip() for line in f if line.strip()]
            print(f"{spec}: {len(lines)} ranks")
            for line in lines:
                print(f"  {line}")
            os.remove(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
