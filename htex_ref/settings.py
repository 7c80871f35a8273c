"""``ExecutorSettings``: the executor's configuration, checked once and frozen.

Every parameter of ``HighThroughputExecutor`` is a field here, with the same default (a unit test keeps
the two signatures equal) and its meaning in the ``Parameters`` section below, from which the
configuration reference is generated. A bad value raises ``ValueError`` or ``TypeError`` at
construction, naming the parameter and what it accepts; nothing is checked again later.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from htex_ref.block_errors import resolve_block_error_handler
from htex_ref.core.affinity import parse_cpu_affinity
from htex_ref.core.mpi import MPI_LAUNCHERS, check_mpi_nodes, mpi_policy
from htex_ref.core.selectors import SELECTORS, BlockIdManagerSelector, RandomManagerSelector
from htex_ref.core.strategy import STRATEGY_NAMES
from htex_ref.framing import MAX_MESSAGE
from htex_ref.launch import DEFAULT_LAUNCH_CMD, PoolOptions, check_launch_cmd, render
from htex_ref.netutil import all_addresses, check_address
from htex_ref.providers.base import ExecutionProvider
from htex_ref.providers.local import LocalProvider


def is_number(value: Any) -> bool:
    """A real, finite number (not a bool): inf and NaN are never valid settings here."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _port_range(name: str, value: Any) -> tuple[int, int]:
    if (not isinstance(value, tuple | list) or len(value) != 2 or not all(is_int(v) for v in value)
            or not 1 <= value[0] < value[1] <= 65535):
        raise ValueError(f"{name} must be a pair (low, high) of ports with 1 <= low < high <= 65535, got {value!r}")
    return int(value[0]), int(value[1])


