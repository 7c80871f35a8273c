"""``HighThroughputExecutor``: submit Python calls, get ``concurrent.futures.Future`` objects back.

The executor lives in the user's process. It owns the Future table, a Unix socketpair to the interchange
(tasks, commands and pings out; results, replies and fatal notices in), the interchange process (started
by fork+exec and watched through a pidfd, so its death fails every outstanding future at once) and the
blocks it launched through its provider. See ``htex_ref.interchange`` for the whole data flow.

Threads: callers submit (writes never block: frames queue for the result thread to send); the result
thread moves frames both ways, resolves futures and pings the interchange; the control loop thread
refreshes block statuses and runs ``htex_ref.core.blocks.BlockControl`` (registration time-outs, block
errors, ended blocks, scaling) every ``strategy_period``.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import itertools
import json
import logging
import math
import numbers
import os
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import zmq

from htex_ref.block_errors import resolve_block_error_handler
from htex_ref.core.affinity import parse_cpu_affinity
from htex_ref.core.blocks import BlockControl, BlockLoad, ControlSettings
from htex_ref.core.planning import plan_workers
from htex_ref.core.scaling import choose_blocks_to_scale_in
from htex_ref.core.selectors import SELECTORS, BlockIdManagerSelector, RandomManagerSelector
from htex_ref.core.strategy import STRATEGY_NAMES
from htex_ref.errors import (
    BadStateException,
    CommandTimeout,
    DeserializationError,
    ExecutorShutdown,
    InterchangeError,
    InvalidResourceSpecification,
    VersionMismatch,
)
from htex_ref.framing import Frame, NonBlockingWriter, StreamReader, encode_parts
from htex_ref.netutil import all_addresses, check_address, create_certificates
from htex_ref.protocol import (
    Kind,
    dump_json,
    load_json_object,
    pack_request_id,
    pack_task_header,
    split_results,
    unpack_request_id,
)
from htex_ref.providers.base import ExecutionProvider, JobStatus
from htex_ref.providers.local import LocalProvider
from htex_ref.serialize import decode_outcome, dumps_arguments, dumps_function

logger = logging.getLogger(__name__)

#: Resource-specification keys this executor supports.
SUPPORTED_SPEC_KEYS = frozenset({"priority"})
#: Keys Parsl's executors know. A dict made only of these, in the resource-specification position of
#: ``submit``, is taken as a resource specification (and unsupported ones are refused loudly).
KNOWN_SPEC_KEYS = frozenset(
    {"priority", "num_nodes", "ranks_per_node", "num_ranks", "launcher_options", "cores", "memory", "disk",
     "gpus", "running_time_min"}
)

DEFAULT_LAUNCH_CMD = (
    "{worker_pool}{debug} --addresses={addresses} --port={worker_port} --cert-dir={cert_dir} "
    "--block-id={block_id} --cores-per-worker={cores_per_worker} --mem-per-worker={mem_per_worker} "
    "--max-workers-per-node={max_workers_per_node} --prefetch-capacity={prefetch_capacity} "
    "--hb-period={heartbeat_period} --hb-threshold={heartbeat_threshold} --drain-period={drain_period} "
    "--address-probe-timeout={address_probe_timeout} --cpu-affinity={cpu_affinity} --logdir={logdir}"
    "{accelerators}{walltime_drain}"
)
LAUNCH_CMD_FIELDS = frozenset(
    {"worker_pool", "debug", "addresses", "worker_port", "cert_dir", "block_id", "cores_per_worker",
     "mem_per_worker", "max_workers_per_node", "prefetch_capacity", "heartbeat_period", "heartbeat_threshold",
     "drain_period", "address_probe_timeout", "cpu_affinity", "logdir", "accelerators", "python",
     "walltime_drain"}
)

_run_counter = itertools.count()


_PING = dump_json({"op": "ping", "args": []})


class HtexFuture(Future[Any]):
    """A Future that knows its executor task id."""

    def __init__(self, task_id: int) -> None:
        super().__init__()
        self.task_id = task_id

    @property
    def parsl_executor_task_id(self) -> int:
        return self.task_id


def _is_number(value: Any) -> bool:
    """A real, finite number (not a bool): inf and NaN are never valid settings here."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _port_range(name: str, value: Any) -> tuple[int, int]:
    if (not isinstance(value, tuple | list) or len(value) != 2 or not all(_is_int(v) for v in value)
            or not 1 <= value[0] < value[1] <= 65535):
        raise ValueError(f"{name} must be a pair (low, high) of ports with 1 <= low < high <= 65535, got {value!r}")
    return int(value[0]), int(value[1])


def default_worker_pool_command() -> str:
    """The worker-pool entry point of this installation, as a shell word."""
    beside = Path(sys.executable).parent / "htex-worker-pool"
    if beside.exists():
        return shlex.quote(str(beside))
    found = shutil.which("htex-worker-pool")
    if found:
        return shlex.quote(found)
    return f"{shlex.quote(sys.executable)} -m htex_ref.worker_pool"


