"""``MPIExecutor``: a ``HighThroughputExecutor`` in MPI mode, with Parsl's parameter set and defaults.

Parsl's parameters are HighThroughputExecutor's minus those that size and place workers on a node
(``cores_per_worker``, ``mem_per_worker``, ``max_workers_per_node``, ``cpu_affinity``,
``available_accelerators``, ``manager_selector``), plus ``max_workers_per_block`` (how many tasks a block
runs at once) and ``mpi_launcher``; the default label is ``"MPIExecutor"`` and ``encrypted`` is off.
htex_ref's own MPI settings (``mpi_nodes``, ``mpi_share_nodes``, ``mpi_policy``) are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from htex_ref.executor import HighThroughputExecutor
from htex_ref.providers.base import ExecutionProvider
from htex_ref.settings import is_int

#: HighThroughputExecutor parameters an MPIExecutor does not take (its workers are fixed by the block).
EXCLUDED_PARAMETERS = ("cores_per_worker", "mem_per_worker", "max_workers_per_node", "cpu_affinity",
                       "available_accelerators", "manager_selector", "enable_mpi_mode")


def check_mpi_options(owner: str, options: dict[str, Any]) -> None:
    """Refuse, by name, the parameters an MPI executor does not take."""
    for name in EXCLUDED_PARAMETERS:
        if name in options:
            why = ("it is always in MPI mode" if name == "enable_mpi_mode" else
                   "each block runs one worker pool with max_workers_per_block workers (use "
                   "HighThroughputExecutor(enable_mpi_mode=True, ...) to size workers yourself)")
            raise TypeError(f"{owner} takes no {name!r}: {why}")


def check_workers_per_block(value: Any) -> int:
    if isinstance(value, bool) or not is_int(value) or value < 1:
        raise ValueError(f"max_workers_per_block must be an int >= 1, got {value!r}")
    return int(value)


class MPIExecutor(HighThroughputExecutor):
    """A HighThroughputExecutor in MPI mode: MPI tasks (``num_nodes``, ``ranks_per_node``, ``num_ranks``,
    ``launcher_options``) are placed on the nodes of a block, ``max_workers_per_block`` at a time.

    Parameters
    ----------
    label : str
        Name of the executor (default ``"MPIExecutor"``).
    max_workers_per_block : int
        How many tasks one block runs at once (one worker pool per block, on its first node).
    mpi_launcher : str
        The launcher ``PARSL_MPI_PREFIX`` is written for: ``"mpiexec"`` (default), ``"srun"`` or ``"aprun"``.
    encrypted : bool
        CurveZMQ on the executor's sockets; off by default, as in Parsl's MPIExecutor.

    The other parameters are Parsl's MPIExecutor's, with HighThroughputExecutor's meanings; htex_ref's own
    settings (``mpi_nodes``, ``mpi_share_nodes``, ``mpi_policy``, ``strategy``, ``run_dir``,
    ``drain_before_walltime``, ``max_outstanding``, ...) are keywords too. Those that size workers on a
    node are refused: the provider must use a ``SimpleLauncher``.
    """

    def __init__(
        self,
        label: str = "MPIExecutor",
        provider: ExecutionProvider | None = None,
        launch_cmd: str | None = None,
        interchange_launch_cmd: Sequence[str] | None = None,
        address: str | None = None,
        loopback_address: str = "127.0.0.1",
        worker_port: int | None = None,
        worker_port_range: tuple[int, int] = (54000, 55000),
        interchange_port_range: tuple[int, int] = (55000, 56000),
        storage_access: Sequence[Any] | None = None,
        working_dir: str | None = None,
        worker_debug: bool = False,
        max_workers_per_block: int = 1,
        prefetch_capacity: int | None = 0,
        heartbeat_threshold: float = 120,
        heartbeat_period: float = 30,
        drain_period: float | None = None,
        poll_period: int = 10,
        address_probe_timeout: float | None = None,
        worker_logdir_root: str | None = None,
        mpi_launcher: str = "mpiexec",
        block_error_handler: bool | str | Callable[..., Any] = True,
        encrypted: bool = False,
        remote_monitoring_radio: Any = None,
        **options: Any,
    ) -> None:
        check_mpi_options("MPIExecutor", options)
        super().__init__(
            # The block's one pool runs exactly max_workers_per_block workers, whatever the node's cores.
            cores_per_worker=1e-9, max_workers_per_node=check_workers_per_block(max_workers_per_block),
            enable_mpi_mode=True, label=label, provider=provider, launch_cmd=launch_cmd,
            interchange_launch_cmd=interchange_launch_cmd, address=address, loopback_address=loopback_address,
            worker_port=worker_port, worker_port_range=worker_port_range,
            interchange_port_range=interchange_port_range, storage_access=storage_access, working_dir=working_dir,
            worker_debug=worker_debug, prefetch_capacity=prefetch_capacity,
            heartbeat_threshold=heartbeat_threshold, heartbeat_period=heartbeat_period, drain_period=drain_period,
            poll_period=poll_period, address_probe_timeout=address_probe_timeout,
            worker_logdir_root=worker_logdir_root, mpi_launcher=mpi_launcher,
            block_error_handler=block_error_handler, encrypted=encrypted,
            remote_monitoring_radio=remote_monitoring_radio, **options,
        )
        self.max_workers_per_block = max_workers_per_block

    def __repr__(self) -> str:
        return f"MPIExecutor(label={self.label!r}, provider={self.provider!r})"

    def monitor_resources(self) -> bool:
        """False: an MPI task's processes are spread over nodes, beyond one node's process tree."""
        return False
