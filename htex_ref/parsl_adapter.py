"""The adapter that puts htex_ref's executor into Parsl's own ``Config``: Parsl keeps its DataFlowKernel,
htex_ref runs the tasks.

Import it only where Parsl is installed (it imports ``parsl``)::

    import parsl
    from parsl.providers import SlurmProvider          # Parsl's providers work, and htex_ref's too
    from htex_ref.parsl_adapter import HtexRefExecutor

    config = parsl.Config(executors=[HtexRefExecutor(label="htex", provider=SlurmProvider(...),
                                                     max_workers_per_node=4)])
    with parsl.load(config):
        ...

What this module owns, and why it is shaped so:

- ``HtexRefExecutor`` is a Parsl ``BlockProviderExecutor``: Parsl's job-status poller drives it exactly as
  it drives Parsl's HighThroughputExecutor. The Config's ``strategy``, ``strategy_period`` and
  ``max_idletime`` decide when blocks start and stop (``scale_out_facade``, ``scale_in_facade``), the
  poller reads ``status()`` every ``provider.status_polling_interval`` seconds and hands it to the
  ``block_error_handler`` (Parsl's meaning: called with this adapter and Parsl ``JobStatus``es), and block
  states reach Parsl's monitoring. Inside, an htex_ref ``HighThroughputExecutor`` with the ``external``
  strategy carries the requests out: it starts nothing by itself (not even ``init_blocks``: Parsl's
  strategy asks for those), but still notices blocks that end, times out blocks that never register,
  cancels every block at shutdown, and, unlike Parsl, fails tasks that wait with no block while Parsl's
  strategy starts none (``NoBlocks``).
- Exceptions that cross to Parsl are Parsl's own classes: each htex_ref error a future or ``submit`` can
  raise is re-raised as a class that subclasses both htex_ref's class and Parsl's (``ManagerLost`` is an
  ``htex_ref.errors.ManagerLost`` and a ``parsl.executors.high_throughput.errors.ManagerLost``), so Parsl
  code, retry handlers and htex_ref code all catch it.
- ``ParslProvider`` lets a Parsl execution provider (with its Parsl launcher) start the blocks, so a Parsl
  configuration needs only its executor's import changed.
- ``HtexRefMPIExecutor`` is the same for Parsl's ``MPIExecutor``: Parsl's MPIExecutor parameters, and an
  inner htex_ref ``HighThroughputExecutor`` in MPI mode (``enable_mpi_mode=True``).

The inner executor is built from the keyword arguments at construction (so bad values fail there) and
built again in ``start`` with the run directory Parsl chose, unless ``run_dir`` was given.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from parsl.app import errors as parsl_app_errors
from parsl.executors import HighThroughputExecutor as ParslHighThroughputExecutor
from parsl.executors import errors as parsl_errors
from parsl.executors.high_throughput import errors as parsl_htex_errors
from parsl.executors.high_throughput.manager_selector import BlockIdManagerSelector as ParslBlockIdManagerSelector
from parsl.executors.high_throughput.manager_selector import ManagerSelector as ParslManagerSelector
from parsl.executors.high_throughput.manager_selector import RandomManagerSelector as ParslRandomManagerSelector
from parsl.executors.high_throughput.mpi_executor import MPIExecutor as ParslMPIExecutor
from parsl.executors.status_handling import BlockProviderExecutor
from parsl.jobs import error_handlers as parsl_error_handlers
from parsl.jobs.states import JobState as ParslJobState
from parsl.jobs.states import JobStatus as ParslJobStatus
from parsl.monitoring.radios.base import RadioConfig
from parsl.monitoring.radios.filesystem import FilesystemRadio
from parsl.monitoring.radios.htex import HTEXRadio
from parsl.providers.base import ExecutionProvider as ParslExecutionProvider
from parsl.serialize import errors as parsl_serialize_errors

from htex_ref import errors
from htex_ref.core.block_messages import ExternalPass
from htex_ref.core.jobs import JobState
from htex_ref.executor import _SETTING_NAMES, HighThroughputExecutor
from htex_ref.mpi_executor import check_mpi_options, check_workers_per_block
from htex_ref.providers.base import ExecutionProvider, JobStatus
from htex_ref.providers.cluster import parse_walltime

__all__ = [
    "BadStateException", "CommandClientTimeoutError", "DeserializationError", "ExecutorError", "HtexRefExecutor",
    "HtexRefMPIExecutor", "InvalidResourceSpecification", "ManagerLost", "NoBlocks", "ParslProvider", "ScalingFailed",
    "SerializationError", "VersionMismatch", "WorkerLost", "to_parsl",
]

# ------------------------------------------------------------------------ errors that cross to Parsl


class _Crossing:
    """A copy of an htex_ref error as the class that is also Parsl's (see ``to_parsl``)."""


