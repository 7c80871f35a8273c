"""Configurations for apps: ``Config``, ``load``/``clear``, the local default, and the loaded ``Session``.

``htex_ref.load(config)`` starts the configuration's executors and makes it the one that apps
(``htex_ref.apps``) submit to; it returns a ``Session`` (what Parsl calls the DataFlowKernel), which is
also a context manager::

    with htex_ref.load():               # the local default: one block of workers on this machine
        print(hello("world").result())

Leaving the block waits for every app launched in it (``exit_mode="wait"``; on an exception, or with
``exit_mode="cleanup"``, it does not wait), then stops the executors. At most one configuration is
loaded at a time. The session owns the executors by label, the threads that run join-app bodies, and
the set of apps not yet resolved, which it fails when it is closed, so nothing waits forever on an app
whose executors are gone.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import itertools
import logging
import os
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from htex_ref.apps import AppFuture, NoConfigLoaded, current_session, set_current_session
from htex_ref.errors import ExecutorShutdown
from htex_ref.executor import HighThroughputExecutor
from htex_ref.providers.local import LocalProvider
from htex_ref.settings import ExecutorSettings

logger = logging.getLogger(__name__)

EXIT_MODES = ("wait", "cleanup", "skip")

#: The label of the local default configuration's executor.
LOCAL_LABEL = "htex_local"

#: The executor settings a Config also has, as Parsl's Config does: they apply to every executor of it.
SCALING_KEYS = ("strategy", "strategy_period", "max_idletime")

#: Parsl Config keywords htex_ref leaves to Parsl (through ``htex_ref.parsl_adapter``), each with the
#: values that ask for nothing: any other value is refused with a message naming the keyword.
LEFT_TO_PARSL: dict[str, tuple[Any, str]] = {
    "app_cache": (False, "an app cache"),
    "checkpoint_mode": (None, "checkpointing"),
    "checkpoint_files": (None, "checkpointing"),
    "checkpoint_period": (None, "checkpointing"),
    "memoizer": (None, "memoization"),
    "monitoring": (None, "Parsl's monitoring database"),
    "dependency_resolver": (None, "custom dependency resolvers"),
    "std_autopath": (None, "automatic stdout/stderr names"),
    "usage_tracking": (0, "usage tracking (htex_ref sends nothing)"),
    "project_name": (None, "usage tracking (htex_ref sends nothing)"),
}


def _refused(name: str, value: Any) -> None:
    allowed, what = LEFT_TO_PARSL[name]
    if value != allowed or type(value) is not type(allowed):
        raise ValueError(f"Config.{name}={value!r}: htex_ref does not implement {what}; leave {name} at "
                         f"{allowed!r}, or run this configuration under Parsl itself with "
                         "htex_ref.parsl_adapter.HtexRefExecutor as its executor (see docs/switching-from-parsl.md)")


class Config:
    """What ``load`` starts: executors (each with a unique label) and workflow-wide settings. It takes
    Parsl's ``Config`` keywords: those htex_ref implements, and the rest with the values that ask for
    nothing (anything else is refused, pointing to the Parsl adapter).

    Bad values raise ``ValueError`` or ``TypeError`` here, naming the parameter.

    Parameters
    ----------
    executors : Sequence[HighThroughputExecutor] | None
        The executors to start, not yet started, with distinct labels. ``None``: the local default, one
        executor labelled ``htex_local`` with one block on this machine (see ``local_config``).
    retries : int
        The retry budget of a failed app call, for apps that do not set their own ``retries``: each
        failure costs 1 (or what ``retry_handler`` says), and the call runs again while the cost so far is
        at most ``retries``. A call that failed because one of its dependencies failed is not retried.
    retry_handler : Callable | None
        As in Parsl: ``retry_handler(exception, task_record) -> float``, the cost of a failure. The
        record is a dict with ``id``, ``func_name``, ``fail_count``, ``fail_cost``, ``try_id``,
        ``args``, ``kwargs``, ``executor`` and ``resource_specification``. If it raises, its exception
        is the call's and it is not retried.
    join_threads : int
        Threads in this process that run join-app bodies. A body that blocks on ``.result()`` holds one
        of them while it waits; a body that returns futures holds none.
    internal_tasks_max_threads : int | None
        Parsl's name for ``join_threads`` (give one of the two).
    exit_mode : str
        ``"wait"`` (the default): leaving a ``with htex_ref.load(...)`` block normally waits for every app
        launched in it. ``"cleanup"`` (Parsl's default): stop at once; unfinished apps fail with
        ``ExecutorShutdown``. ``"skip"``: leave the configuration loaded (``htex_ref.clear()`` or the end
        of the program closes it). After an exception in the block, ``wait`` does not wait.
    strategy : str | None
        Block scaling for every executor of the configuration: ``simple`` (Parsl's default),
        ``htex_auto_scale`` or ``none`` (``None`` too). An executor given a different strategy of its
        own is refused: set it in one place.
    strategy_period : float
        Seconds between scaling passes, for every executor (same rule).
    max_idletime : float
        Seconds a block may stay idle before the strategy scales it in, for every executor (same rule).
    run_dir : str
        Where runs keep their logs: each ``load`` makes ``{run_dir}/000``, ``001``, ... and executors
        without a ``run_dir`` of their own log under it, as with Parsl.
    initialize_logging : bool
        Write htex_ref's log messages (logger ``htex_ref``, INFO and up) to ``{run directory}/htex_ref.log``.
    garbage_collect : bool
        Accepted as in Parsl; htex_ref keeps no record of finished apps either way.
    app_cache : bool
        Parsl's app cache: left to Parsl (``htex_ref.parsl_adapter``); only ``False`` is accepted.
    checkpoint_mode : str | None
        Parsl's checkpointing: left to Parsl; only ``None`` is accepted.
    checkpoint_files : Any
        Parsl's checkpointing: left to Parsl; only ``None`` is accepted.
    checkpoint_period : str | None
        Parsl's checkpointing: left to Parsl; only ``None`` is accepted.
    memoizer : Any
        Parsl's memoizer: left to Parsl; only ``None`` is accepted.
    monitoring : Any
        Parsl's monitoring hub: left to Parsl; only ``None`` is accepted.
    dependency_resolver : Any
        Parsl's dependency resolver plug-in: left to Parsl; only ``None`` is accepted (htex_ref resolves
        futures among the arguments, nested in lists, tuples and dicts).
    std_autopath : Any
        Parsl's automatic stdout/stderr names: left to Parsl; only ``None`` is accepted.
    usage_tracking : int
        Parsl's usage tracking: htex_ref sends nothing; only ``0`` is accepted.
    project_name : str | None
        For Parsl's usage tracking: only ``None`` is accepted.
    """

    def __init__(self, executors: Sequence[HighThroughputExecutor] | None = None, retries: int = 0,
                 retry_handler: Callable[[BaseException, dict[str, Any]], float] | None = None,
                 join_threads: int = 16, internal_tasks_max_threads: int | None = None, exit_mode: str = "wait",
                 strategy: str | None = "simple", strategy_period: float = 5.0, max_idletime: float = 120.0,
                 run_dir: str = "runinfo", initialize_logging: bool = True, garbage_collect: bool = True,
                 app_cache: bool = False, checkpoint_mode: str | None = None, checkpoint_files: Any = None,
                 checkpoint_period: str | None = None, memoizer: Any = None, monitoring: Any = None,
                 dependency_resolver: Any = None, std_autopath: Any = None, usage_tracking: int = 0,
                 project_name: str | None = None) -> None:
        for name, value in (("app_cache", app_cache), ("checkpoint_mode", checkpoint_mode),
                            ("checkpoint_files", checkpoint_files), ("checkpoint_period", checkpoint_period),
                            ("memoizer", memoizer), ("monitoring", monitoring),
                            ("dependency_resolver", dependency_resolver), ("std_autopath", std_autopath),
                            ("usage_tracking", usage_tracking), ("project_name", project_name)):
            _refused(name, value)
        if executors is None:
            executors = [_local_executor()]
        if isinstance(executors, HighThroughputExecutor) or not isinstance(executors, Sequence) or not executors:
            raise TypeError(f"executors must be a non-empty list of HighThroughputExecutor, got {executors!r}")
        for ex in executors:
            if not isinstance(ex, HighThroughputExecutor):
                raise TypeError(f"executors must hold HighThroughputExecutor objects, got {type(ex).__name__}")
        labels = [ex.label for ex in executors]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"executors must have distinct labels; repeated: {dupes}")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        if retry_handler is not None and not callable(retry_handler):
            raise TypeError(f"retry_handler must be None or a callable (exception, task_record), got {retry_handler!r}")
        if internal_tasks_max_threads is not None:
            if join_threads != 16:
                raise ValueError("give join_threads or internal_tasks_max_threads (Parsl's name for it), not both")
            if (not isinstance(internal_tasks_max_threads, int) or isinstance(internal_tasks_max_threads, bool)
                    or internal_tasks_max_threads < 1):
                raise ValueError(f"internal_tasks_max_threads must be an int >= 1, got {internal_tasks_max_threads!r}")
            join_threads = internal_tasks_max_threads
        if not isinstance(join_threads, int) or isinstance(join_threads, bool) or join_threads < 1:
            raise ValueError(f"join_threads must be an int >= 1, got {join_threads!r}")
        if exit_mode not in EXIT_MODES:
            raise ValueError(f"exit_mode must be one of {list(EXIT_MODES)}, got {exit_mode!r}")
        if not isinstance(run_dir, str | os.PathLike) or not os.fspath(run_dir):
            raise TypeError(f"run_dir must be a non-empty path, got {run_dir!r}")
        for name, flag in (("initialize_logging", initialize_logging), ("garbage_collect", garbage_collect)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        self.executors = [_with_scaling(ex, {"strategy": "none" if strategy is None else strategy,
                                             "strategy_period": strategy_period, "max_idletime": max_idletime})
                          for ex in executors]
        self.retries = retries
        self.retry_handler = retry_handler
        self.join_threads = join_threads
        self.exit_mode = exit_mode
        self.strategy = "none" if strategy is None else strategy
        self.strategy_period = self.executors[0].settings.strategy_period
        self.max_idletime = self.executors[0].settings.max_idletime
        self.run_dir = os.fspath(run_dir)
        self.initialize_logging = initialize_logging
        self.garbage_collect = garbage_collect

    def __repr__(self) -> str:
        return (f"Config(executors={self.executors!r}, retries={self.retries}, join_threads={self.join_threads}, "
                f"exit_mode={self.exit_mode!r}, strategy={self.strategy!r}, run_dir={self.run_dir!r})")


#: The Config's own defaults of its scaling settings.
CONFIG_SCALING_DEFAULTS = {"strategy": "simple", "strategy_period": 5.0, "max_idletime": 120.0}


def _with_scaling(ex: HighThroughputExecutor, scaling: dict[str, Any]) -> HighThroughputExecutor:
    """``ex`` with the Config's scaling settings. A setting given in one place only (not at its default)
    applies; one given differently in both places is refused, since they contradict each other."""
    defaults = {f.name: f.default for f in dataclasses.fields(ExecutorSettings)}
    for key, value in list(scaling.items()):
        mine = getattr(ex.settings, key)
        if mine == defaults[key] or mine == value:
            continue
        if value == CONFIG_SCALING_DEFAULTS[key]:
            scaling[key] = mine  # only the executor says something
            continue
        raise ValueError(f"executor {ex.label} has {key}={mine!r} but the Config has {key}={value!r}; "
                         f"set {key} in one place (Parsl keeps it in the Config)")
    try:
        ex.settings = dataclasses.replace(ex.settings, **scaling)
    except ValueError as e:
        raise ValueError(f"Config: {e}") from None
    return ex


def machine_workers() -> int:
    """The hardware threads this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _local_executor(**options: Any) -> HighThroughputExecutor:
    settings: dict[str, Any] = {
        "label": LOCAL_LABEL,
        # Workers run on this machine, so nothing needs to listen beyond loopback. Encryption stays on:
        # other users of a shared login node can reach its loopback too.
        "address": "127.0.0.1",
        "max_workers_per_node": machine_workers(),
    }
    settings.update(options)
    if "provider" not in settings:
        settings["provider"] = LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1)
    return HighThroughputExecutor(**settings)


