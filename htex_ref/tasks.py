"""``TaskTable``: the futures of the executor's outstanding tasks.

The table owns task ids, the future of every task submitted and not yet resolved, backpressure
(``max_outstanding``) and the executor's failure: once the table is failed or closed, every outstanding
future has been resolved with the reason and every later ``add`` raises it.

Two kinds of thread use it: submitters ``add`` (admission, id, insertion and the send to the
interchange happen under the table's lock, so that a failure or a shutdown either sees a task or refuses
it, and several producers never overshoot ``max_outstanding`` together), and the executor's link thread
``resolve``s results. ``resolve`` pops futures without the lock: a dict pop is atomic, and the one task
it could race with, an ``add`` of the same id, cannot happen (a result comes only for an id already added).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from htex_ref.core.mpi import MPI_SPEC_KEYS, parse_mpi_request
from htex_ref.errors import BadStateException, DeserializationError, ExecutorShutdown, InvalidResourceSpecification
from htex_ref.protocol import MAX_TASK_SPEC, ResultTuple, dump_json
from htex_ref.serialize import decode_outcome
from htex_ref.settings import is_number

#: Resource-specification keys this executor supports.
SUPPORTED_SPEC_KEYS = frozenset({"priority"})


class HtexFuture(Future[Any]):
    """A Future that knows its executor task id."""

    def __init__(self, task_id: int) -> None:
        super().__init__()
        self.task_id = task_id

    @property
    def parsl_executor_task_id(self) -> int:
        return self.task_id


def read_spec(spec: Any, *, mpi_max_nodes: float | None = None) -> tuple[float, dict[str, Any] | None]:
    """Check a resource specification: the task's priority (inf when none) and, for an MPI task, its
    checked MPI request (None otherwise). ``mpi_max_nodes`` is None outside MPI mode, where MPI keys are
    refused; in MPI mode it is the most nodes a task may ask for (inf: no bound known here)."""
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

    def __init__(self, label: str, max_outstanding: int | None) -> None:
        self.label = label
        self.max_outstanding = max_outstanding
        self.futures: dict[int, HtexFuture] = {}
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
            fut = HtexFuture(task_id)
            self.futures[task_id] = fut
            try:
                send(task_id)
            except BaseException:
                self.futures.pop(task_id, None)
                raise
        return fut

    def resolve(self, results: Iterable[ResultTuple]) -> None:
        """Resolve the futures of ``results`` (the link thread's job); unknown ids are ignored."""
        futures = self.futures
        for task_id, outcome, payload, _ in results:
            fut = futures.pop(task_id, None)
            if fut is None or fut.done():
                continue
            try:
                ok, value = decode_outcome(outcome, payload)
            except BaseException as e:  # never leave a popped future unresolved
                ok, value = False, DeserializationError(
                    f"result of task {task_id} could not be decoded: {type(e).__name__}: {e}")
            _settle(fut, ok, value, self.translate)
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
        for fut in pending:
            if not fut.done():
                _settle(fut, False, ExecutorShutdown(
                    f"executor {self.label} was shut down before task {fut.task_id} finished"), self.translate)
        self.wake_submitters()

    def wake_submitters(self) -> None:
        if self._room_waiters:
            with self._room:
                self._room.notify_all()
