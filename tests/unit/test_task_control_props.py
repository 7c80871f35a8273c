"""Property tests of the manager core's task-control timers: random interleavings of task arrivals,
results, worker deaths, time, cancels and memory samples, driven against a model of worker processes
that obeys the core's instructions (a signalled worker dies some time later; a task may finish first).

Invariants: every task ends in exactly one result; no time limit or stop fires for a task that already
finished; every stopped worker is replaced; a cancel that races a finish gives one outcome."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from htex_ref.core.manager import (
    CancelTasks,
    ManagerState,
    PoolTask,
    RunTask,
    SendResults,
    SignalWorker,
    StartWorker,
    TasksArrived,
    WorkerExited,
    WorkerMemory,
    WorkerReady,
    WorkerResult,
)
from htex_ref.protocol import Outcome

BIG = 1e9


@dataclass
class Proc:
    """One worker process as the model sees it."""

    alive: bool = True
    ready: bool = False
    inbox: list[int] = field(default_factory=list)  # tasks written to it, in order; [0] is running
    signalled: int | None = None  # the first signal that will end it


class Driver:
    def __init__(self, workers: int, kill_grace: float) -> None:
        self.now = 0.0
        self.m = ManagerState(workers, BIG, BIG, 0.0, kill_grace=kill_grace, memory_limit=1000,
                              result_batch_delay=0.0)
        self.procs = {r: Proc() for r in range(workers)}
        self.results: dict[int, list[Outcome]] = {}
        self.finished: set[int] = set()  # tasks whose worker returned a result the core accepted
        self.stops: list[int] = []  # ranks signalled while alive, in order
        self.replaced: list[int] = []  # ranks restarted after a stop
        self.next_id = 1
        self.submitted: list[int] = []
        self.walltimes: dict[int, float | None] = {}
        self.cancelled: set[int] = set()
        self.over_memory = False

    def feed(self, *events: Any) -> None:
        for ins in self.m.handle(*events, now=self.now):
            if isinstance(ins, RunTask):
                proc = self.procs[ins.rank]
                assert proc.alive and proc.ready, "a task went to a worker that cannot take it"
                assert proc.signalled is None, "a task went to a worker being stopped"
                proc.inbox.append(ins.task.task_id)
            elif isinstance(ins, SendResults):
                for tid, outcome, _, _ in ins.results:
                    self.results.setdefault(tid, []).append(outcome)
                    if outcome is Outcome.OK:
                        self.finished.add(tid)
                    else:
                        assert tid not in self.finished, f"task {tid} finished, then got {outcome.name}"
            elif isinstance(ins, SignalWorker):
                proc = self.procs[ins.rank]
                if proc.alive and proc.signalled is None:
                    proc.signalled = ins.signum
                    if ins.signum == signal.SIGTERM or proc.inbox:
                        self.stops.append(ins.rank)
            elif isinstance(ins, StartWorker):
                old = self.procs[ins.rank]
                assert not old.alive, "a slot was restarted while its worker lived"
                if old.signalled is not None:
                    self.replaced.append(ins.rank)
                self.procs[ins.rank] = Proc()

    # operations -----------------------------------------------------------------------------------

    def submit(self, walltime: float | None) -> None:
        tid = self.next_id
        self.next_id += 1
        self.submitted.append(tid)
        self.walltimes[tid] = walltime
        self.feed(TasksArrived([PoolTask(tid, (b"h", b"f", b"a"), walltime=walltime)]))

    def ready(self, rank: int) -> None:
        proc = self.procs[rank]
        if proc.alive and not proc.ready:
            proc.ready = True
            self.feed(WorkerReady(rank))

    def finish(self, rank: int) -> None:
        proc = self.procs[rank]
        if proc.alive and proc.inbox:
            tid = proc.inbox.pop(0)
            self.feed(WorkerResult(rank, tid, Outcome.OK, b"", 0.001))

    def die(self, rank: int, code: int) -> None:
        proc = self.procs[rank]
        if proc.alive and proc.ready:
            proc.alive = False
            self.feed(WorkerExited(rank, code))

    def obey(self, rank: int) -> None:
        """A signalled worker dies of its signal."""
        proc = self.procs[rank]
        if proc.alive and proc.signalled is not None:
            proc.alive = False
            self.feed(WorkerExited(rank, -proc.signalled))

    def advance(self, dt: float) -> None:
        self.now += dt
        self.feed()

    def cancel(self, picks: list[int], kill: bool) -> None:
        ids = tuple(self.submitted[p % len(self.submitted)] for p in picks) if self.submitted else ()
        self.cancelled.update(ids)
        self.feed(CancelTasks(ids, kill))

    def memory(self, rank: int, rss: int) -> None:
        self.over_memory |= rss > 1000
        self.feed(WorkerMemory(rank, rss))

    def drain(self) -> None:
        """Let everything settle: workers obey signals, start, and finish what they hold."""
        for round_ in range(10 * (len(self.submitted) + len(self.procs)) + 20):
            for rank in self.procs:
                # Alternate rounds let a signalled worker's task finish before the worker dies (the race).
                if round_ % 2:
                    self.finish(rank)
                self.obey(rank)
                self.ready(rank)
                self.finish(rank)
            self.advance(0.5)
            if len(self.results) == len(self.submitted) and not any(p.signalled and p.alive
                                                                     for p in self.procs.values()):
                return


ranks = st.integers(0, 3)
operation = st.one_of(
    st.tuples(st.just("submit"), st.one_of(st.none(), st.floats(0.1, 5.0))),
    st.tuples(st.just("submit"), st.floats(0.1, 2.0)),
    st.tuples(st.just("ready"), ranks),
    st.tuples(st.just("ready"), ranks),
    st.tuples(st.just("finish"), ranks),
    st.tuples(st.just("finish"), ranks),
    st.tuples(st.just("advance"), st.floats(0.0, 3.0)),
    st.tuples(st.just("die"), st.integers(0, 3), st.sampled_from([1, -9, -15])),
    st.tuples(st.just("obey"), st.integers(0, 3)),
    st.tuples(st.just("advance"), st.floats(0.0, 3.0)),
    st.tuples(st.just("cancel"), st.lists(st.integers(0, 50), max_size=3), st.booleans()),
    st.tuples(st.just("memory"), st.integers(0, 3), st.integers(0, 2000)),
)


@settings(max_examples=300, deadline=None)
@given(workers=st.integers(1, 4), grace=st.sampled_from([0.0, 0.5, 2.0]),
       ops=st.lists(operation, min_size=10, max_size=80))
def test_task_control_invariants(workers: int, grace: float, ops: list[tuple[Any, ...]]) -> None:
    d = Driver(workers, grace)
    for op in ops:
        name, *args = op
        if name in ("ready", "finish", "die", "obey", "memory"):
            args[0] %= workers
        getattr(d, name)(*args)
    d.drain()
    # Exactly one result per task (the feed already checked nothing followed a finish).
    assert sorted(d.results) == d.submitted
    assert all(len(outcomes) == 1 for outcomes in d.results.values()), d.results
    # Every worker stopped while it lived was replaced.
    assert sorted(d.replaced) == sorted(d.stops)
    # Each stop has its cause: a time limit, a cancel, a sample over the limit.
    for tid, [outcome] in d.results.items():
        assert outcome is not Outcome.TIMEOUT or d.walltimes[tid] is not None
        assert outcome is not Outcome.CANCELLED or tid in d.cancelled
        assert outcome is not Outcome.MEMORY_EXCEEDED or d.over_memory
    assert d.m.busy == 0 and d.m.held == 0