def local_config(**executor_options: Any) -> Config:
    """The default configuration: one ``HighThroughputExecutor`` labelled ``htex_local`` with one
    ``LocalProvider`` block of one worker per hardware thread, listening on 127.0.0.1 only.

    Keyword arguments replace the executor's settings (``run_dir=``, ``max_workers_per_node=``, ...).
    """
    return Config(executors=[_local_executor(**executor_options)])


class Session:
    """A loaded configuration: started executors, join threads and the apps not yet resolved."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.executors: dict[str, HighThroughputExecutor] = {ex.label: ex for ex in config.executors}
        self.closed = False
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._outstanding: set[AppFuture] = set()
        self._ids = itertools.count()
        self._rng = random.Random()
        self._join_pool: concurrent.futures.ThreadPoolExecutor | None = None
        #: This run's directory (``{config.run_dir}/NNN``) and the log handler writing into it, if any.
        self.run_dir = ""
        self.log_handler: logging.Handler | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "loaded"
        return f"<Session {state} executors={list(self.executors)} outstanding={len(self._outstanding)}>"

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if self.config.exit_mode != "skip":
            clear(wait=exc_type is None and self.config.exit_mode == "wait", session=self)

    @property
    def retry_handler(self) -> Callable[[BaseException, dict[str, Any]], float] | None:
        return self.config.retry_handler

    # ------------------------------------------------------------------------ used by the apps

    def new_future(self, app_name: str) -> AppFuture:
        fut = AppFuture(app_name, next(self._ids))
        with self._lock:
            if self.closed:
                raise NoConfigLoaded(f"app {app_name} was called after its configuration was closed")
            self._outstanding.add(fut)
        fut.add_done_callback(self._resolved)
        return fut

    def _resolved(self, fut: Future[Any]) -> None:
        with self._lock:
            self._outstanding.discard(fut)
            if not self._outstanding:
                self._idle.notify_all()

    def choose_executor(self, labels: tuple[str, ...] | None, app_name: str) -> HighThroughputExecutor:
        """An executor for one call: any loaded one (at random, as Parsl) or one of ``labels``."""
        if labels is None:
            names = list(self.executors)
        else:
            names = [x for x in labels if x in self.executors]
            if len(names) != len(labels):
                unknown = sorted(set(labels) - set(self.executors))
                raise ValueError(f"app {app_name} names executors {unknown} that the loaded configuration "
                                 f"does not have; its executors are {sorted(self.executors)}")
        return self.executors[names[0] if len(names) == 1 else self._rng.choice(names)]

    def join_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._join_pool is None:
                self._join_pool = concurrent.futures.ThreadPoolExecutor(
                    self.config.join_threads, thread_name_prefix="htex-join")
            return self._join_pool

    @property
    def retries(self) -> int:
        return self.config.retries

    def closed_error(self, name: str) -> ExecutorShutdown:
        return ExecutorShutdown(f"{name} did not finish: its configuration was closed first "
                                "(htex_ref.clear(), or the end of its `with htex_ref.load()` block)")

    # ---------------------------------------------------------------------------- for users

    @property
    def outstanding(self) -> list[AppFuture]:
        """Apps launched in this session that have not resolved yet."""
        with self._lock:
            return list(self._outstanding)

    def wait_for_current_tasks(self, timeout: float | None = None) -> bool:
        """Wait until every app launched so far (and every app those launch) has resolved."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._outstanding, timeout)

    def cleanup(self, wait: bool = False) -> None:
        """Stop this session (``wait``: first let every outstanding app finish). Use ``htex_ref.clear``."""
        clear(wait=wait, session=self)

    def _close(self, wait: bool) -> None:
        if wait and not self.closed:
            self.wait_for_current_tasks()
        with self._lock:
            if self.closed:
                return
            self.closed = True
            pending = list(self._outstanding)
        # Apps still waiting for dependencies would otherwise wait for futures that will never come.
        for fut in pending:
            if not fut.running() and not fut.done():
                _fail(fut, self.closed_error(fut.name))
        for ex in self.executors.values():
            try:
                ex.shutdown(wait=False)
            except Exception:
                logger.exception("Failed to shut down executor %s", ex.label)
        if self._join_pool is not None:
            self._join_pool.shutdown(wait=False, cancel_futures=True)
        for fut in self.outstanding:
            _fail(fut, self.closed_error(fut.name))
        if self.log_handler is not None:
            logging.getLogger("htex_ref").removeHandler(self.log_handler)
            self.log_handler.close()