class WorkerLost(errors.WorkerLost, parsl_htex_errors.WorkerLost, _Crossing):
    """A worker died running the task (htex_ref's and Parsl's ``WorkerLost``)."""


class CrashLimitExceeded(errors.CrashLimitExceeded, parsl_htex_errors.WorkerLost, _Crossing):
    """A task's workers died on each of its attempts up to the crash limit (a Parsl ``WorkerLost``)."""


class TaskTimeout(errors.TaskTimeout, parsl_app_errors.AppTimeout, _Crossing):
    """A task ran past its walltime and was stopped (htex_ref's ``TaskTimeout``, Parsl's ``AppTimeout``)."""


class TaskMemoryExceeded(errors.TaskMemoryExceeded, parsl_errors.ExecutorError, _Crossing):
    """A task went over its memory limit (htex_ref's ``TaskMemoryExceeded``, a Parsl ``ExecutorError``)."""


class ManagerLost(errors.ManagerLost, parsl_htex_errors.ManagerLost, _Crossing):
    """The worker pool holding the task went away (htex_ref's and Parsl's ``ManagerLost``)."""


class VersionMismatch(errors.VersionMismatch, parsl_htex_errors.VersionMismatch, _Crossing):
    """A worker pool runs another protocol or Python (htex_ref's and Parsl's ``VersionMismatch``)."""


class CommandClientTimeoutError(errors.CommandTimeout, parsl_htex_errors.CommandClientTimeoutError, _Crossing):
    """The interchange did not answer in time (htex_ref's ``CommandTimeout``)."""


class BadStateException(errors.BadStateException, parsl_errors.BadStateException, _Crossing):
    """The executor failed; every task fails with this (htex_ref's and Parsl's ``BadStateException``)."""


class InvalidResourceSpecification(errors.InvalidResourceSpecification, parsl_errors.InvalidResourceSpecification,
                                   _Crossing):
    """A resource specification the executor does not support."""


class ScalingFailed(errors.ScalingFailed, parsl_errors.ScalingFailed, _Crossing):
    """A provider could not start a block."""


class NoBlocks(errors.NoBlocks, parsl_errors.ExecutorError, _Crossing):
    """Tasks waited with no block while nothing would start one (Parsl has no such error: it waits)."""


class ExecutorError(errors.HtexError, parsl_errors.ExecutorError, _Crossing):
    """Any other htex_ref error about the executor (shut down, interchange gone, ...), as Parsl's
    ``ExecutorError``; ``original`` is the htex_ref exception."""

    original: BaseException

    def __str__(self) -> str:
        return str(self.original)


class SerializationError(errors.SerializationError, parsl_serialize_errors.SerializationError, _Crossing):
    """The function or its arguments could not be serialized."""


class DeserializationError(errors.DeserializationError, parsl_serialize_errors.DeserializationError, _Crossing):
    """A result could not be deserialized."""


