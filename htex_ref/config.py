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
import itertools
import logging
import os
import random
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from htex_ref.apps import AppFuture, NoConfigLoaded, current_session, set_current_session
from htex_ref.errors import ExecutorShutdown
from htex_ref.executor import HighThroughputExecutor
from htex_ref.providers.local import LocalProvider

logger = logging.getLogger(__name__)

EXIT_MODES = ("wait", "cleanup")

#: The label of the local default configuration's executor.
LOCAL_LABEL = "htex_local"


class Config:
    """What ``load`` starts: executors (each with a unique label) and workflow-wide settings.

    Bad values raise ``ValueError`` or ``TypeError`` here, naming the parameter.

    Parameters
    ----------
    executors : Sequence[HighThroughputExecutor] | None
        The executors to start, not yet started, with distinct labels. ``None``: the local default, one
        executor labelled ``htex_local`` with one block on this machine (see ``local_config``).
    retries : int
        How many times a failed app call is run again, for apps that do not set their own ``retries``.
        A call that failed because one of its dependencies failed is not retried.
    join_threads : int
        Threads in this process that run join-app bodies. A body that blocks on ``.result()`` holds one
        of them while it waits; a body that returns futures holds none.
    exit_mode : str
        ``"wait"``: leaving a ``with htex_ref.load(...)`` block normally waits for every app launched in
        it. ``"cleanup"``: stop at once; unfinished apps fail with ``ExecutorShutdown``. After an
        exception in the block it never waits.
    """

    def __init__(self, executors: Sequence[HighThroughputExecutor] | None = None, retries: int = 0,
                 join_threads: int = 16, exit_mode: str = "wait") -> None:
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
        if not isinstance(join_threads, int) or isinstance(join_threads, bool) or join_threads < 1:
            raise ValueError(f"join_threads must be an int >= 1, got {join_threads!r}")
        if exit_mode not in EXIT_MODES:
            raise ValueError(f"exit_mode must be one of {list(EXIT_MODES)}, got {exit_mode!r}")
        self.executors = list(executors)
        self.retries = retries
        self.join_threads = join_threads
        self.exit_mode = exit_mode

    def __repr__(self) -> str:
        return (f"Config(executors={self.executors!r}, retries={self.retries}, join_threads={self.join_threads}, "
                f"exit_mode={self.exit_mode!r})")


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

    def __repr__(self) -> str:
        state = "closed" if self.closed else "loaded"
        return f"<Session {state} executors={list(self.executors)} outstanding={len(self._outstanding)}>"

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        clear(wait=exc_type is None and self.config.exit_mode == "wait", session=self)

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
        started: list[HighThroughputExecutor] = []
        try:
            for ex in config.executors:
                ex.start()
                started.append(ex)
        except BaseException:
            for ex in started:
                try:
                    ex.shutdown(wait=False)
                except Exception:
                    logger.exception("Failed to shut down executor %s", ex.label)
            raise
        _current = Session(config)
        set_current_session(_current)
        return _current


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