def _fail(fut: AppFuture, exc: BaseException) -> None:
    try:
        fut.set_exception(exc)
    except concurrent.futures.InvalidStateError:
        pass


# Loading and clearing are serialized by this lock; the loaded session itself is registered in
# htex_ref.apps (``current_session``), where app calls find it.
_current: Session | None = None
_current_lock = threading.RLock()


def load(config: Config | None = None) -> Session:
    """Start ``config``'s executors (``None``: ``local_config()``) and make it the configuration apps use.

    Returns the ``Session``; use it in a ``with`` block, or end it with ``htex_ref.clear()``.
    """
    global _current
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"config must be an htex_ref Config or None, got {type(config).__name__}")
    with _current_lock:
        if _current is not None:
            raise RuntimeError(
                f"a configuration is already loaded (executors {sorted(_current.executors)}); leave its "
                "`with htex_ref.load()` block or call htex_ref.clear() before loading another")
        if config is None:
            config = local_config()
        session = Session(config)
        session.run_dir = make_run_dir(config.run_dir)
        if config.initialize_logging:
            session.log_handler = _log_to(os.path.join(session.run_dir, "htex_ref.log"))
        started: list[HighThroughputExecutor] = []
        try:
            for ex in config.executors:
                if ex.settings.run_dir is None:
                    ex.run_dir = session.run_dir  # as Parsl's DataFlowKernel gives its executors the run's
                ex.start()
                started.append(ex)
        except BaseException:
            for ex in started:
                try:
                    ex.shutdown(wait=False)
                except Exception:
                    logger.exception("Failed to shut down executor %s", ex.label)
            if session.log_handler is not None:
                # The failed load leaves nothing behind, its log handler included.
                logging.getLogger("htex_ref").removeHandler(session.log_handler)
                session.log_handler.close()
            raise
        _current = session
        set_current_session(_current)
        return _current


