"""``HighThroughputExecutor``: submit Python calls, get ``concurrent.futures.Future`` objects back.

The executor lives in the user's process. This module is its facade: Parsl's public methods, the start
and shutdown sequence, and the wiring of the parts, each of which owns one piece of state:

- ``htex_ref.settings.ExecutorSettings``: the configuration, checked at construction and frozen;
- ``htex_ref.tasks.TaskTable``: the futures of outstanding tasks, backpressure, the executor's failure;
- ``htex_ref.link.InterchangeLink``: the interchange process and the socketpair to it, served by the
  *link thread* (results in, queries, liveness);
- ``htex_ref.control.ControlThread``: the *control thread*, sole driver of ``htex_ref.core.blocks.
  BlockControl`` (block statuses, registration time-outs, block errors, scaling); user calls that touch
  blocks are requests to it;
- ``htex_ref.launch``: the command that starts a worker pool, rendered per block.

See ``htex_ref.interchange`` for the path of a task, and docs/architecture.md for the whole picture.
"""

from __future__ import annotations

import atexit
import base64
import collections
import concurrent.futures
import dataclasses
import itertools
import json
import logging
import os
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from htex_ref.control import ControlThread
from htex_ref.core.blocks import (
    EXTERNAL,
    BlockControl,
    ControlSettings,
    HoldRequest,
    ScaleIn,
    ScaleOut,
    Shutdown,
    StatusQuery,
)
from htex_ref.core.planning import plan_workers
from htex_ref.core.retry import RetryPolicy
from htex_ref.errors import BadStateException, ExecutorShutdown, InterchangeError, PayloadTooLarge
from htex_ref.link import InterchangeLink
from htex_ref.monitoring import MonitoringStore, db_path
from htex_ref.netutil import create_certificates
from htex_ref.protocol import MAX_CANCEL_IDS, Kind, Query, pack_cancel, pack_task_header
from htex_ref.providers.base import ExecutionProvider, JobStatus
from htex_ref.serialize import dumps_arguments, dumps_function
from htex_ref.settings import ExecutorSettings, is_int, is_number
from htex_ref.tasks import SUPPORTED_SPEC_KEYS, HtexFuture, TaskTable, read_spec

__all__ = ["SUPPORTED_SPEC_KEYS", "HighThroughputExecutor", "HtexFuture"]

logger = logging.getLogger(__name__)

_run_counter = itertools.count()
#: Every parameter is readable as an attribute of the executor, as Parsl's executors expose theirs.
_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(ExecutorSettings))