# Most specific first: the first class in an error's MRO found here decides.
_CROSSINGS: dict[type[BaseException], type[BaseException]] = {
    errors.CrashLimitExceeded: CrashLimitExceeded,
    errors.TaskTimeout: TaskTimeout,
    errors.TaskMemoryExceeded: TaskMemoryExceeded,
    errors.WorkerLost: WorkerLost,
    errors.ManagerLost: ManagerLost,
    errors.VersionMismatch: VersionMismatch,
    errors.CommandTimeout: CommandClientTimeoutError,
    errors.BadStateException: BadStateException,
    errors.InvalidResourceSpecification: InvalidResourceSpecification,
    errors.ScalingFailed: ScalingFailed,
    errors.NoBlocks: NoBlocks,
    errors.SerializationError: SerializationError,
    errors.DeserializationError: DeserializationError,
    errors.HtexError: ExecutorError,
}


def to_parsl(exc: BaseException, executor: Any = None) -> BaseException:
    """``exc`` as the class that is both its htex_ref class and Parsl's; anything else (the task's own
    exception, say) unchanged. The copy keeps the message, attributes, cause and traceback, and gets
    the attribute names Parsl's class has (``executor`` and ``reason`` for Parsl's executor errors)."""
    if isinstance(exc, _Crossing):
        return exc
    target = next((_CROSSINGS[c] for c in type(exc).__mro__ if c in _CROSSINGS), None)
    if target is None:
        return exc
    new = target.__new__(target)
    BaseException.__init__(new, *exc.args)
    new.__dict__.update(exc.__dict__)
    if isinstance(new, parsl_errors.ExecutorError):
        new.executor = executor
        if not hasattr(new, "reason"):
            new.reason = str(exc)
    if isinstance(new, ExecutorError):
        new.original = exc
    if isinstance(new, ManagerLost):
        new.tstamp = time.time()
    if isinstance(new, VersionMismatch):
        new.interchange_version, new.manager_version = exc.interchange_info, exc.manager_info  # type: ignore
    if isinstance(new, parsl_serialize_errors.DeserializationError) and not hasattr(new, "reason"):
        new.reason = str(exc)
    new.__cause__, new.__traceback__ = exc.__cause__, exc.__traceback__
    return new


# ------------------------------------------------------------------------------ Parsl's providers


class ParslProvider(ExecutionProvider):
    """A Parsl execution provider (and its Parsl launcher) behind htex_ref's provider interface.

    ``submit``, ``status`` and ``cancel`` go to the Parsl provider; its statuses come back as htex_ref's.
    ``script_dir`` is the Parsl provider's (Parsl's DataFlowKernel sets it). The block shape is read
    from the Parsl provider when this is made.
    """

    def __init__(self, provider: ParslExecutionProvider) -> None:
        self.parsl = provider
        self.label = str(getattr(provider, "label", type(provider).__name__))
        for name in ("init_blocks", "min_blocks", "max_blocks", "nodes_per_block", "parallelism"):
            setattr(self, name, getattr(provider, name))
        self.launcher = provider.launcher  # Parsl's: the Parsl provider calls it
        self.worker_init = getattr(provider, "worker_init", "") or ""
        self.cmd_timeout = float(getattr(provider, "cmd_timeout", 30) or 30)
        self.cores_per_node = getattr(provider, "cores_per_node", None)
        self.mem_per_node = getattr(provider, "mem_per_node", None)
        walltime = getattr(provider, "walltime", None)
        self.walltime_seconds = float(parse_walltime(walltime)) if isinstance(walltime, str) else None
        # Parsl's LocalProvider runs every block on this host: the loopback address reaches its pools.
        self.same_host = type(provider).__name__ == "LocalProvider"

    @property
    def script_dir(self) -> str | None:
        return getattr(self.parsl, "script_dir", None)

    @script_dir.setter
    def script_dir(self, value: str | None) -> None:
        self.parsl.script_dir = value

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex_ref.auto") -> str:
        job_id = self.parsl.submit(command, tasks_per_node, job_name)
        return str(job_id) if job_id is not None else ""

    def status(self, job_ids: list[str]) -> list[JobStatus]:
        return [JobStatus(JobState[st.state.name], st.message, st.exit_code, st.stdout_path, st.stderr_path)
                for st in self.parsl.status(job_ids)]

    def cancel(self, job_ids: list[str]) -> list[bool]:
        return [bool(ok) for ok in self.parsl.cancel(job_ids)]

    @property
    def status_polling_interval(self) -> float:
        return float(self.parsl.status_polling_interval)

    def __repr__(self) -> str:
        return f"ParslProvider({self.parsl!r})"