def _seconds(name: str, value: Any, *, optional: bool = False, zero_ok: bool = False) -> float | None:
    if value is None and optional:
        return None
    if not is_number(value) or value < 0 or (value == 0 and not zero_ok):
        what = f"a number of seconds {'>= 0' if zero_ok else '> 0'}"
        raise ValueError(f"{name} must be {'None or ' if optional else ''}{what}, got {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class ExecutorSettings:
    """The configuration of a ``HighThroughputExecutor``. Parameters keep the names and meanings of Parsl's
    HighThroughputExecutor.

    Parameters
    ----------
    label : str
        Name of the executor; logs go to ``{run_dir}/{label}``. Non-empty, without ``/``.
    provider : ExecutionProvider | None
        Turns blocks into jobs (``LocalProvider``, ``SlurmProvider``, ``PBSProProvider``...). ``None``
        gives a ``LocalProvider()`` with one block.
    launch_cmd : str | None
        Template of the command that starts a worker pool on a node. Placeholders: ``{worker_pool}``,
        ``{python}``, ``{block_id}``, the pool options of the default command, and every placeholder of
        Parsl's launch commands with Parsl's meaning (``{max_workers_per_node}`` is the whole option,
        ``{accelerators}`` the names, ``{task_url}`` for Parsl 1.x, ...). Formatted once, so
        ``{block_id}`` works as written (Parsl's ``{{block_id}}`` is accepted too). The program name
        ``process_worker_pool.py`` runs htex_ref's pool (``htex-worker-pool``, on PATH), which takes
        Parsl's options: a command written for Parsl, a container-wrapped one included, works unchanged.
    address : str | None
        Address of this host that the worker pools connect to; the interchange listens only there.
        ``None``: it listens on every interface and the pools try each address of this host until one
        answers (with ``LocalProvider``, the loopback address).
    loopback_address : str
        Address of this host that the interchange uses to talk to the executor.
    worker_port : int | None
        Fixed port for the pools' connection; ``None`` picks a free one in ``worker_port_range``.
    worker_port_range : tuple[int, int]
        Range of ports tried for the pools' connection.
    interchange_port_range : tuple[int, int]
        Range of ports kept for Parsl compatibility (the executor and the interchange talk over a
        local socketpair, not TCP).
    worker_debug : bool
        Debug-level logs in the worker pools.
    cores_per_worker : float
        Cores each worker needs; the pool starts ``floor(cores / cores_per_worker)`` workers at most.
    mem_per_worker : float | None
        GB of memory each worker needs; caps the worker count by the node's available memory.
    max_workers_per_node : int | None
        Cap on workers per node; ``None`` (or 0) means no cap beyond cores, memory and accelerators.
    cpu_affinity : str
        ``none``, ``block``, ``block-reverse``, ``alternating`` or ``list:0-7,32-39:8-15,...``. The syntax
        is checked here; whether the node has the threads is checked on the node, where a bad plan
        fails the block with a clear error.
    available_accelerators : int | Sequence[str]
        Accelerators on a node: a count or their names. Each worker gets one (``CUDA_VISIBLE_DEVICES``
        and friends); the worker count is capped by their number.
    prefetch_capacity : int | None
        Tasks a manager may hold beyond its idle workers. ``None``: automatic (prefetch only short
        tasks, about 50 ms of work per worker); an int keeps Parsl's meaning.
    heartbeat_threshold : float
        Seconds of silence after which the interchange declares a manager lost (its tasks fail with
        ``ManagerLost``), a pool gives up on the interchange, and the executor on a silent interchange.
    heartbeat_period : float
        Seconds between heartbeats; at most ``heartbeat_threshold``.
    drain_period : float | None
        Seconds after a pool registers at which it stops taking tasks, finishes its work and exits.
    drain_before_walltime : float | None
        Seconds before a block's walltime ends at which its pools stop taking tasks, finish their work
        and exit, so that no task is cut off by the walltime; set it to the longest task's run time. The
        walltime counts from the start of the job's script. Needs a provider with a walltime (Slurm,
        PBS Pro, or a LocalProvider given one), a ``launch_cmd`` with the ``{walltime_drain}``
        placeholder, and a ``strategy`` other than ``"none"`` to replace drained blocks. ``None``: no
        such drain.
    poll_period : int
        Milliseconds the interchange waits in one poll when idle.
    address_probe_timeout : float | None
        Seconds a pool spends finding which of ``address`` answers (``None``: 30).
    worker_logdir_root : str | None
        Directory for worker-pool logs on the nodes (``{root}/{label}``); ``None`` uses the run dir.
    manager_selector : RandomManagerSelector | BlockIdManagerSelector | str | Any | None
        Which manager gets the next tasks: ``random`` (the default), ``block_id`` (fill the newest
        block first, so older blocks go idle and can be scaled in), or an object of your own with a
        ``choose(candidates)`` method (the protocol in ``htex_ref.core.selectors``; it is pickled into
        the interchange process).
    block_error_handler : bool | str | Callable
        When failed blocks put the executor in bad state. After each block-status refresh the handler
        judges the status of every block; FAILED blocks and MISSING ones (ended, or timed out, before a
        worker pool of theirs registered) count as failed. ``True`` or ``"simple"`` (the default): once
        every block failed and there are at least ``max(1, provider.init_blocks)`` of them;
        ``"windowed"``: once the last 3 blocks by block id failed; ``False`` or ``"none"``: never. Any
        callable ``(executor, statuses)`` works too, e.g. ``functools.partial(windowed_error_handler,
        threshold=2)`` (see ``htex_ref.block_errors``). In bad state every outstanding future fails with
        ``BadStateException``, whose message gives each failed block's state, exit code and output
        tails, and scaling stops.
    encrypted : bool
        CurveZMQ on the interchange-to-pool connection (the only TCP hop).
    run_dir : str | os.PathLike | None
        Directory for logs, submit scripts and certificates; ``None`` makes
        ``./runinfo/{date}-{time}-{pid}-{n}``.
    strategy : str
        Block scaling: ``simple`` (the default, as in Parsl's Config: blocks start when tasks wait and
        go after ``max_idletime`` without work, between ``min_blocks`` and ``max_blocks``),
        ``htex_auto_scale`` (``simple``, and idle blocks also go while other blocks still work) or
        ``none`` (only ``init_blocks``, and what you start with ``scale_out``). Whatever the strategy,
        tasks that wait ``5`` seconds with no block running or pending and none coming fail with
        ``NoBlocks``, rather than wait for ever.
    strategy_period : float
        Seconds between scaling decisions (and block-status refreshes).
    max_idletime : float
        Seconds a block may stay idle before the strategy scales it in.
    interchange_start_timeout : float
        Seconds ``start()`` waits for the interchange to report ready before failing.
    block_registration_timeout : float | None
        Seconds (not in Parsl; ``None`` disables it): a block that the provider has reported RUNNING
        for that long, counted from the first status refresh that saw it running (time in the batch
        queue does not count), without any manager of it registering, is cancelled through the
        provider and reported to the block error handler as MISSING. Set it above the time your
        ``worker_init`` and pool start-up can take.
    max_outstanding : int | None
        Backpressure: ``submit`` waits while this many tasks are outstanding, so a producer of millions
        of tasks holds only this many in memory (each outstanding task costs about 2.6 KB in the
        executor and interchange together, plus its serialized arguments). It returns when a result
        comes in, and raises at once if the executor fails or shuts down meanwhile. Submits made from a
        future's done-callback (on the executor's link thread, as the apps layer does for dependent
        apps) are never held, since results could not arrive while that thread waits. ``None``: no limit.
    interchange_launch_cmd : Sequence[str] | None
        The argv that starts the interchange process; ``None``: this Python with ``-m htex_ref.interchange``.
        It must run htex_ref's interchange (``htex-interchange`` or ``python -m htex_ref.interchange``,
        possibly behind a wrapper such as ``nice`` or ``taskset``): it reads its settings on stdin and
        inherits its channel to the executor. Parsl's ``interchange.py`` is not htex_ref's.
    max_workers : int | float | None
        Deprecated alias of ``max_workers_per_node`` (Parsl 1's name); warns. ``inf`` means no cap.
    worker_ports : tuple[int, int] | None
        Deprecated (Parsl 1's two ports for the pools' connection); warns. htex_ref's pools connect on one
        port: the first is used as ``worker_port``.
    managed : bool
        Parsl 1's flag; ``True`` (managed: the executor's blocks are scaled) is what every executor is.
        ``False`` is refused: use ``strategy='none'`` for an executor that starts only ``init_blocks``.
    storage_access : Sequence | None
        Parsl's file staging providers. htex_ref stages no files: ``None`` or an empty list only; Parsl's
        staging works through ``htex_ref.parsl_adapter``.
    working_dir : str | None
        The directory Parsl's file staging uses; htex_ref stages no files: ``None`` only (the adapter
        accepts it and gives it to Parsl).
    remote_monitoring_radio : Any
        How Parsl's workers send monitoring messages; htex_ref's workers send none: ``None`` only.
    enable_mpi_mode : bool
        MPI mode (see the MPI page): one worker pool per block, on its first node, places tasks that ask
        for ``num_nodes``/``ranks_per_node``/``num_ranks``/``launcher_options`` on the block's nodes and
        gives each its ``PARSL_MPI_PREFIX``. Needs a provider whose launcher is a ``SimpleLauncher``.
        Tasks without MPI keys still run (on the pool's node).
    mpi_launcher : str
        The launcher ``PARSL_MPI_PREFIX`` is written for: ``"mpiexec"`` (default), ``"srun"`` or ``"aprun"``.
    mpi_nodes : Sequence[str] | None
        MPI mode, not in Parsl: the block's nodes as ``"host"`` or ``"host:slots"``, for runs without a
        batch system (``["localhost"]`` on one machine). ``None``: from ``SLURM_NODELIST`` (through
        ``scontrol show hostnames``) or ``PBS_NODEFILE`` in the block's job.
    mpi_share_nodes : bool
        MPI mode, not in Parsl: ``False`` gives every MPI task whole nodes (Parsl's behaviour); ``True``
        counts each node in slots (its CPUs, from Slurm, the node file or ``host:slots``) and lets tasks
        whose ``ranks_per_node`` fit share a node. Leave it off when ranks use more than one core each.
    mpi_policy : str
        MPI mode, not in Parsl: the order tasks start in. ``"backfill"`` (default: in order, a task that
        does not fit may be passed by at most 8 later ones, then it is reserved the nodes it waits for),
        ``"fifo"`` (strictly in order) or ``"smallest_first"`` (Parsl's; can starve large tasks).
    cancel_running : bool
        Not in Parsl: what ``future.cancel()`` does to a task that is already running. ``False`` (default,
        as ``concurrent.futures`` never interrupts a call): the task runs to the end and its result is
        dropped. ``True``: its worker is stopped (SIGTERM to its process group, SIGKILL after
        ``task_kill_grace``) and replaced. Either way a queued task is dropped and the future is cancelled
        at once.
    task_kill_grace : float
        Not in Parsl: seconds between the SIGTERM and the SIGKILL that stop a task's worker (its
        ``walltime`` ran out, it was cancelled with ``cancel_running``, it went over its memory limit).
        Default 2; 0 sends SIGKILL at once.
    max_retries_on_system_failure : int
        Not in Parsl (Globus Compute's name): how many times a task lost to the infrastructure
        (``WorkerLost``, ``ManagerLost``) is run again before its future fails. Tasks that raised, timed
        out, went over their memory limit or were cancelled are never retried. Default 0.
    crash_limit : int
        Not in Parsl (HyperQueue's idea): a task whose worker died on this many of its attempts fails with
        ``CrashLimitExceeded`` (the task is the likely cause) instead of being retried on more workers.
        Default 2; 0 turns the limit off. Only matters with ``max_retries_on_system_failure`` > 0.
    enforce_memory : bool
        Not in Parsl: make ``mem_per_worker`` a limit as well as a planning figure. Each worker runs under
        ``RLIMIT_DATA`` of ``mem_per_worker`` GB, and the pool samples each busy worker's resident memory
        (children included) twice a second; a task over the limit fails with ``TaskMemoryExceeded`` and its
        worker is replaced. Needs ``mem_per_worker``.
    max_payload_bytes : int | None
        Not in Parsl: the most bytes a task's serialized function and arguments, or its serialized result,
        may take. A bigger task is refused at ``submit`` with ``PayloadTooLarge`` naming the limit (before
        anything is sent); a bigger result fails its task with ``PayloadTooLarge`` at its worker pool,
        before it reaches the interchange and this process. Default 1 GiB (1073741824); ``None``: no limit
        below the wire format's 16 GiB. Each process on a payload's way holds it at most twice at once.
    restart_interchange : bool
        Not in Parsl: when the interchange process dies (or stops answering for ``heartbeat_threshold``
        and is killed), start a new one on the same address, port and keys, instead of failing every
        outstanding future. Worker pools reconnect and name the tasks they hold, which continue; the
        executor sends the new interchange every outstanding task, and those no pool claims run again
        (at-least-once: a task may run twice; each such future records it in ``attempts``). Results are
        delivered to futures at most once (the first wins). Costs the memory of every outstanding task's
        message in this process. Default False: the executor fails every outstanding future within a
        second, as before (see docs/failure-semantics.md for why it is not the default).
    max_interchange_restarts : int
        Not in Parsl: how many times ``restart_interchange`` restarts the interchange in one run before it
        gives up and fails the outstanding futures (an interchange that keeps dying would otherwise be
        restarted for ever). Default 3.
    reconnect_timeout : float | None
        Not in Parsl: seconds a worker pool keeps running its tasks, and keeps their results, while its
        interchange is silent (a network partition, a stopped interchange) before it exits. ``None``
        (default): twice ``heartbeat_threshold``, so that a pool outlives the interchange's verdict and,
        when it comes back, is told which of its tasks were given up. A connection refused or reset (the
        interchange process is gone) is given 10 s to come back (a restarted interchange does within a
        second or two).
    monitoring : bool
        Not in Parsl's executor: record every task (submit, dispatch, run on which worker, result), block
        state, worker pool event and worker CPU/memory sample in ``{run_dir}/{label}/monitoring.db``
        (SQLite, written by one thread in batches; see docs/monitoring.md). ``htex-ref status`` and
        ``htex-ref report`` read it. Default True (its cost on no-op throughput is in docs/benchmarks.md).
    monitoring_interval : float
        Seconds between samples of each worker's CPU and resident memory (default 5).
    monitoring_hook : Callable | None
        Called with each task transition (``htex_ref.monitoring.TaskEvent``: submitted, dispatched,
        started, ran, resolved) on the monitoring thread, for a sink of your own. Needs ``monitoring``.
    """

    label: str = "HighThroughputExecutor"
    # Always a provider once constructed (None gives a LocalProvider).
    provider: ExecutionProvider = None  # type: ignore[assignment]
    # Always the template in the form rendering takes once constructed (None gives the default one).
    launch_cmd: str = None  # type: ignore[assignment]
    address: str | None = None
    loopback_address: str = "127.0.0.1"
    worker_port: int | None = None
    worker_port_range: tuple[int, int] = (54000, 55000)
    interchange_port_range: tuple[int, int] = (55000, 56000)
    worker_debug: bool = False
    cores_per_worker: float = 1.0
    mem_per_worker: float | None = None
    max_workers_per_node: int | None = None
    cpu_affinity: str = "none"
    available_accelerators: int | Sequence[str] = ()
    prefetch_capacity: int | None = None
    heartbeat_threshold: float = 120
    heartbeat_period: float = 30
    drain_period: float | None = None
    drain_before_walltime: float | None = None
    poll_period: int = 10
    address_probe_timeout: float | None = None
    worker_logdir_root: str | None = None
    manager_selector: Any = None
    block_error_handler: bool | str | Callable[..., Any] = True
    encrypted: bool = True
    run_dir: str | os.PathLike[str] | None = None
    strategy: str = "simple"
    strategy_period: float = 5.0
    max_idletime: float = 120.0
    interchange_start_timeout: float = 30.0
    block_registration_timeout: float | None = 120.0
    max_outstanding: int | None = None
    interchange_launch_cmd: Sequence[str] | None = None
    max_workers: int | float | None = None
    worker_ports: tuple[int, int] | None = None
    managed: bool = True
    storage_access: Sequence[Any] | None = None
    working_dir: str | None = None
    remote_monitoring_radio: Any = None
    enable_mpi_mode: bool = False
    mpi_launcher: str = "mpiexec"
    mpi_nodes: Sequence[str] | None = None
    mpi_share_nodes: bool = False
    mpi_policy: str = "backfill"
    cancel_running: bool = False
    task_kill_grace: float = 2.0
    max_retries_on_system_failure: int = 0
    crash_limit: int = 2
    enforce_memory: bool = False
    max_payload_bytes: int | None = 1 << 30
    restart_interchange: bool = False
    max_interchange_restarts: int = 3
    reconnect_timeout: float | None = None
    monitoring: bool = True
    monitoring_interval: float = 5.0
    monitoring_hook: Callable[..., Any] | None = None

    #: Accelerator names, one per worker at most (``available_accelerators`` as a count gives "0", "1", ...).
    accelerators: tuple[str, ...] = field(init=False, default=())
    #: Workers a ``list:`` cpu_affinity names threads for, else None.
    affinity_workers: int | None = field(init=False, default=None)
    #: The manager selector's name, as the interchange knows it ("custom": ``selector_pickle`` holds it).
    selector_name: str = field(init=False, default="random")
    #: A selector of the user's own, pickled for the interchange process.
    selector_pickle: bytes | None = field(init=False, default=None)
    #: The block error handler itself (True and "simple" give ``simple_error_handler``, and so on).
    error_handler: Callable[..., Any] = field(init=False, default=resolve_block_error_handler(True))

    def __post_init__(self) -> None:
        self._parsl_names()
        self._check_identity()
        self._check_network()
        self._check_workers()
        self._check_timing()
        self._check_scaling()
        self._check_mpi()
        self._check_task_control()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _parsl_names(self) -> None:
        """Parameters of Parsl's executor (1.x and 2026): deprecated aliases, and those left to Parsl."""
        if self.max_workers is not None:
            if self.max_workers_per_node is not None:
                raise ValueError("give max_workers_per_node, not also max_workers (its deprecated alias)")
            if not (is_int(self.max_workers) or self.max_workers == math.inf) or self.max_workers < 0:
                raise ValueError(f"max_workers must be an int >= 0 or inf, got {self.max_workers!r}")
            warnings.warn("max_workers is deprecated: use max_workers_per_node", FutureWarning, stacklevel=5)
            self._set("max_workers_per_node", None if self.max_workers == math.inf else int(self.max_workers))
            self._set("max_workers", None)
        if self.worker_ports is not None:
            if self.worker_port is not None:
                raise ValueError("give worker_port, not also worker_ports (deprecated)")
            ports = self.worker_ports
            if (not isinstance(ports, tuple | list) or len(ports) != 2
                    or not all(is_int(p) and 1 <= p <= 65535 for p in ports)):
                raise ValueError(f"worker_ports must be a pair of port numbers 1..65535, got {ports!r}")
            first = int(ports[0])
            warnings.warn(f"worker_ports is deprecated: htex_ref's pools connect on one port; using "
                          f"worker_port={first}", FutureWarning, stacklevel=5)
            self._set("worker_port", first)
            self._set("worker_ports", None)
        if self.managed is not True:
            raise ValueError(f"managed={self.managed!r}: every htex_ref executor manages its blocks; for one that "
                             "starts only init_blocks use strategy='none'")
        if self.storage_access not in (None, [], ()):
            raise ValueError("storage_access: htex_ref stages no files; use Parsl's staging through "
                             "htex_ref.parsl_adapter.HtexRefExecutor")
        if self.working_dir is not None:
            raise ValueError("working_dir is for Parsl's file staging, which htex_ref does not do; use it with "
                             "htex_ref.parsl_adapter.HtexRefExecutor")
        if self.remote_monitoring_radio is not None:
            raise ValueError("remote_monitoring_radio: htex_ref's workers send no Parsl monitoring messages; "
                             "leave it None")
        cmd = self.interchange_launch_cmd
        if cmd is not None:
            if isinstance(cmd, str) or not cmd or not all(isinstance(w, str) and w for w in cmd):
                raise TypeError(f"interchange_launch_cmd must be a non-empty list of strings (an argv), got {cmd!r}")
            self._set("interchange_launch_cmd", list(cmd))

    def _check_identity(self) -> None:
        if not isinstance(self.label, str) or not self.label or "/" in self.label:
            raise ValueError(f"label must be a non-empty string without '/', got {self.label!r}")
        provider = LocalProvider() if self.provider is None else self.provider
        if not isinstance(provider, ExecutionProvider):
            raise TypeError(f"provider must be an htex_ref ExecutionProvider, got {type(provider).__name__}")
        self._set("provider", provider)
        self._set("launch_cmd", check_launch_cmd(self.launch_cmd) or DEFAULT_LAUNCH_CMD)
        if not isinstance(self.worker_debug, bool):
            raise TypeError(f"worker_debug must be a bool, got {self.worker_debug!r}")
        if not isinstance(self.encrypted, bool):
            raise TypeError(f"encrypted must be a bool, got {self.encrypted!r}")
        for name in ("run_dir", "worker_logdir_root"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | os.PathLike):
                raise TypeError(f"{name} must be a path or None, got {value!r}")
        self._set("error_handler", resolve_block_error_handler(self.block_error_handler))
        self._check_selector()

    def _check_selector(self) -> None:
        selector = RandomManagerSelector() if self.manager_selector is None else self.manager_selector
        if isinstance(selector, str | RandomManagerSelector | BlockIdManagerSelector):
            name = selector if isinstance(selector, str) else selector.name
            if name not in SELECTORS:
                raise ValueError(f"manager_selector must be one of {sorted(SELECTORS)}, a selector object with a "
                                 f"choose(candidates) method, or None; got {self.manager_selector!r}")
            self._set("manager_selector", selector)
            self._set("selector_name", name)
            return
        if not callable(getattr(selector, "choose", None)):
            raise TypeError(f"manager_selector must be one of {sorted(SELECTORS)} or an object with a "
                            f"choose(candidates) method (see htex_ref.core.selectors), got {selector!r}")
        import cloudpickle

        try:
            self._set("selector_pickle", cloudpickle.dumps(selector))
        except Exception as e:
            raise TypeError(f"manager_selector {selector!r} cannot be pickled into the interchange process: "
                            f"{type(e).__name__}: {e}") from None
        self._set("selector_name", "custom")

    def _check_network(self) -> None:
        if self.address is not None:
            if not isinstance(self.address, str):
                raise TypeError(f"address must be a string or None, got {type(self.address).__name__}")
            check_address(self.address, "address")
        if not isinstance(self.loopback_address, str) or self.loopback_address == "*":
            raise ValueError(f"loopback_address must be an IP address, got {self.loopback_address!r}")
        check_address(self.loopback_address, "loopback_address")
        port = self.worker_port
        if port is not None and (not is_int(port) or not 1 <= port <= 65535):
            raise ValueError(f"worker_port must be None or a port number 1..65535, got {port!r}")
        self._set("worker_port_range", _port_range("worker_port_range", self.worker_port_range))
        self._set("interchange_port_range", _port_range("interchange_port_range", self.interchange_port_range))
        if not is_int(self.poll_period) or self.poll_period <= 0:
            raise ValueError(f"poll_period must be an int number of milliseconds > 0, got {self.poll_period!r}")
        self._set("address_probe_timeout",
                  _seconds("address_probe_timeout", self.address_probe_timeout, optional=True))

    def _check_workers(self) -> None:
        if not is_number(self.cores_per_worker) or not self.cores_per_worker > 0:
            raise ValueError(f"cores_per_worker must be a number > 0, got {self.cores_per_worker!r}")
        self._set("cores_per_worker", float(self.cores_per_worker))
        mem = self.mem_per_worker
        if mem is not None and (not is_number(mem) or mem < 0):
            raise ValueError(f"mem_per_worker must be None or a number of GB >= 0, got {mem!r}")
        cap = self.max_workers_per_node
        if cap is not None and (not is_int(cap) or cap < 0):
            raise ValueError(f"max_workers_per_node must be None or an int >= 0, got {cap!r}")
        # The syntax is checked here; whether a node can satisfy it is checked on the node.
        affinity = parse_cpu_affinity(self.cpu_affinity)
        if affinity.strategy == "list" and cap and cap != len(affinity.lists):
            raise ValueError(f"cpu_affinity lists threads for {len(affinity.lists)} workers but "
                             f"max_workers_per_node={cap}")
        listed = affinity.strategy == "list"
        self._set("cpu_affinity", self.cpu_affinity.strip() if listed else affinity.strategy)
        self._set("affinity_workers", len(affinity.lists) if listed else None)
        acc = self.available_accelerators
        if is_int(acc):
            assert isinstance(acc, int)
            if acc < 0:
                raise ValueError(f"available_accelerators must be >= 0, got {acc}")
            names = [str(i) for i in range(acc)]
        elif isinstance(acc, list | tuple) and all(isinstance(a, str) and a and " " not in a for a in acc):
            names = list(acc)
        else:
            raise TypeError("available_accelerators must be an int or a sequence of non-empty names without "
                            f"spaces, got {acc!r}")
        # As Parsl's executor has it: the names, a count given as "0", "1", ...
        self._set("available_accelerators", names)
        self._set("accelerators", tuple(names))
        prefetch = self.prefetch_capacity
        if prefetch is not None and (not is_int(prefetch) or prefetch < 0):
            raise ValueError(f"prefetch_capacity must be None (automatic) or an int >= 0, got {prefetch!r}")
        limit = self.max_outstanding
        if limit is not None and (not is_int(limit) or limit < 1):
            raise ValueError(f"max_outstanding must be None (no limit) or an int >= 1, got {limit!r}")

    def _check_timing(self) -> None:
        for name in ("heartbeat_threshold", "heartbeat_period"):
            value = getattr(self, name)
            if not is_number(value) or not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if self.heartbeat_period > self.heartbeat_threshold:
            raise ValueError(f"heartbeat_period ({self.heartbeat_period}) must not exceed heartbeat_threshold "
                             f"({self.heartbeat_threshold}), or live managers would be expired between heartbeats")
        self._set("heartbeat_threshold", float(self.heartbeat_threshold))
        self._set("heartbeat_period", float(self.heartbeat_period))
        if self.drain_period is not None and (not is_number(self.drain_period) or self.drain_period <= 0):
            raise ValueError(f"drain_period must be None or a number of seconds > 0, got {self.drain_period!r}")
        for name in ("strategy_period", "interchange_start_timeout"):
            self._set(name, _seconds(name, getattr(self, name)))
        self._set("max_idletime", _seconds("max_idletime", self.max_idletime, zero_ok=True))
        if self.block_registration_timeout is not None and (
                not is_number(self.block_registration_timeout) or self.block_registration_timeout <= 0):
            raise ValueError("block_registration_timeout must be None (no time-out) or a number of seconds > 0, "
                             f"got {self.block_registration_timeout!r}")
        if self.block_registration_timeout is not None:
            self._set("block_registration_timeout", float(self.block_registration_timeout))

    def _check_scaling(self) -> None:
        if self.strategy not in STRATEGY_NAMES:
            raise ValueError(f"strategy must be one of {list(STRATEGY_NAMES)}, got {self.strategy!r}")
        margin = self.drain_before_walltime
        if margin is None:
            return
        if not is_number(margin) or not 0 < margin < math.inf:
            raise ValueError(f"drain_before_walltime must be None or a number of seconds > 0, got {margin!r}")
        walltime = self.provider.walltime_seconds
        if walltime is None:
            raise ValueError(f"drain_before_walltime needs a provider with a walltime; this "
                             f"{type(self.provider).__name__} has none")
        if margin >= walltime:
            raise ValueError(f"drain_before_walltime ({margin} s) must be less than the "
                             f"provider's walltime ({walltime} s), or every block would drain as it starts")
        if "{walltime_drain}" not in self.launch_cmd:
            raise ValueError("drain_before_walltime needs the {walltime_drain} placeholder in launch_cmd, "
                             "where the worker pool's options go")
        if self.strategy == "none":
            # A drained block ends by itself; without a strategy nothing would replace it, and tasks
            # submitted afterwards would wait for ever.
            raise ValueError("drain_before_walltime needs a scaling strategy ('simple' or 'htex_auto_scale') "
                             "to replace the blocks it drains; strategy='none' would leave later tasks "
                             "waiting for ever")

    def _check_task_control(self) -> None:
        for name in ("cancel_running", "enforce_memory", "restart_interchange"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        grace = self.task_kill_grace
        if not is_number(grace) or grace < 0:
            raise ValueError(f"task_kill_grace must be a number of seconds >= 0, got {grace!r}")
        self._set("task_kill_grace", float(grace))
        for name in ("max_retries_on_system_failure", "crash_limit", "max_interchange_restarts"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        limit = self.max_payload_bytes
        if limit is not None and (not is_int(limit) or not 0 < limit <= MAX_MESSAGE // 2):
            raise ValueError(f"max_payload_bytes must be None or an int between 1 and {MAX_MESSAGE // 2}, "
                             f"got {limit!r}")
        timeout = self.reconnect_timeout
        if timeout is not None:
            if not is_number(timeout) or timeout <= 0:
                raise ValueError(f"reconnect_timeout must be None or a number of seconds > 0, got {timeout!r}")
            self._set("reconnect_timeout", float(timeout))
        if self.enforce_memory and not self.mem_per_worker:
            raise ValueError("enforce_memory needs mem_per_worker (the limit, in GB per worker)")
        if not isinstance(self.monitoring, bool):
            raise TypeError(f"monitoring must be True or False, got {self.monitoring!r}")
        interval = self.monitoring_interval
        if not is_number(interval) or interval <= 0:
            raise ValueError(f"monitoring_interval must be a number of seconds > 0, got {interval!r}")
        self._set("monitoring_interval", float(interval))
        if self.monitoring_hook is not None and not callable(self.monitoring_hook):
            raise TypeError(f"monitoring_hook must be None or a callable, got {type(self.monitoring_hook).__name__}")
        if self.monitoring_hook is not None and not self.monitoring:
            raise ValueError("monitoring_hook needs monitoring=True")

    def _check_mpi(self) -> None:
        if not isinstance(self.enable_mpi_mode, bool):
            raise TypeError(f"enable_mpi_mode must be True or False, got {self.enable_mpi_mode!r}")
        if self.mpi_launcher not in MPI_LAUNCHERS:
            raise ValueError(f"mpi_launcher must be one of {list(MPI_LAUNCHERS)}, got {self.mpi_launcher!r}")
        if not isinstance(self.mpi_share_nodes, bool):
            raise TypeError(f"mpi_share_nodes must be True or False, got {self.mpi_share_nodes!r}")
        mpi_policy(self.mpi_policy)
        self._set("mpi_nodes", check_mpi_nodes(self.mpi_nodes))
        if not self.enable_mpi_mode:
            extra = [name for name, default in (("mpi_nodes", None), ("mpi_share_nodes", False),
                                                ("mpi_policy", "backfill")) if getattr(self, name) != default]
            if extra:
                raise ValueError(f"{', '.join(extra)} only mean something in MPI mode: set enable_mpi_mode=True "
                                 "(or use MPIExecutor)")
            return
        launcher = getattr(self.provider, "launcher", None)
        if launcher is None or not any(c.__name__ == "SimpleLauncher" for c in type(launcher).__mro__):
            # One pool per block, on its first node: any other launcher would start one per node, each
            # believing it owns every node of the block.
            raise TypeError("MPI mode needs the provider's launcher to be a SimpleLauncher (one worker pool per "
                            f"block), got {type(launcher).__name__}")
        if "{mpi_options}" not in self.launch_cmd and "{enable_mpi_mode}" not in self.launch_cmd:
            raise ValueError("MPI mode needs the {mpi_options} placeholder (or Parsl's {enable_mpi_mode}) in "
                             "launch_cmd, where the worker pool's MPI options go")

    @property
    def mpi_max_nodes(self) -> float | None:
        """The most nodes an MPI task can ask for, as far as is known before a block runs (None: not in
        MPI mode; inf: known only to the block's pool, which refuses tasks that ask for more)."""
        if not self.enable_mpi_mode:
            return None
        if self.mpi_nodes is not None:
            return len(self.mpi_nodes)
        if self.provider.same_host:
            # A LocalProvider's nodes_per_block says nothing of the node list its job may export
            # (a PBS_NODEFILE set in worker_init, say).
            return math.inf
        return int(self.provider.nodes_per_block)

    def mpi_options(self) -> tuple[str, ...]:
        """The worker pool's MPI options (none outside MPI mode)."""
        if not self.enable_mpi_mode:
            return ()
        opts = ["--enable_mpi_mode", f"--mpi-launcher={self.mpi_launcher}", f"--mpi-policy={self.mpi_policy}"]
        if self.mpi_nodes:
            opts.append(f"--mpi-nodes={','.join(self.mpi_nodes)}")
        if self.mpi_share_nodes:
            opts.append("--mpi-share-nodes")
        return tuple(opts)

    def launch_command(self, block_id: str, worker_port: int, cert_dir: str | None, logdir: str) -> str:
        """The command that starts block ``block_id``'s pools, for an interchange listening on ``worker_port``."""
        if self.address:
            addresses = self.address
        elif self.provider.same_host:
            # Every block of a LocalProvider runs on this host: the loopback address reaches it.
            addresses = self.loopback_address
        else:
            addresses = ",".join(all_addresses())
        walltime = self.provider.walltime_seconds
        return render(self.launch_cmd, block_id, PoolOptions(
            addresses=addresses, worker_port=worker_port, cert_dir=cert_dir, logdir=logdir, debug=self.worker_debug,
            cores_per_worker=self.cores_per_worker, mem_per_worker=self.mem_per_worker,
            max_workers_per_node=self.max_workers_per_node, prefetch_capacity=self.prefetch_capacity,
            heartbeat_period=self.heartbeat_period, heartbeat_threshold=self.heartbeat_threshold,
            drain_period=self.drain_period,
            walltime_drain=None if self.drain_before_walltime is None or walltime is None
            else (walltime, self.drain_before_walltime),
            address_probe_timeout=self.address_probe_timeout, cpu_affinity=self.cpu_affinity,
            accelerators=self.accelerators, poll_period=self.poll_period,
            nodes_per_block=self.provider.nodes_per_block, mpi_options=self.mpi_options(),
            mpi_launcher=self.mpi_launcher))
