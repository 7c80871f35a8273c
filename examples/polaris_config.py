"""The configuration the ALCF Parsl tutorial uses on Polaris, for htex_ref, and a local stand-in for it.

``polaris_config(...)``: one PBS Pro job (block) of one Polaris node; ``mpiexec`` starts one worker pool
on each node of the job, and the pool starts 4 workers, one per A100 GPU (worker i sees GPU i in
``CUDA_VISIBLE_DEVICES``), each pinned to 8 hardware threads, counted from the top (``block-reverse``).

``local_config(...)``: the same executor settings with ``LocalProvider`` standing in for PBS Pro and
four made-up accelerator names standing in for the GPUs, so the workflow can run on any machine.
"""

from __future__ import annotations

from typing import Any

from htex_ref import Config, HighThroughputExecutor, LocalProvider, MpiExecLauncher, PBSProProvider
from htex_ref.config import machine_workers

#: Each Polaris node has 4 A100 GPUs and 64 hardware threads (32 cores).
GPUS_PER_NODE = 4
CPUS_PER_NODE = 64

#: Settings shared by the Polaris and the local configuration.
EXECUTOR_SETTINGS: dict[str, Any] = {
    "label": "htex_polaris",
    "heartbeat_period": 15,
    "heartbeat_threshold": 120,
    # One worker per GPU; this also caps the worker count.
    "max_workers_per_node": GPUS_PER_NODE,
    # Hardware threads per worker.
    "cores_per_worker": 8,
    # A task that holds its GPU for long should not have others queued behind it on the same node.
    "prefetch_capacity": 0,
}


def polaris_config(
    account: str,
    queue: str = "debug",
    walltime: str = "0:10:00",
    nodes_per_block: int = 1,
    max_blocks: int = 1,
    worker_init: str = "",
    scheduler_options: str = "#PBS -l filesystems=home:eagle",
    retries: int = 2,
    run_dir: str | None = None,
) -> Config:
    """A Config that runs tasks on Polaris compute nodes, one worker per GPU.

    ``worker_init`` runs in the job before the worker pools start: activate the environment that has
    htex_ref installed there (``source /path/to/venv/bin/activate``). Call this on a Polaris login node.
    """
    provider = PBSProProvider(
        account=account,
        queue=queue,
        # PBS Pro's select statement gets this appended: ask for the node's GPUs.
        select_options=f"ngpus={GPUS_PER_NODE}",
        # Extra #PBS lines for the job script, e.g. the file systems the job needs.
        scheduler_options=scheduler_options,
        worker_init=worker_init,
        nodes_per_block=nodes_per_block,
        init_blocks=1,
        min_blocks=0,
        max_blocks=max_blocks,
        cpus_per_node=CPUS_PER_NODE,
        walltime=walltime,
        # One worker pool per node: mpiexec with one rank per node (--ppn 1) and 64 threads for it
        # (--depth=64); CPU binding is left to the pool, which pins its workers itself.
        launcher=MpiExecLauncher(bind_cmd="--cpu-bind", overrides="--depth=64 --ppn 1"),
    )
    executor = HighThroughputExecutor(
        **EXECUTOR_SETTINGS,
        available_accelerators=GPUS_PER_NODE,
        cpu_affinity="block-reverse",
        provider=provider,
        run_dir=run_dir,
    )
    return Config(executors=[executor], retries=retries)


def local_config(run_dir: str | None = None, encrypted: bool = True) -> Config:
    """The Polaris executor settings on this machine: LocalProvider and four fake GPUs named 0..3."""
    # block-reverse needs a hardware thread per worker; a small machine runs the workers unpinned.
    affinity = "block-reverse" if machine_workers() >= GPUS_PER_NODE else "none"
    # Four workers fit however few CPUs this machine has.
    settings = {**EXECUTOR_SETTINGS, "cores_per_worker": min(1.0, machine_workers() / GPUS_PER_NODE)}
    executor = HighThroughputExecutor(
        **settings,
        available_accelerators=[str(i) for i in range(GPUS_PER_NODE)],
        cpu_affinity=affinity,
        provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1),
        address="127.0.0.1",
        encrypted=encrypted,
        run_dir=run_dir,
    )
    return Config(executors=[executor], retries=0)
