"""``MPIExecutor``: a ``HighThroughputExecutor`` in MPI mode, with Parsl's parameter set and defaults.

Parsl's parameters are HighThroughputExecutor's minus those that size and place workers on a node
(``cores_per_worker``, ``mem_per_worker``, ``max_workers_per_node``, ``cpu_affinity``,
``available_accelerators``, ``manager_selector``), plus ``max_workers_per_block`` (how many tasks a block
runs at once) and ``mpi_launcher``; the default label is ``"MPIExecutor"`` and ``encrypted`` is off.
htex_ref's own MPI settings (``mpi_nodes``, ``mpi_share_nodes``, ``mpi_policy``) are kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from htex_ref.executor import HighThroughputExecutor
from htex_ref.providers.base import ExecutionProvider
from htex_ref.settings import is_int

#: HighThroughputExecutor parameters an MPIExecutor does not take (its workers are fixed by the block).
EXCLUDED_PARAMETERS = frozenset({"cores_per_worker", "mem_per_worker", "max_workers_per_node", "cpu_affinity",
                                 "available_accelerators", "manager_selector", "enable_mpi_mode"})


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

    The other parameters are HighThroughputExecutor's (see its documentation), except those that size
    workers on a node: the provider must use a ``SimpleLauncher``.
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
        drain_before_walltime: float | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        strategy: str = "simple",
        strategy_period: float = 5.0,
        max_idletime: float = 120.0,
        interchange_start_timeout: float = 30.0,
        block_registration_timeout: float | None = 120.0,
        max_outstanding: int | None = None,
        max_workers: int | float | None = None,
        worker_ports: tuple[int, int] | None = None,
        managed: bool = True,
        mpi_nodes: Sequence[str] | None = None,
        mpi_share_nodes: bool = False,
        mpi_policy: str = "backfill",
    ) -> None:
        if isinstance(max_workers_per_block, bool) or not is_int(max_workers_per_block) or max_workers_per_block < 1:
            raise ValueError(f"max_workers_per_block must be an int >= 1, got {max_workers_per_block!r}")
        super().__init__(
            # The block's one pool runs exactly max_workers_per_block workers, whatever the node's cores.
            cores_per_worker=1e-9, max_workers_per_node=max_workers_per_block, enable_mpi_mode=True,
            label=label, provider=provider, launch_cmd=launch_cmd, interchange_launch_cmd=interchange_launch_cmd,
            address=address, loopback_address=loopback_address, worker_port=worker_port,
            worker_port_range=worker_port_range, interchange_port_range=interchange_port_range,
            storage_access=storage_access, working_dir=working_dir, worker_debug=worker_debug,
            prefetch_capacity=prefetch_capacity, heartbeat_threshold=heartbeat_threshold,
            heartbeat_period=heartbeat_period, drain_period=drain_period, poll_period=poll_period,
            address_probe_timeout=address_probe_timeout, worker_logdir_root=worker_logdir_root,
            mpi_launcher=mpi_launcher, block_error_handler=block_error_handler, encrypted=encrypted,
            remote_monitoring_radio=remote_monitoring_radio, drain_before_walltime=drain_before_walltime,
            run_dir=run_dir, strategy=strategy, strategy_period=strategy_period, max_idletime=max_idletime,
            interchange_start_timeout=interchange_start_timeout,
            block_registration_timeout=block_registration_timeout, max_outstanding=max_outstanding,
            max_workers=max_workers, worker_ports=worker_ports, managed=managed, mpi_nodes=mpi_nodes,
            mpi_share_nodes=mpi_share_nodes, mpi_policy=mpi_policy,
        )
        self.max_workers_per_block = max_workers_per_block

    def __repr__(self) -> str:
        return f"MPIExecutor(label={self.label!r}, provider={self.provider!r})"

    def monitor_resources(self) -> bool:
        """False: an MPI task's processes are spread over nodes, beyond one node's process tree."""
        return False
