"""``TaskTable``: the futures of the executor's outstanding tasks.

The table owns task ids, the future of every task submitted and not yet resolved, backpressure
(``max_outstanding``) and the executor's failure: once the table is failed or closed, every outstanding
future has been resolved with the reason and every later ``add`` raises it.

Two kinds of thread use it: submitters ``add`` (admission, id, insertion and the send to the
interchange happen under the table's lock, so that a failure or a shutdown either sees a task or refuses
it, and several producers never overshoot ``max_outstanding`` together), and the executor's link thread
``resolve``s results. ``resolve`` pops futures without the lock: a dict pop is atomic, and the one task
it could race with, an ``add`` of the same id, cannot happen (a result comes only for an id already added).

With ``max_retries_on_system_failure`` the table keeps each outstanding task's frames, and ``resolve``
sends a task lost to the infrastructure again (``htex_ref.core.retry`` decides) instead of failing its
future; each such attempt is recorded on the future (``attempts``) and in the final error. A future
cancelled by its caller leaves the table at once (``forget``), and the interchange is told.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from htex_ref.core.manager import check_walltime
from htex_ref.core.mpi import MPI_SPEC_KEYS, parse_mpi_request
from htex_ref.core.retry import SYSTEM_FAILURES, Attempt, Decision, RetryPolicy
from htex_ref.errors import (
    BadStateException,
    CrashLimitExceeded,
    DeserializationError,
    ExecutorShutdown,
    InvalidResourceSpecification,
    ManagerLost,
    WorkerLost,
)
from htex_ref.protocol import MAX_TASK_SPEC, Outcome, ResultTuple, dump_json
from htex_ref.serialize import decode_outcome
from htex_ref.settings import is_number

#: Resource-specification keys this executor supports.
SUPPORTED_SPEC_KEYS = frozenset({"priority", "walltime"})


class HtexFuture(Future[Any]):
    """A Future that knows its executor task id, and the runs of its task lost to the infrastructure
    (``attempts``; retried with ``max_retries_on_system_failure``). ``cancel()`` also reaches the
    interchange: a queued task is dropped, and a running one stopped with ``cancel_running``."""

    #: The runs of this task lost to the infrastructure, oldest first (a class default until there is one:
    #: a future costs nothing for it).
    attempts: tuple[Attempt, ...] = ()

    def __init__(self, task_id: int, table: TaskTable | None = None) -> None:
        super().__init__()
        self.task_id = task_id
        self._table = table

    @property
    def parsl_executor_task_id(self) -> int:
        return self.task_id

    def cancel(self) -> bool:
        """Cancel the future unless it is done; then the executor drops or stops its task (see the
        executor's ``cancel_running``). Returns True when the future is now cancelled."""
        if not super().cancel():
            return False
        if self._table is not None:
            self._table.future_cancelled(self.task_id)
        return True


def read_spec(spec: Any, *, mpi_max_nodes: float | None = None) -> tuple[float, dict[str, Any] | None]:
    """Check a resource specification: the task's priority (inf when none) and what its task header
    carries to the worker pool (None for most tasks): the ``walltime`` and, for an MPI task, its checked
    MPI request. ``mpi_max_nodes`` is None outside MPI mode, where MPI keys are refused; in MPI mode it
    is the most nodes a task may ask for (inf: no bound known here)."""
    if spec is None:
        return math.inf, None
    if not isinstance(spec, dict):
        raise InvalidResourceSpecification(set(), f"resource_specification must be a dict, got {type(spec).__name__}")
    supported = SUPPORTED_SPEC_KEYS if mpi_max_nodes is None else SUPPORTED_SPEC_KEYS | MPI_SPEC_KEYS
    invalid = set(spec) - supported
    if invalid:
        if mpi_max_nodes is None and not invalid - MPI_SPEC_KEYS:
            raise InvalidResourceSpecification(
                invalid, f"resource_specification keys {sorted(invalid)} are for MPI tasks, and this executor is "
                         "not in MPI mode: set enable_mpi_mode=True (with a SimpleLauncher) or use MPIExecutor")
        raise InvalidResourceSpecification(
            invalid, f"resource_specification keys {sorted(invalid)} are not supported by "
                     f"HighThroughputExecutor; supported: {sorted(supported)}"
        )
    mpi = None
    if mpi_max_nodes is not None:
        request = parse_mpi_request(spec, nodes_per_block=mpi_max_nodes)
        mpi = None if request is None else request.as_spec()
        if mpi is not None and len(dump_json(mpi)) > MAX_TASK_SPEC:
            # The interchange drops a task header whose specification is longer: refuse it here, where the
            # caller hears of it, rather than send a task that would never come back.
            raise InvalidResourceSpecification(
                {"launcher_options"}, f"launcher_options is too long ({len(mpi['launcher_options'])} characters; "
                                      f"the specification must fit in {MAX_TASK_SPEC} bytes as JSON)")
    if "walltime" in spec:
        mpi = dict(mpi or {}, walltime=check_walltime(spec["walltime"]))
    if "priority" not in spec:
        return math.inf, mpi
    priority = spec["priority"]
    if not is_number(priority):
        raise InvalidResourceSpecification({"priority"}, f"priority must be a finite real number, got {priority!r}")
    return float(priority), mpi


def priority_of(spec: Any) -> float:
    """Check a resource specification outside MPI mode; return the task's priority (inf when none)."""
    return read_spec(spec)[0]


def _settle(fut: Future[Any], ok: bool, value: Any,
            translate: Callable[[BaseException], BaseException] | None = None) -> None:
    if not ok and translate is not None:
        value = translate(value)
    try:
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled by the caller meanwhile


class TaskTable:
    """See the module docstring."""

    def __init__(self, label: str, max_outstanding: int | None, retry: RetryPolicy | None = None) -> None:
        self.label = label
        self.retry = retry or RetryPolicy()
        #: Each outstanding task's message to the interchange, kept only when tasks may be retried.
        self.frames: dict[int, list[Any]] = {}
        #: Writes a task's message to the interchange again (set by the executor with retries on).
        self.resend: Callable[[list[Any]], None] | None = None
        #: Called with a task id when its future is cancelled by the caller (the executor tells the interchange).
        self.on_cancel: Callable[[int], None] | None = None
        #: The monitoring store's ``put`` (None: not monitored): resolved tasks and lost attempts go there.
        self.monitor: Callable[[tuple[Any, ...]], None] | None = None
        self.max_outstanding = max_outstanding
        self.futures: dict[int, HtexFuture] = {}
        #: Results that arrived for tasks no longer outstanding (already resolved, cancelled or failed):
        #: dropped, the first result having won. Only a restarted interchange or a cancel makes them.
        self.late_results = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        #: Submitters waiting for room under ``max_outstanding``; ``resolve`` wakes them.
        self._room = threading.Condition(threading.Lock())
        self._room_waiters = 0
        self.opened = False
        #: Why the executor failed (its bad state), once it has.
        self.failure: BaseException | None = None
        self.closed = False
        #: Maps each exception a future fails with (the Parsl adapter gives Parsl's classes); None: as is.
        self.translate: Callable[[BaseException], BaseException] | None = None

    def __len__(self) -> int:
        return len(self.futures)

    def open(self) -> None:
        self.opened = True

    def add(self, send: Callable[[int], None], may_wait: bool = True) -> HtexFuture:
        """Admit a task (waiting for room under ``max_outstanding`` when ``may_wait``), give it an id and
        a future, and hand the id to ``send``, which writes the task to the interchange."""
        limit = self.max_outstanding
        if limit is None or not may_wait:
            return self._admit(send)
        # Waiting and admitting under one lock admits one producer at a time, so that several producer
        # threads never overshoot the limit together.
        with self._room:
            self._room_waiters += 1
            try:
                # ``resolve`` pops finished tasks before it looks for waiters, and a waiter counts itself
                # before it looks at the table: one of the two always sees the other. The time-out only
                # bounds the wait should that reasoning ever be wrong.
                while len(self.futures) >= limit and self.failure is None and not self.closed and self.opened:
                    self._room.wait(1.0)
            finally:
                self._room_waiters -= 1
            return self._admit(send)

    def _admit(self, send: Callable[[int], None]) -> HtexFuture:
        with self._lock:
            if self.failure is not None:
                raise BadStateException(self.label, self.failure)
            if self.closed:
                raise ExecutorShutdown(f"executor {self.label} has been shut down")
            if not self.opened:
                raise RuntimeError(f"executor {self.label} is not started; call start() or use it in a with-block")
            task_id = next(self._ids)
            fut = HtexFuture(task_id, self)
            self.futures[task_id] = fut
            try:
                send(task_id)
            except BaseException:
                self.futures.pop(task_id, None)
                raise
        return fut

    @contextlib.contextmanager
    def frozen(self) -> Iterator[list[list[Any]]]:
        """Hold the table's lock (no task is added, cancelled or retried meanwhile) and give the messages
        of every outstanding task, in id order: what a restarted interchange is sent."""
        with self._lock:
            yield [self.frames[tid] for tid in sorted(self.futures) if tid in self.frames]

    def requeued_after_restart(self, task_ids: Iterable[int]) -> None:
        """A restarted interchange found no worker pool holding these tasks and runs them again: each may
        have run before the restart, which its future records as an attempt."""
        detail = ("the interchange was restarted and no worker pool reported holding this task, so it runs "
                  "again (it may have run before)")
        for tid in task_ids:
            fut = self.futures.get(tid)
            if fut is None or fut.done():
                continue
            fut.attempts += (Attempt(len(fut.attempts) + 1, Outcome.MANAGER_LOST, "", "interchange", detail),)
            if self.monitor is not None:
                self.monitor(("attempt", tid, len(fut.attempts), "INTERCHANGE_RESTART", "", "interchange", detail))

    def keep(self, task_id: int, frames: list[Any]) -> None:
        """Remember a task's message, to send it again should its run be lost (retries on only)."""
        self.frames[task_id] = frames

    def future_cancelled(self, task_id: int) -> None:
        """A future was cancelled by its caller: it leaves the table now (and so ``outstanding``)."""
        with self._lock:
            if self.futures.pop(task_id, None) is None:
                return
            self.frames.pop(task_id, None)
        if self.monitor is not None:
            t = time.time()
            self.monitor(("ends", t, (), (), [(task_id, t, "CANCELLED", "CancelledError", None, 0)]))
        if self.on_cancel is not None:
            self.on_cancel(task_id)
        self.wake_submitters()

    def cancel_all(self) -> list[int]:
        """Cancel every outstanding future (``shutdown(cancel_futures=True)``); returns their task ids, for
        the caller to tell the interchange in one message."""
        with self._lock:
            pending = list(self.futures.values())
            self.futures.clear()
            self.frames.clear()
        for fut in pending:
            Future.cancel(fut)  # not HtexFuture.cancel: the interchange hears of them all at once
        self._record_failed(pending, "CANCELLED", "CancelledError")
        self.wake_submitters()
        return [f.task_id for f in pending]

    def _retry(self, task_id: int, fut: HtexFuture, outcome: Outcome, payload: Any) -> bool:
        """A run of ``task_id`` was lost: send it again, or fail its future with the attempts recorded on
        the error. False only when the payload does not read as a loss (the caller resolves it as usual)."""
        _, err = decode_outcome(outcome, payload)
        if isinstance(err, WorkerLost):
            where, host, detail = f"worker {err.worker_id}", err.hostname, err.detail
        elif isinstance(err, ManagerLost):
            where, host, detail = f"manager {err.manager_id}", err.hostname, err.detail
        else:
            return False
        fut.attempts += (Attempt(len(fut.attempts) + 1, outcome, host, where, detail),)
        if self.monitor is not None:
            self.monitor(("attempt", task_id, len(fut.attempts), outcome.name, host, where, detail))
        decision = self.retry.decide(fut.attempts)
        frames = self.frames.get(task_id)
        if decision is Decision.RETRY and frames is not None and self.resend is not None:
            try:
                # Under the lock, so that a cancel of this task either comes before (and nothing is sent)
                # or sends its cancel after this.
                with self._lock:
                    if task_id in self.futures:
                        self.resend(frames)
                return True
            except Exception as e:  # the executor is shutting down: fail with the loss
                err.detail += f" (not retried: {e})"
        if decision is Decision.CRASH_LIMIT and isinstance(err, WorkerLost):
            err = CrashLimitExceeded(err.worker_id, err.hostname, err.detail, fut.attempts)
        err.attempts = tuple(fut.attempts)
        self.futures.pop(task_id, None)
        self.frames.pop(task_id, None)
        _settle(fut, False, err, self.translate)
        if self.monitor is not None:
            row = (task_id, time.time(), outcome.name, type(err).__name__, None, len(fut.attempts))
            self.monitor(("ends", row[1], (), (), [row]))
        return True

    def _record_failed(self, futures: list[HtexFuture], outcome: str, exception: str) -> None:
        if self.monitor is not None and futures:
            t = time.time()
            self.monitor(("ends", t, (), (), [(f.task_id, t, outcome, exception, None, len(f.attempts))
                                              for f in futures]))

    def resolve(self, results: Iterable[ResultTuple]) -> None:
        """Resolve the futures of ``results`` (the link thread's job); unknown ids are ignored."""
        futures = self.futures
        retry = self.retry.enabled
        monitor = self.monitor
        # Monitoring: plain successes as two lists (the cheap, common case), anything else as task_end rows.
        ok_ids: list[int] = []
        ok_times: list[float] = []
        others: list[tuple[Any, ...]] = []
        for task_id, outcome, payload, run_time in results:
            if retry:
                if outcome in SYSTEM_FAILURES:
                    held = futures.get(task_id)
                    if held is not None and not held.done() and self._retry(task_id, held, outcome, payload):
                        continue
                else:
                    self.frames.pop(task_id, None)
            fut = futures.pop(task_id, None)
            if fut is None or fut.done():
                self.late_results += 1
                continue
            try:
                ok, value = decode_outcome(outcome, payload)
            except BaseException as e:  # never leave a popped future unresolved
                ok, value = False, DeserializationError(
                    f"result of task {task_id} could not be decoded: {type(e).__name__}: {e}")
            _settle(fut, ok, value, self.translate)
            if monitor is not None:
                if ok and not fut.attempts:
                    ok_ids.append(task_id)
                    ok_times.append(run_time)
                else:
                    others.append((task_id, 0.0, outcome.name, None if ok else type(value).__name__, run_time,
                                   len(fut.attempts)))
        if monitor is not None and (ok_ids or others):
            t = time.time()
            monitor(("ends", t, ok_ids, ok_times, [(r[0], t, *r[2:]) for r in others]))
        if self._room_waiters:
            self.wake_submitters()

    def fail_all(self, exception: BaseException) -> BaseException:
        """Record ``exception`` as the executor's failure (the first one stays) and fail every outstanding
        future with ``BadStateException``; returns the recorded failure."""
        with self._lock:
            if self.failure is None:
                self.failure = exception
            pending = list(self.futures.values())
            self.futures.clear()
            self.frames.clear()
        self._record_failed(pending, "FAILED", "BadStateException")
        err = BadStateException(self.label, self.failure)
        for fut in pending:
            _settle(fut, False, err, self.translate)
        self.wake_submitters()
        return self.failure

    def fail_outstanding(self, exception: BaseException) -> int:
        """Fail every outstanding future with ``exception``; the table stays open. Returns how many."""
        with self._lock:
            pending = list(self.futures.values())
            self.futures.clear()
            self.frames.clear()
        self._record_failed(pending, "FAILED", type(exception).__name__)
        for fut in pending:
            _settle(fut, False, exception, self.translate)
        self.wake_submitters()
        return len(pending)

    def close(self) -> None:
        """Refuse new tasks and fail the outstanding ones with ``ExecutorShutdown``."""
        with self._lock:
            self.closed = True
            pending = list(self.futures.values())
            self.futures.clear()
            self.frames.clear()
        self._record_failed(pending, "FAILED", "ExecutorShutdown")
        for fut in pending:
            if not fut.done():
                _settle(fut, False, ExecutorShutdown(
                    f"executor {self.label} was shut down before task {fut.task_id} finished"), self.translate)
        self.wake_submitters()

    def wake_submitters(self) -> None:
        if self._room_waiters:
            with self._room:
                self._room.notify_all()