def as_htex_ref_provider(provider: Any) -> ExecutionProvider | None:
    if isinstance(provider, ParslExecutionProvider):
        return ParslProvider(provider)
    return provider  # type: ignore[no-any-return]  # htex_ref's own, or None; the executor checks it


def _selector(selector: Any) -> Any:
    """Parsl's two manager selectors as htex_ref's names; any other Parsl selector is refused (it sorts
    Parsl's interchange's own manager records, which htex_ref's interchange does not have)."""
    if isinstance(selector, ParslManagerSelector):
        name = {ParslBlockIdManagerSelector: "block_id", ParslRandomManagerSelector: "random"}.get(type(selector))
        if name is None:
            raise TypeError(f"manager_selector {type(selector).__name__} is a Parsl ManagerSelector subclass; htex_ref "
                            "cannot run those (they sort Parsl's interchange records). Write a selector with "
                            "choose(candidates) instead (see htex_ref.core.selectors), or use 'block_id' / 'random'")
        return name
    return selector


# ------------------------------------------------------------------------------------ the executor

_PARSL_HANDLERS: dict[str, Callable[..., None]] = {
    "simple": parsl_error_handlers.simple_error_handler,
    "windowed": parsl_error_handlers.windowed_error_handler,
    "none": parsl_error_handlers.noop_error_handler,
}

#: Settings of the Config under Parsl (refused here, so that they are not set in two places).
_CONFIG_SETTINGS = ("strategy", "strategy_period", "max_idletime")
#: Parameters that the adapter itself holds with Parsl's meaning; the others belong to the inner executor.
_ADAPTER_OWN = frozenset({"label", "provider", "block_error_handler", "storage_access", "working_dir",
                          "remote_monitoring_radio", "run_dir"})
_REBUILT_ON_SET = _SETTING_NAMES - _ADAPTER_OWN - frozenset(_CONFIG_SETTINGS)