class HighThroughputExecutor(concurrent.futures.Executor):
    """Run Python functions on worker processes in blocks started by a provider.

    Parameters keep the names and meanings of Parsl's HighThroughputExecutor; each is described in
    ``htex_ref.settings.ExecutorSettings`` and readable as an attribute (``executor.max_workers_per_node``).
    Bad values raise ``ValueError`` or ``TypeError`` here, naming the parameter and what it accepts.

    ``submit(fn, *args, **kwargs)`` is ``concurrent.futures``' ``submit``, exactly: every argument goes to
    ``fn``, and a resource specification goes by keyword (``resource_specification={"priority": 1}``).
    Parsl's positional form, ``submit(func, resource_specification, *args, **kwargs)``, is
    ``parsl_submit`` (the Parsl adapter calls it).
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
        strategy: str = "simple",
        strategy_period: float = 5.0,
        max_idletime: float = 120.0,
        interchange_start_timeout: float = 30.0,
        block_registration_timeout: float | None = 120.0,
        max_outstanding: int | None = None,
        interchange_launch_cmd: Sequence[str] | None = None,
        max_workers: int | float | None = None,
        worker_ports: tuple[int, int] | None = None,
        managed: bool = True,
        storage_access: Sequence[Any] | None = None,
        working_dir: str | None = None,
        remote_monitoring_radio: Any = None,
        enable_mpi_mode: bool = False,
        mpi_launcher: str = "mpiexec",
        mpi_nodes: Sequence[str] | None = None,
        mpi_share_nodes: bool = False,
        mpi_policy: str = "backfill",
        cancel_running: bool = False,
        task_kill_grace: float = 2.0,
        max_retries_on_system_failure: int = 0,
        crash_limit: int = 2,
        enforce_memory: bool = False,
        max_payload_bytes: int | None = 1 << 30,
        restart_interchange: bool = False,
        max_interchange_restarts: int = 3,
        reconnect_timeout: float | None = None,
        monitoring: bool = True,
        monitoring_interval: float = 5.0,
        monitoring_hook: Callable[..., Any] | None = None,
    ) -> None:
        # The settings turn None into a LocalProvider and the default launch command.
        self.settings = ExecutorSettings(
            label=label, provider=cast(ExecutionProvider, provider), launch_cmd=cast(str, launch_cmd), address=address,
            loopback_address=loopback_address, worker_port=worker_port, worker_port_range=worker_port_range,
            interchange_port_range=interchange_port_range, worker_debug=worker_debug,
            cores_per_worker=cores_per_worker, mem_per_worker=mem_per_worker,
            max_workers_per_node=max_workers_per_node, cpu_affinity=cpu_affinity,
            available_accelerators=available_accelerators, prefetch_capacity=prefetch_capacity,
            heartbeat_threshold=heartbeat_threshold, heartbeat_period=heartbeat_period, drain_period=drain_period,
            drain_before_walltime=drain_before_walltime, poll_period=poll_period,
            address_probe_timeout=address_probe_timeout, worker_logdir_root=worker_logdir_root,
            manager_selector=manager_selector, block_error_handler=block_error_handler, encrypted=encrypted,
            run_dir=run_dir, strategy=strategy, strategy_period=strategy_period, max_idletime=max_idletime,
            interchange_start_timeout=interchange_start_timeout,
            block_registration_timeout=block_registration_timeout, max_outstanding=max_outstanding,
            interchange_launch_cmd=interchange_launch_cmd, max_workers=max_workers, worker_ports=worker_ports,
            managed=managed, storage_access=storage_access, working_dir=working_dir,
            remote_monitoring_radio=remote_monitoring_radio, enable_mpi_mode=enable_mpi_mode,
            mpi_launcher=mpi_launcher, mpi_nodes=mpi_nodes, mpi_share_nodes=mpi_share_nodes, mpi_policy=mpi_policy,
            cancel_running=cancel_running, task_kill_grace=task_kill_grace,
            max_retries_on_system_failure=max_retries_on_system_failure, crash_limit=crash_limit,
            enforce_memory=enforce_memory, max_payload_bytes=max_payload_bytes,
            restart_interchange=restart_interchange,
            max_interchange_restarts=max_interchange_restarts, reconnect_timeout=reconnect_timeout,
            monitoring=monitoring, monitoring_interval=monitoring_interval,
            monitoring_hook=monitoring_hook,
        )
        #: The block error handler itself (True and "simple" give ``simple_error_handler``, and so on).
        self.block_error_handler: Callable[..., Any] = self.settings.error_handler
        self.table = TaskTable(self.settings.label, self.settings.max_outstanding,
                               RetryPolicy(self.settings.max_retries_on_system_failure, self.settings.crash_limit))
        self.table.on_cancel = self._send_cancel
        self.run_dir = ""
        self.logdir = ""
        self.cert_dir: str | None = None
        self.interchange_worker_port: int | None = None
        self._link: InterchangeLink | None = None
        self._control: ControlThread | None = None
        #: The monitoring store (``monitoring=True``), from ``start`` on.
        self.monitoring_store: MonitoringStore | None = None
        self._lifecycle_lock = threading.RLock()
        self._started = False
        self._shutdown = False
        #: Set by ``htex_ref.parsl_adapter`` before ``start``: Parsl's DataFlowKernel scales the blocks.
        self._external_scaling = False

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not ordinary attributes: the parameters.
        if name in _SETTING_NAMES and "settings" in self.__dict__:
            return getattr(self.settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------------------ properties

    @property
    def label(self) -> str:
        return self.settings.label

    @property
    def provider(self) -> ExecutionProvider:
        return self.settings.provider

    @property
    def tasks(self) -> dict[int, HtexFuture]:
        """Outstanding futures by task id (submitted and not yet resolved)."""
        return self.table.futures

    @property
    def outstanding(self) -> int:
        return len(self.table)

    @property
    def workers_per_node(self) -> int:
        """Workers per node for scaling arithmetic (the pool decides the real count on its node)."""
        s = self.settings
        return plan_workers(max_workers_per_node=s.max_workers_per_node or s.affinity_workers,
                            cores_per_worker=s.cores_per_worker, mem_per_worker=s.mem_per_worker,
                            cores=s.provider.cores_per_node, mem_gb=s.provider.mem_per_node,
                            accelerators=list(s.accelerators)).count

    @property
    def bad_state_is_set(self) -> bool:
        return self.table.failure is not None

    @property
    def executor_exception(self) -> BaseException | None:
        return self.table.failure

    @property
    def worker_logdir(self) -> str:
        if self.settings.worker_logdir_root is not None:
            return os.path.join(os.fspath(self.settings.worker_logdir_root), self.label)
        return self.logdir

    @property
    def interchange_process(self) -> subprocess.Popen[bytes] | None:
        """The interchange's process (None before ``start``)."""
        return self._link.process if self._link is not None else None

    @property
    def interchange_restarts(self) -> list[dict[str, Any]]:
        """One dict per restart of the interchange (``restart_interchange``): ``at`` (epoch seconds),
        ``cause``, ``resent`` (outstanding tasks sent to the new one), ``gap_s`` (seconds from noticing the
        death until the new one was ready), ``recovered_s`` (until recovery ended), ``adopted`` (tasks
        worker pools still held), ``requeued`` (tasks run again) and ``managers`` (pools that came back)."""
        if self._link is None:
            return []
        return [{k: v for k, v in r.items() if not k.startswith("_")} for r in self._link.restarts]

    @property
    def blocks_to_job_id(self) -> dict[str, str]:
        return dict(self._control.core.blocks_to_job_id) if self._control is not None else {}

    @property
    def job_ids_to_block(self) -> dict[str, str]:
        return dict(self._control.core.job_ids_to_block) if self._control is not None else {}

    # ----------------------------------------------------------------------------- start, stop

    def start(self) -> None:
        """Start the interchange and launch ``init_blocks`` blocks; returns once the interchange is up."""
        with self._lifecycle_lock:
            if self._started:
                raise RuntimeError(f"executor {self.label} was already started")
            self._started = True
            self._make_run_dir()
            s = self.settings
            self._link = InterchangeLink(s.label, self.logdir, self.table, self.set_bad_state_and_fail_all,
                                         s.heartbeat_threshold, s.heartbeat_period,
                                         max_restarts=s.max_interchange_restarts if s.restart_interchange else 0)
            self.table.resend = self._link.send
            if s.monitoring:
                self.monitoring_store = MonitoringStore(db_path(self.logdir), s.label, s.monitoring_hook)
                self.monitoring_store.start(self._monitored_settings())
                self._link.monitor = self.table.monitor = self.monitoring_store.put
            try:
                self.interchange_worker_port = self._link.start(self._interchange_config(), s.interchange_start_timeout,
                                                                s.interchange_launch_cmd)
            except BaseException:
                self._teardown()
                raise
            self.table.open()
            _live_executors.add(self)
            self._control = ControlThread(s.label, BlockControl(self._control_settings(), self._error_rule()),
                                          s.provider, self._launch_command, self._link, self.table,
                                          self.set_bad_state_and_fail_all,
                                          None if self.monitoring_store is None else self.monitoring_store.put)
            self._control.start()

    def _make_run_dir(self) -> None:
        if self.settings.run_dir is not None:
            run_dir = Path(self.settings.run_dir)
        elif self.run_dir:
            run_dir = Path(self.run_dir)  # given before start(), as Parsl's DataFlowKernel and load() do
        else:
            run_dir = Path("runinfo") / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_run_counter)}"
        self.run_dir = str(run_dir.absolute())
        self.logdir = os.path.join(self.run_dir, self.label)
        os.makedirs(self.logdir, exist_ok=True)
        if self.provider.script_dir is None:
            self.provider.script_dir = os.path.join(self.run_dir, "submit_scripts")
        os.makedirs(self.provider.script_dir, exist_ok=True)
        if self.settings.encrypted:
            self.cert_dir = create_certificates(self.logdir)

    def _interchange_config(self) -> dict[str, Any]:
        s = self.settings
        return {
            "address": s.address, "worker_port": s.worker_port, "worker_port_range": list(s.worker_port_range),
            "heartbeat_threshold": s.heartbeat_threshold, "manager_selector": s.selector_name,
            "cert_dir": self.cert_dir, "logdir": self.logdir, "debug": s.worker_debug, "poll_period": s.poll_period,
            "parent_pid": os.getpid(), "auto_prefetch": s.prefetch_capacity is None,
            "task_kill_grace": s.task_kill_grace, "enforce_memory": s.enforce_memory,
            "monitoring": s.monitoring_interval if s.monitoring else None,
            "reconnect_timeout": s.reconnect_timeout,
            "max_payload_bytes": s.max_payload_bytes,
            "manager_selector_pickle": base64.b64encode(s.selector_pickle).decode() if s.selector_pickle else None,
        }

    def _control_settings(self) -> ControlSettings:
        s, p = self.settings, self.settings.provider
        return ControlSettings(
            strategy=EXTERNAL if self._external_scaling else s.strategy, strategy_period=s.strategy_period,
            max_idletime=s.max_idletime, label=s.label,
            registration_timeout=s.block_registration_timeout,
            status_interval=max(0.2, float(p.status_polling_interval)), init_blocks=p.init_blocks,
            min_blocks=p.min_blocks, max_blocks=p.max_blocks, nodes_per_block=p.nodes_per_block,
            parallelism=float(p.parallelism), workers_per_node=self.workers_per_node, script_dir=p.script_dir,
            mpi_mode=s.enable_mpi_mode)

    def _error_rule(self) -> Any:
        from htex_ref.block_errors import error_rule

        return error_rule(self.block_error_handler, self, self.provider.init_blocks)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None) -> None:
        """Stop everything this executor started and leave no process behind.

        With ``wait`` (and not ``cancel_futures``), first waits for outstanding futures, at most ``timeout``
        seconds. With ``cancel_futures``, every outstanding future is cancelled instead, as ``cancel()``
        would (queued tasks are dropped; running ones stopped with ``cancel_running``, and in any case
        ended with their blocks). Then fails any future still outstanding with ``ExecutorShutdown``,
        cancels every block, and stops the interchange (SIGTERM, then SIGKILL 1 s later, when it does not
        stop within 2 s).
        """
        with self._lifecycle_lock:
            if not self._started or self._shutdown:
                return
            if wait and not cancel_futures and self.table.failure is None:
                concurrent.futures.wait(list(self.table.futures.values()), timeout=timeout)
            if cancel_futures:
                # The same path as future.cancel(), for every outstanding task at once.
                self._send_cancel(*self.table.cancel_all())
            self._shutdown = True
            # Fail what is left first, so that it reads "shut down" rather than whatever the
            # stopping parts (a pool told to exit, say) would report for it.
            self.table.close()
            _live_executors.discard(self)
            if self._control is not None:
                try:
                    self._control.request(Shutdown())
                except Exception:
                    logger.exception("Failed to cancel the blocks of executor %s at shutdown", self.label)
            self._teardown()

    def _teardown(self) -> None:
        self._shutdown = True
        if self._link is not None:
            self._link.stop()
        if self._control is not None:
            self._control.stop()
        if self.monitoring_store is not None:
            self.monitoring_store.close()

    def _monitored_settings(self) -> dict[str, Any]:
        """What the monitoring store records about this executor's configuration (replay reads it)."""
        s, p = self.settings, self.settings.provider
        values = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)
                  if f.name not in ("provider", "monitoring_hook", "manager_selector", "block_error_handler",
                                    "error_handler", "selector_pickle", "storage_access",
                                    "remote_monitoring_radio")}
        values["provider"] = {
            "class": type(p).__name__, "init_blocks": p.init_blocks, "min_blocks": p.min_blocks,
            "max_blocks": p.max_blocks, "nodes_per_block": p.nodes_per_block, "parallelism": p.parallelism,
            "walltime": getattr(p, "walltime", None), "status_polling_interval": p.status_polling_interval,
        }
        values["workers_per_node"] = self.workers_per_node
        return values

    def __enter__(self) -> HighThroughputExecutor:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown(wait=exc[0] is None)

    def __repr__(self) -> str:
        return f"HighThroughputExecutor(label={self.label!r}, provider={self.provider!r})"

    # ---------------------------------------------------------------------------------- tasks

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> HtexFuture:
        """Run ``fn(*args, **kwargs)`` on a worker, as ``concurrent.futures.Executor.submit`` does. A resource
        specification goes by keyword only: ``submit(fn, x, resource_specification={"priority": 1})``
        (Parsl's positional form is ``parsl_submit``)."""
        spec = kwargs.pop("resource_specification", None)
        return self._submit(fn, spec, args, kwargs)

    def parsl_submit(self, fn: Callable[..., Any], resource_specification: dict[str, Any] | None, /,
                     *args: Any, **kwargs: Any) -> HtexFuture:
        """Parsl's executor form: ``parsl_submit(func, resource_specification, *args, **kwargs)``."""
        return self._submit(fn, resource_specification, args, kwargs)

    def validate_resource_spec(self, spec: Any) -> float:
        """Check a resource specification; return the task's priority (inf when none)."""
        return read_spec(spec, mpi_max_nodes=self.settings.mpi_max_nodes)[0]

    def _submit(self, fn: Callable[..., Any], spec: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> HtexFuture:
        if not callable(fn):
            raise TypeError(f"submit needs a callable, got {type(fn).__name__}")
        priority, mpi = read_spec(spec, mpi_max_nodes=self.settings.mpi_max_nodes)
        fn_bytes = dumps_function(fn)
        arg_bytes = dumps_arguments(fn, args, kwargs)
        limit = self.settings.max_payload_bytes
        if limit is not None and len(fn_bytes) + len(arg_bytes) > limit:
            raise PayloadTooLarge(f"the call {getattr(fn, '__qualname__', fn)!s:.100}", len(fn_bytes) + len(arg_bytes),
                                  limit)
        link = self._link

        keep = self.table.retry.enabled or self.settings.restart_interchange
        monitor = None if self.monitoring_store is None else self.monitoring_store.put_submit
        spec_json = None if spec is None or monitor is None else json.dumps(spec, default=str)

        def send(task_id: int) -> None:
            assert link is not None
            frames = [Kind.TASK, pack_task_header(task_id, priority, mpi), fn_bytes, arg_bytes]
            if keep:
                self.table.keep(task_id, frames)
            if monitor is not None:
                monitor((task_id, time.time(), priority, spec_json))
            try:
                link.send(frames)
            except OSError as e:
                raise InterchangeError(f"cannot reach the interchange: {e}") from e

        # Never held on the link thread (a done-callback that submits): results could not arrive meanwhile.
        return self.table.add(send, may_wait=link is None or threading.current_thread() is not link.thread)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``; arguments are never taken as resource specifications.

        With ``buffersize`` (as in Python 3.14), the iterables are read lazily: at most ``buffersize``
        tasks are submitted ahead of the result being yielded.
        """
        if buffersize is not None and (not is_int(buffersize) or buffersize < 1):
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

    def _send_cancel(self, *task_ids: int) -> None:
        """Tell the interchange these tasks' futures were cancelled (best effort: a stopped link has
        nothing left to cancel)."""
        link = self._link
        if link is None or not task_ids:
            return
        for i in range(0, len(task_ids), MAX_CANCEL_IDS):
            try:
                link.send([Kind.CANCEL, pack_cancel(task_ids[i:i + MAX_CANCEL_IDS], self.settings.cancel_running)])
            except (ExecutorShutdown, OSError):
                return

    def set_bad_state_and_fail_all(self, exception: BaseException) -> None:
        """Record ``exception`` as the executor's failure and fail every outstanding future with it."""
        failure = self.table.fail_all(exception)
        if self._link is not None:
            self._link.fail_queries(BadStateException(self.label, failure))

    # ------------------------------------------------------------------------- the interchange

    def _query(self, query: Query, *args: Any) -> Any:
        if self._link is None or self._shutdown:
            if self.table.failure is not None:
                raise BadStateException(self.label, self.table.failure)
            raise RuntimeError(f"executor {self.label} is not running")
        return self._link.query(query, *args)

    def connected_managers(self) -> list[dict[str, Any]]:
        """One dict per registered manager: id, block, host, workers, tasks, idle time, state, versions."""
        result: list[dict[str, Any]] = self._query(Query.MANAGERS)
        return result

    def connected_blocks(self) -> list[str]:
        """Ids of every block that has had a manager register, in order of first registration."""
        result: list[str] = self._query(Query.CONNECTED_BLOCKS)
        return result

    def interchange_stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._query(Query.STATS)
        return result

    def hold_manager(self, manager_id: str) -> bool:
        """Stop sending tasks to a manager; its running tasks finish. Returns whether it was known."""
        return bool(self._query(Query.HOLD_MANAGER, manager_id))

    # ---------------------------------------------------------------------------------- blocks

    def _blocks(self, event: Any) -> Any:
        if self.table.failure is not None and isinstance(event, ScaleOut):
            raise BadStateException(self.label, self.table.failure)
        if self._control is None:
            raise RuntimeError(f"executor {self.label} is not started; call start() or use it in a with-block")
        return self._control.request(event)

    def hold_block(self, block_id: str) -> list[str]:
        """Hold every manager of a block (they get no more tasks); returns the ids of the managers held."""
        self._blocks(HoldRequest(block_id))
        return [m["manager"] for m in self.connected_managers() if m["block_id"] == block_id and not m["active"]]

    def scale_out(self, blocks: int = 1) -> list[str]:
        """Launch ``blocks`` new blocks through the provider; returns the ids of those submitted."""
        if not is_int(blocks) or blocks < 0:
            raise ValueError(f"blocks must be an int >= 0, got {blocks!r}")
        launched: list[str] = self._blocks(ScaleOut(blocks))
        return launched

    def scale_in(self, blocks: int = 0, max_idletime: float | None = None, *,
                 block_ids: Sequence[str] | None = None) -> list[str]:
        """Cancel ``blocks`` blocks, idle ones first, or exactly the live ones of ``block_ids`` (not both);
        returns the ids cancelled. ``scale_in(0)`` does nothing. With ``max_idletime`` (Parsl's form) only
        blocks whose workers have all been idle for more than that many seconds are cancelled."""
        if not is_int(blocks) or blocks < 0:
            raise ValueError(f"blocks must be an int >= 0, got {blocks!r}")
        if max_idletime is not None and (not is_number(max_idletime) or max_idletime < 0):
            raise ValueError(f"max_idletime must be None or a number of seconds >= 0, got {max_idletime!r}")
        if block_ids is not None:
            if blocks or max_idletime is not None:
                raise ValueError("scale_in takes blocks (with max_idletime) or block_ids, not both")
            if isinstance(block_ids, str) or not all(isinstance(b, str) for b in block_ids):
                raise TypeError(f"block_ids must be a list of block id strings, got {block_ids!r}")
            cancelled: list[str] = self._blocks(ScaleIn(block_ids=tuple(block_ids)))
            return cancelled
        if blocks == 0:
            return []
        cancelled = self._blocks(ScaleIn(blocks, max_idletime=None if max_idletime is None else float(max_idletime)))
        return cancelled

    def status(self, fresh: bool = True) -> dict[str, JobStatus]:
        """The state of every block this executor launched (or failed to launch); ``fresh=False``: as last
        seen (the last status refresh, and the states the executor set since), without asking the provider."""
        if self._control is None:
            return {}
        statuses: dict[str, Any] = self._control.request(StatusQuery(fresh=fresh))
        return {b: JobStatus.of(st) for b, st in statuses.items()}

    def block_statuses(self) -> dict[str, JobStatus]:
        """``status()`` where a block that ended without any manager registering is MISSING, with a
        message that points at its output files, and so is a block cancelled because no manager of it
        registered within ``block_registration_timeout``."""
        if self._control is None:
            return {}
        statuses: dict[str, Any] = self._control.request(StatusQuery(with_missing=True))
        return {b: JobStatus.of(st) for b, st in statuses.items()}

    def handle_block_errors(self, statuses: dict[str, JobStatus]) -> None:
        """Apply ``block_error_handler`` to ``statuses`` (nothing once in bad state)."""
        if self.table.failure is None:
            self.block_error_handler(self, statuses)

    def _launch_command(self, block_id: str) -> str:
        assert self.interchange_worker_port is not None
        return self.settings.launch_command(block_id, self.interchange_worker_port, self.cert_dir,
                                            self.worker_logdir)


_live_executors: weakref.WeakSet[HighThroughputExecutor] = weakref.WeakSet()


@atexit.register
def _shutdown_live_executors() -> None:
    # A forgotten executor must not leave an interchange or worker pools behind.
    for ex in list(_live_executors):
        try:
            ex.shutdown(wait=False)
        except Exception:
            logger.exception("Failed to shut down %r at exit", ex)