class HighThroughputExecutor(concurrent.futures.Executor):
    """Run Python functions on worker processes in blocks started by a provider.

    Parameters keep the names and meanings of Parsl's HighThroughputExecutor. Bad values raise
    ``ValueError`` or ``TypeError`` here, naming the parameter and what it accepts.

    ``submit`` takes either Parsl's form ``submit(func, resource_specification, *args, **kwargs)`` or
    ``concurrent.futures``' form ``submit(func, *args, **kwargs)``: the second positional argument is a
    resource specification when it is ``None`` or a dict whose keys are all resource-specification keys
    (``{}`` included). Pass ``resource_specification=...`` by keyword to be explicit.

    Failed blocks. After each block-status refresh the executor calls ``block_error_handler`` with the
    status of every block; FAILED blocks and MISSING ones (ended, or timed out, before a worker pool of
    theirs registered) count as failed. ``True`` or ``"simple"`` (the default) puts the executor in bad
    state once every block failed and there are at least ``max(1, provider.init_blocks)`` of them;
    ``"windowed"`` once the last 3 blocks by block id failed; ``False`` or ``"none"`` never. Any
    callable ``(executor, statuses)`` works too, e.g. ``functools.partial(windowed_error_handler,
    threshold=2)`` (see ``htex_ref.block_errors``). In bad state every outstanding future fails with
    ``BadStateException``, whose message gives each failed block's state, exit code and output tails,
    and scaling stops.

    ``block_registration_timeout`` (seconds, default 120; ``None`` disables it; not in Parsl): a block
    that the provider has reported RUNNING for that long, counted from the first status refresh that saw
    it running (time in the batch queue does not count), without any manager of it registering, is
    cancelled through the provider and reported to the handler as MISSING. Set it above the time your
    ``worker_init`` and pool start-up can take.

    Parameters
    ----------
    label : str
        Name of the executor; logs go to ``{run_dir}/{label}``. Non-empty, without ``/``.
    provider : ExecutionProvider | None
        Turns blocks into jobs (``LocalProvider``, ``SlurmProvider``, ``PBSProProvider``...). ``None``
        gives a ``LocalProvider()`` with one block.
    launch_cmd : str | None
        Template of the command that starts a worker pool on a node. Placeholders: ``{worker_pool}``,
        ``{python}``, ``{block_id}`` and the pool options of the default command. Formatted once, so
        ``{block_id}`` works as written (Parsl's ``{{block_id}}`` is accepted too).
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
        Seconds after a pool starts at which it stops taking tasks, finishes its work and exits.
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
    manager_selector : RandomManagerSelector | BlockIdManagerSelector | str | None
        Which manager gets the next tasks: ``random`` (the default) or ``block_id`` (fill the newest
        block first, so older blocks go idle and can be scaled in).
    block_error_handler : bool | str | Callable
        What to do with failed blocks: ``True``/``"simple"``, ``"windowed"``, ``False``/``"none"`` or a
        callable ``(executor, statuses)``; see above.
    encrypted : bool
        CurveZMQ on the interchange-to-pool connection (the only TCP hop).
    run_dir : str | os.PathLike | None
        Directory for logs, submit scripts and certificates; ``None`` makes
        ``./runinfo/{date}-{time}-{pid}-{n}``.
    strategy : str
        Block scaling: ``none`` (keep ``init_blocks``), ``simple`` or ``htex_auto_scale``.
    strategy_period : float
        Seconds between scaling decisions (and block-status refreshes).
    max_idletime : float
        Seconds a block may stay idle before the strategy scales it in.
    interchange_start_timeout : float
        Seconds ``start()`` waits for the interchange to report ready before failing.
    block_registration_timeout : float | None
        See above.
    max_outstanding : int | None
        Backpressure: ``submit`` waits while this many tasks are outstanding, so a producer of millions
        of tasks holds only this many in memory (each outstanding task costs about 2.6 KB in the
        executor and interchange together, plus its serialized arguments). It returns when a result
        comes in, and raises at once if the executor fails or shuts down meanwhile. Submits made from a
        future's done-callback (on the executor's result thread, as the apps layer does for dependent
        apps) are never held, since results could not arrive while that thread waits. ``None``: no limit.
    """

    def __init__(
        self,
        label: str = "HighThroughputExecutor",
        provider: ExecutionProvider | None = None,
        launch_cmd: str | None = None,
        address: str | None = None,
        loopback_address: str = "127.0.0.1",
        worker_port: int | None = None,
        worker_port_range: tuple[int, int] = (54000, 55000),
        interchange_port_range: tuple[int, int] = (55000, 56000),
        worker_debug: bool = False,
        cores_per_worker: float = 1.0,
        mem_per_worker: float | None = None,
        max_workers_per_node: int | None = None,
        cpu_affinity: str = "none",
        available_accelerators: int | Sequence[str] = (),
        prefetch_capacity: int | None = None,
        heartbeat_threshold: float = 120,
        heartbeat_period: float = 30,
        drain_period: float | None = None,
        drain_before_walltime: float | None = None,
        poll_period: int = 10,
        address_probe_timeout: float | None = None,
        worker_logdir_root: str | None = None,
        manager_selector: Any = None,
        block_error_handler: bool | str | Callable[..., Any] = True,
        encrypted: bool = True,
        run_dir: str | os.PathLike[str] | None = None,
        strategy: str = "none",
        strategy_period: float = 5.0,
        max_idletime: float = 120.0,
        interchange_start_timeout: float = 30.0,
        block_registration_timeout: float | None = 120.0,
        max_outstanding: int | None = None,
    ) -> None:
        if not isinstance(label, str) or not label or "/" in label:
            raise ValueError(f"label must be a non-empty string without '/', got {label!r}")
        self.label = label
        if provider is None:
            provider = LocalProvider()
        if not isinstance(provider, ExecutionProvider):
            raise TypeError(f"provider must be an htex_ref ExecutionProvider, got {type(provider).__name__}")
        self.provider = provider
        if launch_cmd is not None:
            if not isinstance(launch_cmd, str) or not launch_cmd.strip():
                raise TypeError(f"launch_cmd must be a non-empty string, got {launch_cmd!r}")
            # Parsl formats its launch command twice, so its users write {{block_id}}; we format once.
            launch_cmd = launch_cmd.replace("{{block_id}}", "{block_id}")
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(launch_cmd) if f is not None}
            except ValueError as e:
                raise ValueError(f"launch_cmd is not a valid format string: {e}") from None
            unknown = fields - LAUNCH_CMD_FIELDS
            if unknown:
                raise ValueError(f"launch_cmd has unknown placeholders {sorted(unknown)}; "
                                 f"accepted: {sorted(LAUNCH_CMD_FIELDS)}")
        self.launch_cmd = launch_cmd or DEFAULT_LAUNCH_CMD
        if address is not None:
            if not isinstance(address, str):
                raise TypeError(f"address must be a string or None, got {type(address).__name__}")
            check_address(address, "address")
        self.address = address
        if not isinstance(loopback_address, str) or loopback_address == "*":
            raise ValueError(f"loopback_address must be an IP address, got {loopback_address!r}")
        check_address(loopback_address, "loopback_address")
        self.loopback_address = loopback_address
        if worker_port is not None and (not _is_int(worker_port) or not 1 <= worker_port <= 65535):
            raise ValueError(f"worker_port must be None or a port number 1..65535, got {worker_port!r}")
        self.worker_port = worker_port
        self.worker_port_range = _port_range("worker_port_range", worker_port_range)
        self.interchange_port_range = _port_range("interchange_port_range", interchange_port_range)
        if not isinstance(worker_debug, bool):
            raise TypeError(f"worker_debug must be a bool, got {worker_debug!r}")
        self.worker_debug = worker_debug
        if not _is_number(cores_per_worker) or not cores_per_worker > 0:
            raise ValueError(f"cores_per_worker must be a number > 0, got {cores_per_worker!r}")
        self.cores_per_worker = float(cores_per_worker)
        if mem_per_worker is not None and (not _is_number(mem_per_worker) or mem_per_worker < 0):
            raise ValueError(f"mem_per_worker must be None or a number of GB >= 0, got {mem_per_worker!r}")
        self.mem_per_worker = mem_per_worker
        if max_workers_per_node is not None and (not _is_int(max_workers_per_node) or max_workers_per_node < 0):
            raise ValueError(f"max_workers_per_node must be None or an int >= 0, got {max_workers_per_node!r}")
        self.max_workers_per_node = max_workers_per_node
        # The syntax is checked here; whether a node can satisfy it is checked on the node.
        affinity = parse_cpu_affinity(cpu_affinity)
        if affinity.strategy == "list" and max_workers_per_node and max_workers_per_node != len(affinity.lists):
            raise ValueError(f"cpu_affinity lists threads for {len(affinity.lists)} workers but "
                             f"max_workers_per_node={max_workers_per_node}")
        self.cpu_affinity = cpu_affinity.strip() if affinity.strategy == "list" else affinity.strategy
        self._affinity_workers = len(affinity.lists) if affinity.strategy == "list" else None
        if _is_int(available_accelerators):
            assert isinstance(available_accelerators, int)
            if available_accelerators < 0:
                raise ValueError(f"available_accelerators must be >= 0, got {available_accelerators}")
            self.available_accelerators = [str(i) for i in range(available_accelerators)]
        elif isinstance(available_accelerators, list | tuple) and all(
            isinstance(a, str) and a and " " not in a for a in available_accelerators
        ):
            self.available_accelerators = list(available_accelerators)
        else:
            raise TypeError("available_accelerators must be an int or a sequence of non-empty names without "
                            f"spaces, got {available_accelerators!r}")
        if prefetch_capacity is not None and (not _is_int(prefetch_capacity) or prefetch_capacity < 0):
            raise ValueError(f"prefetch_capacity must be None (automatic) or an int >= 0, got {prefetch_capacity!r}")
        self.prefetch_capacity = prefetch_capacity
        for name, value in (("heartbeat_threshold", heartbeat_threshold), ("heartbeat_period", heartbeat_period)):
            if not _is_number(value) or not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if heartbeat_period > heartbeat_threshold:
            raise ValueError(f"heartbeat_period ({heartbeat_period}) must not exceed heartbeat_threshold "
                             f"({heartbeat_threshold}), or live managers would be expired between heartbeats")
        self.heartbeat_threshold = float(heartbeat_threshold)
        self.heartbeat_period = float(heartbeat_period)
        if drain_period is not None and (not _is_number(drain_period) or drain_period <= 0):
            raise ValueError(f"drain_period must be None or a number of seconds > 0, got {drain_period!r}")
        self.drain_period = drain_period
        if drain_before_walltime is not None:
            if not _is_number(drain_before_walltime) or not 0 < drain_before_walltime < math.inf:
                raise ValueError(f"drain_before_walltime must be None or a number of seconds > 0, "
                                 f"got {drain_before_walltime!r}")
            walltime = provider.walltime_seconds
            if walltime is None:
                raise ValueError(f"drain_before_walltime needs a provider with a walltime; this "
                                 f"{type(provider).__name__} has none")
            if drain_before_walltime >= walltime:
                raise ValueError(f"drain_before_walltime ({drain_before_walltime} s) must be less than the "
                                 f"provider's walltime ({walltime} s), or every block would drain as it starts")
            if "{walltime_drain}" not in self.launch_cmd:
                raise ValueError("drain_before_walltime needs the {walltime_drain} placeholder in launch_cmd, "
                                 "where the worker pool's options go")
            if strategy == "none":
                # A drained block ends by itself; without a strategy nothing would replace it, and tasks
                # submitted afterwards would wait for a block that never comes.
                raise ValueError("drain_before_walltime needs a scaling strategy ('simple' or 'htex_auto_scale') "
                                 "to replace the blocks it drains; strategy='none' would leave later tasks "
                                 "waiting for ever")
        self.drain_before_walltime = drain_before_walltime
        if not _is_int(poll_period) or poll_period <= 0:
            raise ValueError(f"poll_period must be an int number of milliseconds > 0, got {poll_period!r}")
        self.poll_period = poll_period
        if address_probe_timeout is not None and (not _is_number(address_probe_timeout) or address_probe_timeout <= 0):
            raise ValueError(f"address_probe_timeout must be None or seconds > 0, got {address_probe_timeout!r}")
        self.address_probe_timeout = address_probe_timeout
        if worker_logdir_root is not None and not isinstance(worker_logdir_root, str | os.PathLike):
            raise TypeError(f"worker_logdir_root must be a path or None, got {worker_logdir_root!r}")
        self.worker_logdir_root = worker_logdir_root
        if manager_selector is None:
            manager_selector = RandomManagerSelector()
        name = manager_selector if isinstance(manager_selector, str) else getattr(manager_selector, "name", "")
        if not isinstance(name, str) or name not in SELECTORS:
            raise ValueError(f"manager_selector must be one of {sorted(SELECTORS)} or an instance of "
                             f"{RandomManagerSelector.__name__}/{BlockIdManagerSelector.__name__}, "
                             f"got {manager_selector!r}")
        self.manager_selector = manager_selector
        self._selector_name: str = name
        #: The handler itself (True and "simple" give ``simple_error_handler``, and so on).
        self.block_error_handler: Callable[..., Any] = resolve_block_error_handler(block_error_handler)
        if not isinstance(encrypted, bool):
            raise TypeError(f"encrypted must be a bool, got {encrypted!r}")
        self.encrypted = encrypted
        if run_dir is not None and not isinstance(run_dir, str | os.PathLike):
            raise TypeError(f"run_dir must be a path or None, got {run_dir!r}")
        self._run_dir_arg = run_dir
        if strategy not in STRATEGY_NAMES:
            raise ValueError(f"strategy must be one of {list(STRATEGY_NAMES)}, got {strategy!r}")
        self.strategy = strategy
        for name, value in (("strategy_period", strategy_period), ("interchange_start_timeout",
                                                                     interchange_start_timeout)):
            if not _is_number(value) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if not _is_number(max_idletime) or max_idletime < 0:
            raise ValueError(f"max_idletime must be a number of seconds >= 0, got {max_idletime!r}")
        self.strategy_period = float(strategy_period)
        self.max_idletime = float(max_idletime)
        self.interchange_start_timeout = float(interchange_start_timeout)
        if block_registration_timeout is not None and (
                not _is_number(block_registration_timeout) or block_registration_timeout <= 0):
            raise ValueError("block_registration_timeout must be None (no time-out) or a number of seconds > 0, "
                             f"got {block_registration_timeout!r}")
        self.block_registration_timeout = (None if block_registration_timeout is None
                                           else float(block_registration_timeout))

        if max_outstanding is not None and (not _is_int(max_outstanding) or max_outstanding < 1):
            raise ValueError(f"max_outstanding must be None (no limit) or an int >= 1, got {max_outstanding!r}")
        self.max_outstanding = max_outstanding
        #: Submitters waiting for room under ``max_outstanding``; the result thread wakes them.
        self._room = threading.Condition(threading.Lock())
        self._room_waiters = 0

        self._tasks: dict[int, HtexFuture] = {}
        self._task_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._replies: dict[int, Future[Any]] = {}
        self._send_lock = threading.Lock()
        self._lifecycle_lock = threading.RLock()
        self._started = False
        self._shutdown = False
        self._bad_state: BaseException | None = None
        self._ready = threading.Event()
        self._io_stop = threading.Event()
        self._io_thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._writer: NonBlockingWriter | None = None
        self._wake_r, self._wake_w = -1, -1
        self._ix_proc: subprocess.Popen[bytes] | None = None
        self._ix_pidfd: int | None = None
        self._ix_ready_info: dict[str, Any] = {}
        self.run_dir = ""
        self.logdir = ""
        self.cert_dir: str | None = None
        self.interchange_worker_port: int | None = None
        #: Block bookkeeping and the control pass (``htex_ref.core.blocks``, times on the monotonic clock).
        self._blocks = BlockControl(ControlSettings(self.strategy, self.strategy_period, self.max_idletime,
                                                    self.block_registration_timeout))
        self._port = _ExecutorPort(self)
        self.blocks_to_job_id = self._blocks.blocks_to_job_id
        self.job_ids_to_block = self._blocks.job_ids_to_block
        self._watch_thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------ properties

    @property
    def tasks(self) -> dict[int, HtexFuture]:
        """Outstanding futures by task id (submitted and not yet resolved)."""
        return self._tasks

    @property
    def outstanding(self) -> int:
        return len(self._tasks)

    @property
    def workers_per_node(self) -> int:
        """Workers per node for scaling arithmetic (the pool decides the real count on its node)."""
        plan = plan_workers(
            max_workers_per_node=self.max_workers_per_node or self._affinity_workers,
            cores_per_worker=self.cores_per_worker,
            mem_per_worker=self.mem_per_worker,
            cores=self.provider.cores_per_node,
            mem_gb=self.provider.mem_per_node,
            accelerators=self.available_accelerators,
        )
        return plan.count

    @property
    def bad_state_is_set(self) -> bool:
        return self._bad_state is not None

    @property
    def executor_exception(self) -> BaseException | None:
        return self._bad_state

    @property
    def worker_logdir(self) -> str:
        if self.worker_logdir_root is not None:
            return os.path.join(os.fspath(self.worker_logdir_root), self.label)
        return self.logdir

    # ---------------------------------------------------------------------------------- start

    def start(self) -> None:
        """Start the interchange and launch ``init_blocks`` blocks; returns once the interchange is up."""
        with self._lifecycle_lock:
            if self._started:
                raise RuntimeError(f"executor {self.label} was already started")
            self._started = True
            if self._run_dir_arg is not None:
                run_dir = Path(self._run_dir_arg)
            else:
                run_dir = Path("runinfo") / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_run_counter)}"
            self.run_dir = str(run_dir.absolute())
            self.logdir = os.path.join(self.run_dir, self.label)
            os.makedirs(self.logdir, exist_ok=True)
            if self.provider.script_dir is None:
                self.provider.script_dir = os.path.join(self.run_dir, "submit_scripts")
            os.makedirs(self.provider.script_dir, exist_ok=True)
            if self.encrypted:
                self.cert_dir = create_certificates(self.logdir)
            try:
                self._start_interchange()
            except BaseException:
                self._teardown()
                raise
            _live_executors.add(self)
            # The strategy's first pass launches init_blocks now, not one strategy_period later.
            self._strategy_pass(first=True)
            self._blocks.started(time.monotonic())
            self._watch_thread = threading.Thread(target=self._control_loop, name=f"htex-{self.label}-scaling",
                                                  daemon=True)
            self._watch_thread.start()

    def _start_interchange(self) -> None:
        # The interchange is our child on this host, so a socketpair is its channel: private to the
        # two processes (no port, no encryption needed) and one wake-up per message instead of ZeroMQ's four.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        self._sock = ours
        self._writer = NonBlockingWriter(ours)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        cfg = {
            "executor_fd": theirs.fileno(),
            "address": self.address,
            "worker_port": self.worker_port,
            "worker_port_range": list(self.worker_port_range),
            "heartbeat_threshold": self.heartbeat_threshold,
            "manager_selector": self._selector_name,
            "cert_dir": self.cert_dir,
            "logdir": self.logdir,
            "debug": self.worker_debug,
            "poll_period": self.poll_period,
            "parent_pid": os.getpid(),
            "auto_prefetch": self.prefetch_capacity is None,
        }
        stderr_path = os.path.join(self.logdir, "interchange.stderr")
        with open(stderr_path, "wb") as err:
            # A session of its own keeps terminal signals (Ctrl-C) away from it; it stops when our end
            # of the socketpair closes, that is when this process exits however it exits.
            try:
                self._ix_proc = subprocess.Popen(
                    [sys.executable, "-m", "htex_ref.interchange"],
                    stdin=subprocess.PIPE, stdout=err, stderr=err, start_new_session=True, close_fds=True,
                    pass_fds=(theirs.fileno(),),
                )
            finally:
                theirs.close()
        assert self._ix_proc.stdin is not None
        self._ix_proc.stdin.write(json.dumps(cfg).encode())
        self._ix_proc.stdin.close()
        self._ix_pidfd = os.pidfd_open(self._ix_proc.pid)
        self._io_thread = threading.Thread(target=self._io_loop, name=f"htex-{self.label}-results", daemon=True)
        self._io_thread.start()
        if not self._ready.wait(self.interchange_start_timeout):
            raise InterchangeError(
                f"the interchange did not report ready within {self.interchange_start_timeout} s; "
                f"see {self.logdir}/interchange.log and {stderr_path}"
            )
        if self._bad_state is not None:
            raise InterchangeError(str(self._bad_state)) from self._bad_state
        self.interchange_worker_port = int(self._ix_ready_info["worker_port"])

    # ----------------------------------------------------------------------------- result thread

    def _io_loop(self) -> None:
        try:
            self._io_loop_body()
        except BaseException as e:
            # The thread that resolves futures must not die silently: nobody else would resolve them.
            logger.exception("The result thread failed")
            if not self._shutdown:
                self.set_bad_state_and_fail_all(InterchangeError(
                    f"the executor's result thread failed ({type(e).__name__}: {e}); see the log of {__name__}"))
                self._ready.set()

    def _io_loop_body(self) -> None:
        assert self._sock is not None and self._writer is not None and self._ix_pidfd is not None
        sock_fd = self._sock.fileno()
        reader = StreamReader(self._sock)
        writer = self._writer
        poller = zmq.Poller()
        poller.register(sock_fd, zmq.POLLIN)
        poller.register(self._ix_pidfd, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        tasks = self._tasks
        writing = False
        # A live interchange answers a ping every ``ping_every`` seconds; one that is stopped or stuck
        # (its process still exists, so the pidfd says nothing) is an error after heartbeat_threshold.
        silent_limit = float(self.heartbeat_threshold)
        ping_every = max(0.2, min(float(self.heartbeat_period), silent_limit / 4))
        last_heard = time.monotonic()
        next_ping = last_heard + ping_every
        while not self._io_stop.is_set():
            now = time.monotonic()
            if not self._ix_ready_info or self._bad_state is not None:
                # Before READY the start-up time-out applies; in bad state everything has failed.
                last_heard = now
            elif now - last_heard > silent_limit:
                assert self._ix_proc is not None
                self.set_bad_state_and_fail_all(InterchangeError(
                    f"the interchange process (pid {self._ix_proc.pid}) has not answered for {now - last_heard:.1f} s "
                    f"(heartbeat_threshold={self.heartbeat_threshold} s): it is stopped or stuck; "
                    f"see {self.logdir}/interchange.log"))
                last_heard = now
            elif now >= next_ping:
                next_ping = now + ping_every
                with self._send_lock:
                    if not self._shutdown:
                        # No one waits for this reply: any message from the interchange counts.
                        self._send([Kind.CMD, pack_request_id(next(self._request_ids)), _PING])
            if writer.pending != writing:
                writing = writer.pending
                poller.modify(sock_fd, zmq.POLLIN | (zmq.POLLOUT if writing else 0))
            socks = dict(poller.poll(100))
            if self._wake_r in socks:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            flags = socks.get(sock_fd, 0)
            if flags & zmq.POLLOUT:
                with self._send_lock:
                    writer.flush()
            if flags & zmq.POLLIN:
                last_heard = time.monotonic()
                try:
                    messages = reader.read_available()
                except Exception as e:
                    # Our own child wrote something we cannot parse: nothing after it can be trusted.
                    self.set_bad_state_and_fail_all(InterchangeError(
                        f"corrupt message stream from the interchange ({type(e).__name__}: {e}); "
                        f"see {self.logdir}/interchange.log"))
                    return
                for frames in messages:
                    try:
                        if frames[0] == Kind.RESULTS:
                            for task_id, outcome, payload, _ in split_results(frames):
                                fut = tasks.pop(task_id, None)
                                if fut is None or fut.done():
                                    continue
                                try:
                                    ok, value = decode_outcome(outcome, payload)
                                except BaseException as e:  # never leave a popped future unresolved
                                    ok, value = False, DeserializationError(
                                        f"result of task {task_id} could not be decoded: {type(e).__name__}: {e}")
                                try:
                                    if ok:
                                        fut.set_result(value)
                                    else:
                                        fut.set_exception(value)
                                except concurrent.futures.InvalidStateError:
                                    pass  # cancelled by the caller meanwhile
                        else:
                            self._control_message(frames)
                    except Exception as e:
                        # Results in it would never resolve: fail loudly rather than leave them waiting.
                        logger.exception("Undecodable message from the interchange")
                        self.set_bad_state_and_fail_all(InterchangeError(
                            f"undecodable message from the interchange ({type(e).__name__}: {e}); "
                            f"see {self.logdir}/interchange.log"))
                        return
                if self._room_waiters:
                    self._wake_submitters()
            if self._ix_pidfd in socks:
                self._interchange_exited()
                return

    def _send(self, frames: list[bytes]) -> None:
        """Queue a message for the interchange; the caller holds ``_send_lock``. Never blocks."""
        assert self._writer is not None
        self._writer.write_parts(encode_parts(frames))
        if self._writer.pending:
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass  # a wake-up is already queued

    def _control_message(self, frames: list[Frame]) -> None:
        kind = frames[0]
        if kind == Kind.REPLY:
            fut = self._replies.pop(unpack_request_id(frames[1]), None)
            if fut is not None and not fut.done():
                fut.set_result(json.loads(bytes(frames[2])))
        elif kind == Kind.READY:
            self._ix_ready_info = load_json_object(frames[1])
            self._ready.set()
        elif kind == Kind.FATAL:
            body = load_json_object(frames[1])
            exc: BaseException
            if body.get("kind") == "version_mismatch":
                exc = VersionMismatch(str(body.get("manager")), str(body.get("interchange")))
            else:
                exc = InterchangeError(str(body.get("message")))
            self.set_bad_state_and_fail_all(exc)
        else:
            logger.warning("Ignoring message of unknown kind %r from the interchange", kind[:32])

    def _interchange_exited(self) -> None:
        assert self._ix_proc is not None
        code = self._ix_proc.wait()
        if self._shutdown:
            return
        stderr = ""
        try:
            stderr = Path(self.logdir, "interchange.stderr").read_text(errors="replace")[-2000:]
        except OSError:
            pass
        exc = InterchangeError(
            f"the interchange process (pid {self._ix_proc.pid}) exited unexpectedly with code {code}; "
            f"see {self.logdir}/interchange.log" + (f"; its stderr ends with:\n{stderr}" if stderr else "")
        )
        logger.error("%s", exc)
        self.set_bad_state_and_fail_all(exc)
        self._ready.set()

    # --------------------------------------------------------------------------------- submit

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> HtexFuture:
        """``submit(func, resource_specification, *args, **kwargs)`` or ``submit(func, *args, **kwargs)``."""
        if "resource_specification" in kwargs:
            spec = kwargs.pop("resource_specification")
        elif args and (args[0] is None or (type(args[0]) is dict and set(args[0]) <= KNOWN_SPEC_KEYS)):
            spec, args = args[0], args[1:]
        else:
            spec = None
        return self._submit(fn, spec, args, kwargs)

    def validate_resource_spec(self, spec: Any) -> float:
        """Check a resource specification; return the task's priority (inf when none)."""
        if spec is None:
            return math.inf
        if not isinstance(spec, dict):
            raise InvalidResourceSpecification(
                set(), f"resource_specification must be a dict, got {type(spec).__name__}"
            )
        invalid = set(spec) - SUPPORTED_SPEC_KEYS
        if invalid:
            raise InvalidResourceSpecification(
                invalid, f"resource_specification keys {sorted(invalid)} are not supported by "
                         f"HighThroughputExecutor; supported: {sorted(SUPPORTED_SPEC_KEYS)}"
            )
        if "priority" not in spec:
            return math.inf
        priority = spec["priority"]
        if not _is_number(priority):
            raise InvalidResourceSpecification({"priority"}, f"priority must be a finite real number, got {priority!r}")
        return float(priority)

    def _submit(self, fn: Callable[..., Any], spec: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> HtexFuture:
        if not callable(fn):
            raise TypeError(f"submit needs a callable, got {type(fn).__name__}")
        priority = self.validate_resource_spec(spec)
        fn_bytes = dumps_function(fn)
        arg_bytes = dumps_arguments(fn, args, kwargs)
        limit = self.max_outstanding
        if limit is None or threading.current_thread() is self._io_thread:
            return self._enqueue(priority, fn_bytes, arg_bytes)
        # Waiting and enqueueing under one lock admits one producer at a time, so that several producer
        # threads never overshoot the limit together.
        with self._room:
            self._room_waiters += 1
            try:
                # The result thread pops finished tasks before it looks for waiters, and a waiter counts
                # itself before it looks at the tasks: one of the two always sees the other. The time-out
                # only bounds the wait should that reasoning ever be wrong.
                while (len(self._tasks) >= limit and self._bad_state is None and not self._shutdown
                       and self._started):
                    self._room.wait(1.0)
            finally:
                self._room_waiters -= 1
            return self._enqueue(priority, fn_bytes, arg_bytes)

    def _enqueue(self, priority: float, fn_bytes: bytes, arg_bytes: bytes) -> HtexFuture:
        with self._send_lock:
            if self._bad_state is not None:
                raise BadStateException(self.label, self._bad_state)
            if self._shutdown:
                raise ExecutorShutdown(f"executor {self.label} has been shut down")
            if not self._started or self._writer is None:
                raise RuntimeError(f"executor {self.label} is not started; call start() or use it in a with-block")
            task_id = next(self._task_ids)
            fut = HtexFuture(task_id)
            self._tasks[task_id] = fut
            try:
                self._send([Kind.TASK, pack_task_header(task_id, priority), fn_bytes, arg_bytes])
            except OSError as e:
                self._tasks.pop(task_id, None)
                raise InterchangeError(f"cannot reach the interchange: {e}") from e
        return fut

    def _wake_submitters(self) -> None:
        if self._room_waiters:
            with self._room:
                self._room.notify_all()

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``; arguments are never taken as resource specifications.

        With ``buffersize`` (as in Python 3.14), the iterables are read lazily: at most ``buffersize``
        tasks are submitted ahead of the result being yielded.
        """
        if buffersize is not None and (not _is_int(buffersize) or buffersize < 1):
            raise ValueError(f"buffersize must be None or an int >= 1, got {buffersize!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        arguments = zip(*iterables, strict=False)
        futures = collections.deque(
            self._submit(fn, None, args, {})
            for args in (arguments if buffersize is None else itertools.islice(arguments, buffersize)))

        def results() -> Iterator[Any]:
            try:
                while futures:
                    f = futures.popleft()
                    if buffersize is not None:
                        more = next(arguments, None)
                        if more is not None:
                            futures.append(self._submit(fn, None, more, {}))
                    yield f.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
            finally:
                for f in futures:
                    f.cancel()

        return results()

    # ------------------------------------------------------------------------------- commands

    def _command(self, op: str, *args: Any, timeout: float = 10.0) -> Any:
        if self._bad_state is not None:
            raise BadStateException(self.label, self._bad_state)
        if not self._started or self._shutdown or self._writer is None:
            raise RuntimeError(f"executor {self.label} is not running")
        request_id = next(self._request_ids)
        fut: Future[Any] = Future()
        self._replies[request_id] = fut
        try:
            with self._send_lock:
                self._send([Kind.CMD, pack_request_id(request_id), dump_json({"op": op, "args": args})])
            try:
                return fut.result(timeout)
            except concurrent.futures.TimeoutError:
                raise CommandTimeout(f"the interchange did not answer {op!r} within {timeout} s") from None
        finally:
            self._replies.pop(request_id, None)

    def connected_managers(self) -> list[dict[str, Any]]:
        """One dict per registered manager: id, block, host, workers, tasks, idle time, state, versions."""
        result: list[dict[str, Any]] = self._command("managers")
        return result

    def connected_blocks(self) -> list[str]:
        """Ids of every block that has had a manager register, in order of first registration."""
        result: list[str] = self._command("connected_blocks")
        return result

    def interchange_stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._command("stats")
        return result

    def hold_manager(self, manager_id: str) -> bool:
        """Stop sending tasks to a manager; its running tasks finish. Returns whether it was known."""
        return bool(self._command("hold_manager", manager_id))

    def hold_block(self, block_id: str) -> list[str]:
        """Hold every manager of a block; returns the ids of the managers held."""
        held = [m["manager"] for m in self.connected_managers() if m["block_id"] == block_id]
        for manager_id in held:
            self.hold_manager(manager_id)
        return held

    # -------------------------------------------------------------------------------- blocks

    def _launch_command(self, block_id: str) -> str:
        assert self.interchange_worker_port is not None
        if self.address:
            addresses = self.address
        elif isinstance(self.provider, LocalProvider):
            # Every block of a LocalProvider runs on this host: the loopback address reaches it.
            addresses = self.loopback_address
        else:
            addresses = ",".join(all_addresses())

        def q(value: Any) -> str:
            return shlex.quote(str(value))

        values = {
            "worker_pool": default_worker_pool_command(),
            "python": shlex.quote(sys.executable),
            "debug": " --debug" if self.worker_debug else "",
            "addresses": q(addresses),
            "worker_port": self.interchange_worker_port,
            "cert_dir": q(self.cert_dir),
            "block_id": q(block_id),
            "cores_per_worker": self.cores_per_worker,
            "mem_per_worker": q(self.mem_per_worker),
            "max_workers_per_node": self.max_workers_per_node or 0,
            "prefetch_capacity": self.prefetch_capacity or 0,
            "heartbeat_period": self.heartbeat_period,
            "heartbeat_threshold": self.heartbeat_threshold,
            "drain_period": q(self.drain_period),
            "walltime_drain": "" if self.drain_before_walltime is None else
            f" --walltime={self.provider.walltime_seconds} --drain-before-walltime={self.drain_before_walltime}",
            "address_probe_timeout": self.address_probe_timeout or 30,
            "cpu_affinity": q(self.cpu_affinity),
            "logdir": q(self.worker_logdir),
            "accelerators": (" --available-accelerators " + " ".join(q(a) for a in self.available_accelerators))
            if self.available_accelerators else "",
        }
        return self.launch_cmd.format(**values)

    def scale_out(self, blocks: int = 1) -> list[str]:
        """Launch ``blocks`` new blocks through the provider; returns the ids of those submitted."""
        if not _is_int(blocks) or blocks < 0:
            raise ValueError(f"blocks must be an int >= 0, got {blocks!r}")
        if self._bad_state is not None:
            raise BadStateException(self.label, self._bad_state)
        return self._blocks.scale_out(self._port, blocks, time.monotonic())

    def status(self) -> dict[str, JobStatus]:
        """The state of every block this executor launched (or failed to launch)."""
        return self._blocks.status(self._port)

    def block_statuses(self) -> dict[str, JobStatus]:
        """``status()`` where a block that ended without any manager registering is MISSING, with a
        message that points at its output files, and so is a block cancelled because no manager of it
        registered within ``block_registration_timeout``."""
        return self._blocks.block_statuses(self._port)

    def _time_out_unregistered_blocks(self, statuses: dict[str, JobStatus], now: float) -> None:
        """Note when blocks are first seen RUNNING; cancel those whose pool did not register within
        ``block_registration_timeout`` and report them in ``statuses`` as MISSING (``htex_ref.core.blocks``)."""
        self._blocks.time_out_unregistered_blocks(self._port, statuses, now)

    def handle_block_errors(self, statuses: dict[str, JobStatus]) -> None:
        """Apply ``block_error_handler`` to the current block statuses (nothing once in bad state)."""
        if self._bad_state is not None:
            return
        self.block_error_handler(self, statuses)

    def _control_loop(self) -> None:
        """Every wake: one control pass of ``htex_ref.core.blocks.BlockControl`` (a status refresh at the
        provider's polling interval, then the scaling strategy). Nothing scales once the executor is in
        bad state: the loop ends."""
        interval = self._blocks.wake_interval(self.provider)
        while not self._io_stop.wait(interval):
            if self._shutdown or self._bad_state is not None:
                return
            try:
                self._blocks.poll(self._port, time.monotonic())
            except Exception:
                logger.exception("Scaling pass failed")

    def _report_ended_blocks(self, statuses: dict[str, JobStatus]) -> None:
        """Tell the interchange once about each block whose job ended: its managers are gone with it,
        so their tasks fail with ManagerLost now rather than after heartbeat_threshold."""
        self._blocks.report_ended_blocks(self._port, statuses)

    def _strategy_pass(self, first: bool = False) -> None:
        self._blocks.strategy_pass(self._port, time.monotonic(), first=first)

    def scale_in(self, blocks: int) -> list[str]:
        """Cancel ``blocks`` blocks, idle ones first; returns the ids cancelled. ``scale_in(0)`` does nothing."""
        if not _is_int(blocks) or blocks < 0:
            raise ValueError(f"blocks must be an int >= 0, got {blocks!r}")
        if blocks == 0:
            return []
        live = [b for b, s in self.status().items() if not s.terminal]
        managers = self.connected_managers() if not self._bad_state else []
        chosen = choose_blocks_to_scale_in(blocks, live, managers)
        for m in managers:
            if m["block_id"] in chosen:
                self.hold_manager(m["manager"])
        return self._cancel_blocks(chosen)

    def _cancel_blocks(self, block_ids: list[str], scaled_in: bool = True) -> list[str]:
        """Cancel the jobs of blocks through the provider, mark them SCALED_IN (unless ``scaled_in`` is
        False) and tell the interchange; returns the ids cancelled."""
        return self._blocks.cancel_blocks(self._port, block_ids, scaled_in)

    # ----------------------------------------------------------------------------- failure

    def set_bad_state_and_fail_all(self, exception: BaseException) -> None:
        """Record ``exception`` as the executor's failure and fail every outstanding future with it."""
        with self._send_lock:
            if self._bad_state is None:
                self._bad_state = exception
            pending = list(self._tasks.items())
            self._tasks.clear()
            replies = list(self._replies.values())
        err = BadStateException(self.label, self._bad_state)
        for _, fut in pending:
            if not fut.done():
                try:
                    fut.set_exception(err)
                except concurrent.futures.InvalidStateError:
                    pass
        for r in replies:
            if not r.done():
                r.set_exception(err)
        self._wake_submitters()

    # ----------------------------------------------------------------------------- shutdown

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None) -> None:
        """Stop everything this executor started and leave no process behind.

        With ``wait`` (and not ``cancel_futures``), first waits for outstanding futures, at most ``timeout``
        seconds. Then cancels every block, stops the interchange (SIGTERM, then SIGKILL after 2 s) and fails
        any future still outstanding with ``ExecutorShutdown``.
        """
        with self._lifecycle_lock:
            if not self._started or self._shutdown:
                return
            if wait and not cancel_futures and self._bad_state is None:
                concurrent.futures.wait(list(self._tasks.values()), timeout=timeout)
            # Fail what is left first, so that it reads "shut down" rather than whatever the
            # stopping parts (a pool told to exit, say) would report for it.
            with self._send_lock:
                self._shutdown = True
                pending = list(self._tasks.values())
                self._tasks.clear()
            for fut in pending:
                if not fut.done():
                    try:
                        fut.set_exception(ExecutorShutdown(
                            f"executor {self.label} was shut down before task {fut.task_id} finished"))
                    except concurrent.futures.InvalidStateError:
                        pass
            self._wake_submitters()
            _live_executors.discard(self)
            try:
                live = [b for b, s in self.status().items() if not s.terminal]
                self._cancel_blocks(live)
            except Exception:
                logger.exception("Failed to cancel blocks at shutdown")
            self._teardown()

    def _teardown(self) -> None:
        self._shutdown = True
        for reply in list(self._replies.values()):
            # A command in flight (the block watcher's, say) must not wait out its time-out.
            if not reply.done():
                reply.set_exception(ExecutorShutdown(f"executor {self.label} is shutting down"))
        proc = self._ix_proc
        if proc is not None and proc.poll() is None and self._writer is not None:
            try:
                with self._send_lock:
                    self._send([Kind.STOP])
            except OSError:
                pass
            for sig_wait in (2.0, 1.0):
                try:
                    proc.wait(sig_wait)
                    break
                except subprocess.TimeoutExpired:
                    if sig_wait == 2.0:
                        proc.terminate()
                        # A stopped interchange would leave SIGTERM pending until SIGKILL.
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(proc.pid, signal.SIGCONT)
                    else:
                        proc.kill()
                        proc.wait()
        self._io_stop.set()
        for thread in (self._io_thread, self._watch_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(5)
        if self._ix_pidfd is not None:
            os.close(self._ix_pidfd)
            self._ix_pidfd = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> HighThroughputExecutor:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown(wait=exc[0] is None)

    def __repr__(self) -> str:
        return f"HighThroughputExecutor(label={self.label!r}, provider={self.provider!r})"


class _ExecutorPort:
    """What ``BlockControl`` needs from the world, for a running executor: its provider and its interchange."""

    def __init__(self, ex: HighThroughputExecutor) -> None:
        self._ex = ex

    @property
    def provider(self) -> ExecutionProvider:
        return self._ex.provider

    @property
    def workers_per_node(self) -> int:
        return self._ex.workers_per_node

    @property
    def stopping(self) -> bool:
        return self._ex._shutdown or self._ex._bad_state is not None

    @property
    def bad_state(self) -> bool:
        return self._ex._bad_state is not None

    def launch(self, block_id: str) -> str:
        ex = self._ex
        return ex.provider.submit(ex._launch_command(block_id), 1, f"htex_ref.{ex.label}.block-{block_id}")

    def registered_blocks(self) -> list[str]:
        return self._ex.connected_blocks()

    def block_loads(self) -> dict[str, BlockLoad]:
        reply: dict[str, dict[str, Any]] = self._ex._command("blocks")
        return {b: BlockLoad(**load) for b, load in reply.items()}

    def outstanding(self) -> int:
        return self._ex.outstanding

    def hold_block(self, block_id: str) -> None:
        for m in self._ex.connected_managers():
            if m["block_id"] == block_id and m["active"]:
                self._ex.hold_manager(m["manager"])

    def block_ended(self, block_id: str, reason: str) -> None:
        if reason:
            self._ex._command("block_cancelled", block_id, reason)
        else:
            self._ex._command("block_cancelled", block_id)

    def handle_block_errors(self, statuses: dict[str, JobStatus]) -> None:
        self._ex.handle_block_errors(statuses)


_live_executors: weakref.WeakSet[HighThroughputExecutor] = weakref.WeakSet()


@atexit.register
def _shutdown_live_executors() -> None:
    # A forgotten executor must not leave an interchange or worker pools behind.
    for ex in list(_live_executors):
        try:
            ex.shutdown(wait=False)
        except Exception:
            logger.exception("Failed to shut down %r at exit", ex)