def make_run_dir(root: str) -> str:
    """``{root}/NNN``, one more than the highest number there (``000`` first), as Parsl numbers its runs."""
    os.makedirs(root, exist_ok=True)
    numbers = [int(name) for name in os.listdir(root) if name.isdigit()]
    for n in itertools.count(max(numbers, default=-1) + 1):
        path = os.path.join(root, f"{n:03d}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue  # another process took it
        return os.path.abspath(path)
    raise AssertionError("unreachable")


class _LogHandlers(logging.Handler):
    """The handlers ``initialize_logging`` adds: the run's log file (INFO and up) and, unless the program
    configured logging itself, warnings and errors on stderr as Python shows them without configuration."""

    def __init__(self, path: str) -> None:
        super().__init__(logging.INFO)
        self.file = logging.FileHandler(path)
        self.file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(threadName)s %(levelname)s: %(message)s"))
        self.stderr = None if logging.getLogger().handlers else logging.StreamHandler()

    def emit(self, record: logging.LogRecord) -> None:
        self.file.handle(record)
        if self.stderr is not None and record.levelno >= logging.WARNING:
            self.stderr.handle(record)

    def close(self) -> None:
        self.file.close()
        super().close()


def _log_to(path: str) -> logging.Handler:
    handler = _LogHandlers(path)
    logger_ = logging.getLogger("htex_ref")
    logger_.addHandler(handler)
    if logger_.getEffectiveLevel() > logging.INFO:
        logger_.setLevel(logging.INFO)
    return handler


def clear(wait: bool = False, session: Session | None = None) -> None:
    """Close the loaded configuration (if any): fail apps that have not finished (after waiting for them
    when ``wait``) and stop its executors. Another configuration can be loaded afterwards."""
    global _current
    with _current_lock:
        target = _current if session is None else session
        if target is None:
            return
    # Not under the lock: waiting can take long, and a join body may call current_session meanwhile.
    target._close(wait)
    with _current_lock:
        if _current is target:
            _current = None
            set_current_session(None)


__all__ = ["Config", "Session", "clear", "current_session", "load", "local_config"]


@atexit.register
def _close_at_exit() -> None:
    # Registered after the executor module's own handler, so it runs first: it fails apps still
    # waiting for dependencies before the executors are stopped.
    session = _current
    if session is not None and not session.closed:
        logger.warning("Python is exiting with a configuration still loaded; closing it (use "
                       "`with htex_ref.load():` or call htex_ref.clear())")
        clear(wait=False)