class HtexRefExecutor(BlockProviderExecutor):
    """A Parsl executor backed by ``htex_ref.HighThroughputExecutor``; takes that executor's parameters
    (which are Parsl's HTEx parameters, and more), with Parsl's meaning for ``block_error_handler``,
    ``storage_access``, ``working_dir`` and ``remote_monitoring_radio``; see the module docstring."""

    def __init__(self, label: str = "HighThroughputExecutor", provider: Any = None,
                 block_error_handler: bool | str | Callable[..., None] = True,
                 storage_access: Sequence[Any] | None = None, working_dir: str | None = None,
                 remote_monitoring_radio: RadioConfig | None = None, **options: Any) -> None:
        for name in _CONFIG_SETTINGS:
            if name in options:
                raise TypeError(f"HtexRefExecutor takes no {name!r}: under Parsl the DataFlowKernel scales the "
                                f"blocks; set Config({name}=...) instead")
        if isinstance(block_error_handler, str):
            if block_error_handler not in _PARSL_HANDLERS:
                raise ValueError(f"block_error_handler must be True, False, one of {sorted(_PARSL_HANDLERS)} or a "
                                 f"callable (executor, statuses), got {block_error_handler!r}")
            block_error_handler = _PARSL_HANDLERS[block_error_handler]
        elif not isinstance(block_error_handler, bool) and not callable(block_error_handler):
            raise TypeError(f"block_error_handler must be True, False, a name or a callable, got "
                            f"{type(block_error_handler).__name__}")
        if isinstance(remote_monitoring_radio, HTEXRadio):
            raise ValueError("remote_monitoring_radio=HTEXRadio() needs Parsl's own worker pool; htex_ref's workers "
                             "do not carry monitoring messages: use FilesystemRadio() (the default) or UDPRadio()")
        if remote_monitoring_radio is not None and not isinstance(remote_monitoring_radio, RadioConfig):
            raise TypeError(f"remote_monitoring_radio must be a Parsl RadioConfig, got "
                            f"{type(remote_monitoring_radio).__name__}")
        if "manager_selector" in options:
            options["manager_selector"] = _selector(options["manager_selector"])
        inner_provider = as_htex_ref_provider(provider)
        self._options = dict(options, provider=inner_provider, block_error_handler=False)
        self.executor: HighThroughputExecutor = HighThroughputExecutor(label=label, **self._options)
        BlockProviderExecutor.__init__(self, provider=provider if provider is not None else self.executor.provider,
                                       block_error_handler=block_error_handler)
        self.label = label
        self.storage_access = storage_access
        self.working_dir = working_dir
        self.remote_monitoring_radio = remote_monitoring_radio or FilesystemRadio()

    def __repr__(self) -> str:
        return f"HtexRefExecutor({self.executor!r})"

    # ------------------------------------------------------------------------- start and stop

    def start(self) -> None:
        if "run_dir" not in self._options:
            # Parsl sets run_dir (runinfo/NNN) after construction; logs then land where Parsl users look.
            self.executor = HighThroughputExecutor(label=self.label, run_dir=self.run_dir, **self._options)
        self.executor._external_scaling = True
        self.executor.table.translate = self._to_parsl
        self.executor.start()
        super().start()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False)
        super().shutdown()

    # ----------------------------------------------------------------------------------- tasks

    def submit(self, func: Callable[..., Any], resource_specification: dict[str, Any] | None, *args: Any,
               **kwargs: Any) -> Future[Any]:
        if self.bad_state_is_set:
            raise self._to_parsl(self.executor_exception)
        try:
            return self.executor.parsl_submit(func, resource_specification or None, *args, **kwargs)
        except errors.HtexError as e:
            new = self._to_parsl(e)
            raise new from new.__cause__

    def _to_parsl(self, exc: BaseException) -> BaseException:
        return to_parsl(exc, self)

    def validate_resource_spec(self, resource_specification: dict[str, Any]) -> None:
        """Raise Parsl's ``InvalidResourceSpecification`` for a specification this executor cannot honour."""
        try:
            self.executor.validate_resource_spec(resource_specification or None)
        except errors.InvalidResourceSpecification as e:
            raise self._to_parsl(e) from None

    @property
    def tasks(self) -> dict[Any, Future[Any]]:
        return self.executor.tasks  # type: ignore[return-value]

    def outstanding(self) -> int:
        return self.executor.outstanding

    @property
    def workers_per_node(self) -> int | float:
        return self.executor.workers_per_node

    def set_bad_state_and_fail_all(self, exception: Exception) -> None:
        """Parsl's block error handler decided the executor cannot work: every task fails."""
        self._executor_exception = exception
        self._executor_bad_state.set()
        self.executor.set_bad_state_and_fail_all(exception)

    def monitor_resources(self) -> bool:
        return True

    # ---------------------------------------------------------------------------------- blocks

    def _get_launch_command(self, block_id: str) -> str:
        return self.executor._launch_command(block_id)

    def scale_out_facade(self, n: int) -> list[str]:
        """Launch ``n`` blocks; returns the ids launched. A block whose submit failed is FAILED in
        ``status_facade`` at once (as with Parsl's HTEx), so the error handler sees it on the next poll and
        the strategy does not launch block after block meanwhile."""
        launched = self.executor.scale_out(n) if n > 0 else []
        self._refresh_job_ids()
        new = {b: self._as_parsl(st) for b, st in self.executor.status(fresh=False).items() if b not in self._status}
        new.update((b, ParslJobStatus(ParslJobState.PENDING)) for b in launched)
        self._status.update(new)
        self.send_monitoring_info(new)
        return launched

    def scale_in(self, blocks: int, max_idletime: float | None = None) -> list[str]:
        """Cancel ``blocks`` blocks (only blocks idle for more than ``max_idletime`` seconds, when given)."""
        return self.executor.scale_in(blocks, max_idletime)

    def status(self) -> dict[str, ParslJobStatus]:
        """Every block's status as Parsl's, MISSING for blocks that ended before registering (as Parsl's
        HTEx reports them)."""
        statuses = self.executor.block_statuses()
        self._refresh_job_ids()
        return {b: self._as_parsl(st) for b, st in statuses.items()}

    @staticmethod
    def _as_parsl(st: JobStatus) -> ParslJobStatus:
        return ParslJobStatus(ParslJobState[st.state.name], st.message, st.exit_code, st.stdout_path, st.stderr_path)

    def handle_errors(self, status: dict[str, ParslJobStatus]) -> None:
        super().handle_errors(status)
        if self.executor._started and not self.bad_state_is_set:
            # Each poll of Parsl's is a pass of the scheduler: block control learns whether it starts blocks.
            self.executor._blocks(ExternalPass(self.executor.outstanding))

    @property
    def logdir(self) -> str:
        """Where the interchange's log goes: ``{run_dir}/{label}``, as with Parsl's HTEx."""
        return self.executor.logdir or os.path.join(self.run_dir, self.label)

    @property
    def worker_logdir(self) -> str:
        return self.executor.worker_logdir if self.executor._started else self.logdir

    def _refresh_job_ids(self) -> None:
        self.blocks_to_job_id = self.executor.blocks_to_job_id
        self.job_ids_to_block = self.executor.job_ids_to_block

    # ------------------------------------------------------------------------------- what runs

    def connected_managers(self) -> list[dict[str, Any]]:
        return self.executor.connected_managers()

    def connected_blocks(self) -> list[str]:
        return self.executor.connected_blocks()

    @property
    def connected_workers(self) -> int:
        return sum(int(m["worker_count"]) for m in self.executor.connected_managers())

    def __setattr__(self, name: str, value: Any) -> None:
        # Parsl users (and Parsl's tests) set parameters after construction (``ex.max_workers_per_node = 1``):
        # the inner executor is built again with the new value, so a bad one fails here, naming it.
        if name in _REBUILT_ON_SET and "executor" in self.__dict__:
            if self.executor._started:
                raise RuntimeError(f"cannot change {name} of executor {self.label} after it started")
            options = dict(self._options, **{name: value})
            self.__dict__["executor"] = HighThroughputExecutor(label=self.label, **options)
            self._options = options
            return
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        # The inner executor's parameters (max_workers_per_node, launch_cmd, ...), which Parsl's HTEx has as
        # attributes. Only reached for names this class does not have; nothing else of the inner executor
        # shows through (its scale_out would bypass Parsl's bookkeeping of blocks).
        if name in _SETTING_NAMES and "executor" in self.__dict__:
            return getattr(self.__dict__["executor"].settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# ``htex_auto_scale`` scales in only executors that are Parsl HighThroughputExecutors; the adapter
# implements the ``scale_in(blocks, max_idletime)`` that strategy calls.
ParslHighThroughputExecutor.register(HtexRefExecutor)


# -------------------------------------------------------------------------------- MPI mode

class HtexRefMPIExecutor(HtexRefExecutor):
    """A Parsl executor for multi-node (MPI) tasks backed by htex_ref's MPI mode: Parsl's ``MPIExecutor``.

    The provider must use a ``SimpleLauncher`` (Parsl's or htex_ref's): one worker pool runs on the first
    node of each block, knows the block's nodes (from ``SLURM_NODELIST``, ``PBS_NODEFILE`` or
    ``mpi_nodes``) and gives each task that asks for ``num_nodes``, ``ranks_per_node``, ``num_ranks`` or
    ``launcher_options`` its own nodes and ``PARSL_MPI_PREFIX`` (``$PARSL_MPI_PREFIX ./app`` in a bash app).

    Parameters
    ----------
    label : str
        Name of the executor (default ``"MPIExecutor"``, as Parsl's).
    max_workers_per_block : int
        How many tasks one block runs at once (default 1).
    mpi_launcher : str
        The launcher ``PARSL_MPI_PREFIX`` is written for: ``"mpiexec"`` (default), ``"srun"`` or ``"aprun"``.
    encrypted : bool
        CurveZMQ between the interchange and the pools; off by default, as in Parsl's MPIExecutor.

    Every other parameter is Parsl's HighThroughputExecutor's with the adapter's meaning (see
    ``HtexRefExecutor``), except those that size workers on a node, which an MPI executor does not take.
    htex_ref's own settings are keywords too: ``mpi_nodes``, ``mpi_share_nodes``, ``mpi_policy``,
    ``drain_before_walltime``, ``block_registration_timeout``, ``max_outstanding``, ``run_dir``, ...

    Unlike Parsl's, a task without MPI keys is not refused: it runs on the pool's node and takes no nodes.
    """

    def __init__(self, label: str = "MPIExecutor", provider: Any = None, launch_cmd: str | None = None,
                 interchange_launch_cmd: Sequence[str] | None = None, address: str | None = None,
                 loopback_address: str = "127.0.0.1", worker_port: int | None = None,
                 worker_port_range: tuple[int, int] = (54000, 55000),
                 interchange_port_range: tuple[int, int] = (55000, 56000),
                 storage_access: Sequence[Any] | None = None, working_dir: str | None = None,
                 worker_debug: bool = False, max_workers_per_block: int = 1, prefetch_capacity: int | None = 0,
                 heartbeat_threshold: float = 120, heartbeat_period: float = 30, drain_period: float | None = None,
                 poll_period: int = 10, address_probe_timeout: float | None = None,
                 worker_logdir_root: str | None = None, mpi_launcher: str = "mpiexec",
                 block_error_handler: bool | str | Callable[..., None] = True, encrypted: bool = False,
                 remote_monitoring_radio: RadioConfig | None = None, **options: Any) -> None:
        check_mpi_options("HtexRefMPIExecutor", options)
        super().__init__(
            label=label, provider=provider, block_error_handler=block_error_handler, storage_access=storage_access,
            working_dir=working_dir, remote_monitoring_radio=remote_monitoring_radio,
            # The block's one pool runs exactly max_workers_per_block workers, whatever the node's cores.
            enable_mpi_mode=True, cores_per_worker=1e-9,
            max_workers_per_node=check_workers_per_block(max_workers_per_block), mpi_launcher=mpi_launcher,
            launch_cmd=launch_cmd, interchange_launch_cmd=interchange_launch_cmd, address=address,
            loopback_address=loopback_address, worker_port=worker_port, worker_port_range=worker_port_range,
            interchange_port_range=interchange_port_range, worker_debug=worker_debug,
            prefetch_capacity=prefetch_capacity, heartbeat_threshold=heartbeat_threshold,
            heartbeat_period=heartbeat_period, drain_period=drain_period, poll_period=poll_period,
            address_probe_timeout=address_probe_timeout, worker_logdir_root=worker_logdir_root, encrypted=encrypted,
            **options)

    def __repr__(self) -> str:
        return f"HtexRefMPIExecutor({self.executor!r})"

    @property
    def max_workers_per_block(self) -> int:
        return self.executor.settings.max_workers_per_node or 1  # always set: max_workers_per_block

    @max_workers_per_block.setter
    def max_workers_per_block(self, value: int) -> None:
        self.max_workers_per_node = check_workers_per_block(value)  # the inner executor is built again

    @property
    def workers_per_node(self) -> float:
        # Parsl's strategy counts nodes_per_block x workers_per_node task slots in a block; in MPI mode a
        # block runs one pool of max_workers_per_block workers, so report that share per node (Parsl's own
        # MPIExecutor counts nodes_per_block times too many, and scales out too little).
        return self.max_workers_per_block / max(1, int(getattr(self.provider, "nodes_per_block", 1) or 1))

    def monitor_resources(self) -> bool:
        """False, as Parsl's MPIExecutor: a task's processes are spread over nodes, beyond one process tree."""
        return False


# Parsl code that asks for an MPIExecutor (or, as for the HTEx adapter, a HighThroughputExecutor) gets one.
ParslMPIExecutor.register(HtexRefMPIExecutor)
