"""Unit tests for the worker pool's pure state machine (htex_ref.core.manager).

Results default to a run time far above ``advance_max_task_time``, so tests about plain assignment never
see tasks handed over in advance; the tests that are about advance hand-over use short run times.
"""

from __future__ import annotations

import json
import math
import signal
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from htex_ref.core.manager import (
    Exit,
    InterchangeConnected,
    InterchangeContact,
    InterchangeDisconnected,
    ManagerState,
    PoolTask,
    Register,
    RunTask,
    SendHeartbeat,
    SendResults,
    SignalWorker,
    StartWorker,
    StopRequested,
    TasksArrived,
    WorkerExited,
    WorkerReady,
    WorkerResult,
)
from htex_ref.core.notes import Note
from htex_ref.errors import WorkerLost
from htex_ref.protocol import Outcome
from htex_ref.serialize import decode_outcome

BIG = 1e9  # a period or threshold that never fires in a test about something else
LONG = 5.0  # a run time that never allows advance hand-over
SHORT = 0.01  # one that does


class Quiet(ManagerState):
    """The manager core with its log notes kept aside (``notes``), so that tests compare actions."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.notes: list[Note] = []

    def handle(self, *events: Any, now: float) -> list[Any]:
        out = super().handle(*events, now=now)
        self.notes += [i for i in out if isinstance(i, Note)]
        return [i for i in out if not isinstance(i, Note)]


def make(workers: int = 2, *, now: float = 0.0, **kw: object) -> Quiet:
    kw.setdefault("heartbeat_period", BIG)
    kw.setdefault("heartbeat_threshold", BIG)
    return Quiet(worker_count=workers, now=now, **kw)


def tasks(*ids: int) -> TasksArrived:
    return TasksArrived([PoolTask(i, (b"h%d" % i, b"f", b"a")) for i in ids])


def done(rank: int, tid: int, run_time: float = LONG) -> WorkerResult:
    return WorkerResult(rank, tid, Outcome.OK, b"v%d" % tid, run_time)


def of_type(out: list, cls: type) -> list:
    return [i for i in out if isinstance(i, cls)]


def runs(out: list) -> list[tuple[int, int]]:
    return [(i.rank, i.task.task_id) for i in of_type(out, RunTask)]


def sent_ids(out: list) -> list[int]:
    return [r[0] for i in of_type(out, SendResults) for r in i.results]


# ------------------------------------------------------------------------------------ assignment


def test_tasks_wait_until_a_worker_is_ready():
    m = make(3)
    assert runs(m.handle(tasks(10, 11, 12, 13, 14), now=0.0)) == []
    assert m.held == 5
    assert runs(m.handle(WorkerReady(1), now=0.1)) == [(1, 10)]
    assert runs(m.handle(WorkerReady(0), WorkerReady(2), now=0.2)) == [(0, 11), (2, 12)]
    assert m.busy == 3
    assert len(m.queue) == 2
    # No worker is given a second task while busy.
    assert runs(m.handle(tasks(15), now=0.3)) == []
    out = m.handle(done(2, 12), now=0.4)
    assert runs(out) == [(2, 13)]


def test_one_task_per_worker_and_ready_workers_idle_without_tasks():
    m = make(4)
    m.handle(*[WorkerReady(r) for r in range(4)], now=0.0)
    out = m.handle(tasks(1, 2), now=1.0)
    r = runs(out)
    assert sorted(t for _, t in r) == [1, 2]
    assert len({rank for rank, _ in r}) == 2
    assert m.busy == 2


def test_duplicate_ready_does_not_double_book_a_worker():
    m = make(1)
    m.handle(WorkerReady(0), WorkerReady(0), now=0.0)
    out = m.handle(tasks(1, 2), now=1.0)
    assert runs(out) == [(0, 1)]
    assert [t.task_id for t in m.queue] == [2]


def test_ready_from_unknown_rank_is_ignored():
    m = make(1)
    assert m.handle(WorkerReady(7), tasks(1), now=0.0) == []
    assert [t.task_id for t in m.queue] == [1]


def test_result_from_a_worker_not_running_the_task_is_dropped():
    m = make(2)
    m.handle(WorkerReady(0), WorkerReady(1), tasks(1, 2, 3), now=0.0)
    busy = {w.rank: w.task_id for w in m.workers.values() if w.state == "busy"}
    assert busy == {0: 1, 1: 2}
    out = m.handle(done(0, 2), done(1, 1), done(5, 1), done(0, 99), now=1.0)
    assert sent_ids(out) == []
    assert runs(out) == []
    assert {w.rank: w.task_id for w in m.workers.values() if w.state == "busy"} == busy


# -------------------------------------------------------------------------------------- batching


def test_result_sent_at_once_when_no_task_waits():
    m = make(1, result_batch_delay=10.0)
    m.handle(WorkerReady(0), tasks(1), now=0.0)
    out = m.handle(done(0, 1), now=1.0)
    assert of_type(out, SendResults) == [SendResults([(1, Outcome.OK, b"v1", LONG)])]


def test_results_held_while_tasks_wait_until_batch_delay():
    m = make(1, result_batch_delay=0.25)
    m.handle(WorkerReady(0), tasks(1, 2, 3), now=0.0)
    out = m.handle(done(0, 1), now=1.0)
    assert runs(out) == [(0, 2)]
    assert sent_ids(out) == []  # task 3 still waits: hold the result
    assert m.next_deadline() == 1.25
    assert m.handle(now=1.125) == []
    out = m.handle(now=1.25)
    assert sent_ids(out) == [1]
    assert m.next_deadline() == BIG


def test_results_accumulate_into_one_batch():
    m = make(1, result_batch_delay=0.5)
    m.handle(WorkerReady(0), tasks(1, 2, 3, 4), now=0.0)
    assert sent_ids(m.handle(done(0, 1), now=1.0)) == []
    assert sent_ids(m.handle(done(0, 2), now=1.25)) == []
    # The delay counts from the first held result.
    assert m.next_deadline() == 1.5
    out = m.handle(now=1.5)
    sends = of_type(out, SendResults)
    assert len(sends) == 1
    assert [r[0] for r in sends[0].results] == [1, 2]


def test_results_sent_when_batch_size_reached():
    m = make(2, result_batch_delay=100.0, result_batch_size=2)
    m.handle(WorkerReady(0), WorkerReady(1), tasks(*range(10)), now=0.0)
    out = m.handle(done(0, 0), now=1.0)
    assert sent_ids(out) == []
    out = m.handle(done(1, 1), now=1.0)
    assert sent_ids(out) == [0, 1]


def test_results_flushed_when_queue_empties():
    m = make(1, result_batch_delay=100.0)
    m.handle(WorkerReady(0), tasks(1, 2), now=0.0)
    assert sent_ids(m.handle(done(0, 1), now=1.0)) == [1]  # task 2 assigned: nothing waits any more


def test_handle_at_next_deadline_flushes_held_results():
    m = make(1, result_batch_delay=0.1)
    m.handle(WorkerReady(0), tasks(1, 2, 3), now=0.0)
    assert sent_ids(m.handle(done(0, 1), now=0.7)) == []
    deadline = m.next_deadline()
    assert sent_ids(m.handle(now=deadline)) == [1]


# ------------------------------------------------------------------------------- worker deaths


def test_worker_death_while_busy_fails_its_task_once_and_restarts_slot():
    m = make(2, hostname="nodeX")
    m.handle(WorkerReady(0), WorkerReady(1), tasks(1, 2), now=0.0)
    out = m.handle(WorkerExited(0, -9), now=1.0)
    results = [r for s in of_type(out, SendResults) for r in s.results]
    assert len(results) == 1
    tid, outcome, payload, _ = results[0]
    assert tid == 1 and outcome is Outcome.WORKER_LOST
    info = json.loads(payload)
    assert info["worker"] == 0 and info["host"] == "nodeX"
    assert "-9" in info["detail"]
    okflag, exc = decode_outcome(outcome, payload)
    assert not okflag and isinstance(exc, WorkerLost)
    assert exc.hostname == "nodeX" and exc.worker_id == 0
    assert of_type(out, StartWorker) == [StartWorker(0)]
    # The dead slot gets nothing until it is ready again.
    assert runs(out) == []
    assert m.workers[0].state == "starting"
    # A late result from the dead worker is dropped; a second exit report makes no second result.
    out = m.handle(done(0, 1), now=1.5)
    assert sent_ids(out) == []
    out = m.handle(WorkerExited(0, -9), now=1.6)
    assert sent_ids(out) == []
    out = m.handle(tasks(3), WorkerReady(0), now=2.0)
    assert runs(out) == [(0, 3)]


def lost_ids(out: list) -> list[int]:
    return [r[0] for s in of_type(out, SendResults) for r in s.results if r[1] is Outcome.WORKER_LOST]


def test_sigterm_death_followed_by_the_pools_stop_is_lost_with_the_pool():
    """Slurm signals the pool and its workers together: when the worker's death is seen first, its task
    still goes out with the pool's goodbye (ManagerLost), not as a WorkerLost of its own."""
    m = make(2, term_grace=2.0)
    m.handle(WorkerReady(0), WorkerReady(1), tasks(1, 2, 3), now=0.0)
    out = m.handle(WorkerExited(0, -signal.SIGTERM), now=1.0)
    assert lost_ids(out) == [] and of_type(out, StartWorker) == [StartWorker(0)]
    assert m.next_deadline() == 3.0
    out = m.handle(WorkerExited(1, -signal.SIGTERM), StopRequested("received SIGTERM"), now=1.5)
    assert lost_ids(out) == []
    assert of_type(out, Exit)[0].unfinished == [1, 2, 3]


def test_sigterm_death_without_a_stop_is_reported_when_the_grace_ends():
    m = make(2, term_grace=2.0)
    m.handle(WorkerReady(0), WorkerReady(1), tasks(1, 2), now=0.0)
    assert lost_ids(m.handle(WorkerExited(0, -signal.SIGTERM), now=1.0)) == []
    assert lost_ids(m.handle(WorkerExited(1, -signal.SIGTERM), now=1.5)) == []
    assert lost_ids(m.handle(InterchangeContact(), now=2.9)) == []
    assert m.next_deadline() == 3.0
    out = m.handle(now=m.next_deadline())
    assert lost_ids(out) == [1]
    assert "-15" in json.loads(of_type(out, SendResults)[0].results[0][2])["detail"]
    assert m.next_deadline() == 3.5
    assert lost_ids(m.handle(now=3.5)) == [2]
    # Nothing is reported twice, and a stop afterwards lists neither.
    out = m.handle(StopRequested("later"), now=4.0)
    assert lost_ids(out) == [] and of_type(out, Exit)[0].unfinished == []


def test_other_deaths_and_a_zero_grace_are_reported_at_once():
    m = make(2, term_grace=0.0)
    m.handle(WorkerReady(0), WorkerReady(1), tasks(1, 2), now=0.0)
    assert lost_ids(m.handle(WorkerExited(0, -signal.SIGTERM), now=1.0)) == [1]
    m = make(2, term_grace=2.0)
    m.handle(WorkerReady(0), WorkerReady(1), tasks(1, 2), now=0.0)
    assert lost_ids(m.handle(WorkerExited(0, -signal.SIGKILL), now=1.0)) == [1]
    assert lost_ids(m.handle(WorkerExited(1, 0), now=1.0)) == [2]


def restart(rank: int) -> list[Any]:
    """What a worker's exit leads to when nothing else happens: its group is killed (rule 11), and the
    slot starts a new worker."""
    return [SignalWorker(rank, signal.SIGKILL), StartWorker(rank)]


def test_worker_death_while_idle_restarts_without_result():
    m = make(1)
    m.handle(WorkerReady(0), now=0.0)
    out = m.handle(WorkerExited(0, 1), now=1.0)
    assert out == restart(0)
    # The slot is no longer idle: a task waits for the restarted worker.
    assert runs(m.handle(tasks(5), now=2.0)) == []
    assert runs(m.handle(WorkerReady(0), now=3.0)) == [(0, 5)]


def test_repeated_startup_failure_exits_with_error():
    m = make(2, max_startup_failures=3)
    m.handle(tasks(1), now=0.0)
    assert m.handle(WorkerExited(1, 3), now=1.0) == restart(1)
    assert m.handle(WorkerExited(1, 3), now=2.0) == restart(1)
    out = m.handle(WorkerExited(1, 3), now=3.0)
    exits = of_type(out, Exit)
    assert len(exits) == 1
    assert exits[0].error is True
    assert "worker 1" in exits[0].reason and "3" in exits[0].reason
    assert exits[0].unfinished == [1]
    assert not of_type(out, StartWorker)
    # Nothing happens after the exit.
    assert m.handle(WorkerReady(0), WorkerExited(1, 3), now=4.0) == []


def test_ready_resets_startup_failure_count():
    m = make(1, max_startup_failures=2)
    assert m.handle(WorkerExited(0, 1), now=0.0) == restart(0)
    m.handle(WorkerReady(0), now=1.0)
    assert m.handle(WorkerExited(0, 1), now=2.0) == restart(0)  # idle death: counter was reset
    assert m.handle(WorkerExited(0, 1), now=3.0) == restart(0)
    assert of_type(m.handle(WorkerExited(0, 1), now=4.0), Exit)


# --------------------------------------------------------------------------- heartbeats, silence


def test_heartbeats_every_period():
    m = make(1, heartbeat_period=5.0, heartbeat_threshold=100.0)
    assert m.next_deadline() == 5.0
    assert m.handle(now=4.5) == []
    assert m.handle(now=5.0) == [SendHeartbeat()]
    assert m.next_deadline() == 10.0
    assert m.handle(now=9.75) == []
    assert m.handle(now=10.0) == [SendHeartbeat()]
    # Contact from the interchange does not replace our own heartbeats.
    assert m.handle(InterchangeContact(), now=15.0) == [SendHeartbeat()]


def test_interchange_silence_past_reconnect_timeout_exits():
    m = make(2, heartbeat_period=BIG, heartbeat_threshold=10.0, reconnect_timeout=30.0)
    m.handle(WorkerReady(0), tasks(1, 2, 3), now=0.0)
    assert m.next_deadline() == 30.0
    assert m.handle(InterchangeContact(), now=25.0) == []
    assert m.handle(now=30.0) == []  # contact at 25 keeps it alive
    assert m.next_deadline() == 55.0
    assert m.handle(now=54.5) == []
    out = m.handle(now=55.0)
    exits = of_type(out, Exit)
    assert len(exits) == 1 and exits[0].error
    assert "30" in exits[0].reason
    assert exits[0].unfinished == [1, 2, 3]
    assert m.handle(InterchangeContact(), now=56.0) == []


def test_stop_requested_exits_listing_unfinished():
    m = make(2)
    m.handle(WorkerReady(0), WorkerReady(1), tasks(4, 1, 9, 7), now=0.0)
    out = m.handle(StopRequested("the interchange asked this pool to stop: bye"), now=1.0)
    assert out == [Exit("the interchange asked this pool to stop: bye", False, [1, 4, 7, 9])]
    assert m.exiting


def test_stop_sends_held_results_first_and_ignores_later_events():
    m = make(1, result_batch_delay=100.0)
    m.handle(WorkerReady(0), tasks(1, 2, 3), now=0.0)
    assert sent_ids(m.handle(done(0, 1), now=1.0)) == []  # held: tasks wait
    out = m.handle(StopRequested("stop", error=True), tasks(8), done(0, 2), now=2.0)
    assert isinstance(out[0], SendResults)
    assert [r[0] for r in out[0].results] == [1]
    assert isinstance(out[-1], Exit)
    assert out[-1].error is True
    assert out[-1].unfinished == [2, 3]
    assert runs(out) == []


# ---------------------------------------------------------------------------- advance hand-over


def test_no_advance_hand_over_before_any_run_time_is_known():
    m = make(2)
    out = m.handle(WorkerReady(0), WorkerReady(1), tasks(1, 2, 3, 4), now=0.0)
    assert runs(out) == [(0, 1), (1, 2)]
    assert [t.task_id for t in m.queue] == [3, 4]
    assert all(w.next_task is None for w in m.workers.values())


def test_advance_hand_over_for_short_tasks_at_most_one_per_worker():
    m = make(2, advance_max_task_time=0.1)
    m.handle(WorkerReady(0), WorkerReady(1), tasks(*range(1, 8)), now=0.0)
    out = m.handle(done(0, 1, SHORT), now=0.01)
    # Worker 0 takes task 3 now; then, every worker being busy, each gets one task in advance.
    assert runs(out) == [(0, 3), (0, 4), (1, 5)]
    assert m.workers[0].task_id == 3 and m.workers[0].next_task.task_id == 4
    assert m.workers[1].task_id == 2 and m.workers[1].next_task.task_id == 5
    assert [t.task_id for t in m.queue] == [6, 7]
    assert m.held == 6
    # Nothing more while both already hold a task in advance.
    assert runs(m.handle(tasks(8), now=0.015)) == []
    # When task 3 ends the worker is already on task 4, and gets the next one in advance.
    out = m.handle(done(0, 3, SHORT), now=0.02)
    assert runs(out) == [(0, 6)]
    assert m.workers[0].task_id == 4 and m.workers[0].next_task.task_id == 6
    assert sent_ids(out) == []  # tasks 7 and 8 still wait here: results are batched


def test_no_advance_hand_over_for_long_tasks():
    m = make(2, advance_max_task_time=0.1)
    m.handle(WorkerReady(0), WorkerReady(1), tasks(*range(1, 8)), now=0.0)
    out = m.handle(done(0, 1, 0.5), now=1.0)
    assert runs(out) == [(0, 3)]
    assert all(w.next_task is None for w in m.workers.values())
    # Once the average is long, short calls do not bring back advance hand-over at once.
    out = m.handle(done(1, 2, SHORT), now=2.0)
    assert runs(out) == [(1, 4)]
    assert m.avg_task_time > 0.1
    assert all(w.next_task is None for w in m.workers.values())


def test_no_advance_hand_over_while_a_worker_is_still_starting():
    m = make(2, advance_max_task_time=0.1)
    m.handle(WorkerReady(0), tasks(1, 2, 3), now=0.0)
    out = m.handle(done(0, 1, SHORT), now=1.0)
    assert m.workers[1].state == "starting"
    assert runs(out) == [(0, 2)]
    assert m.workers[0].next_task is None


def test_worker_death_requeues_task_handed_over_in_advance():
    m = make(2, advance_max_task_time=0.1, max_startup_failures=5)
    m.handle(WorkerReady(0), WorkerReady(1), tasks(1, 2, 3, 4, 5), now=0.0)
    m.handle(done(0, 1, SHORT), now=1.0)
    assert m.workers[0].task_id == 3 and m.workers[0].next_task.task_id == 4
    out = m.handle(WorkerExited(0, -11), StopRequested("check"), now=2.0)
    lost = [r for s_ in of_type(out, SendResults) for r in s_.results if r[1] is Outcome.WORKER_LOST]
    assert [r[0] for r in lost] == [3]  # only the task it was running
    # Task 4 was never started: it is not lost but unfinished (back in the queue when the pool stopped).
    exits = of_type(out, Exit)
    assert 4 in exits[0].unfinished and 3 not in exits[0].unfinished


def test_requeued_advance_task_goes_first():
    m = make(2, advance_max_task_time=0.1)
    m.handle(WorkerReady(0), WorkerReady(1), tasks(1, 2, 3, 4, 5, 6, 7), now=0.0)
    m.handle(done(0, 1, SHORT), now=0.01)
    # Worker 0: 3 (+4 in advance); worker 1: 2 (+5 in advance); queue 6, 7.
    m.handle(WorkerExited(0, 1), now=0.02)
    assert [t.task_id for t in m.queue] == [4, 6, 7]
    out = m.handle(WorkerReady(0), now=0.03)
    assert runs(out) == [(0, 4), (0, 6)]


def test_no_advance_hand_over_to_a_worker_whose_task_runs_long():
    # Short tasks on average, but worker 1's current task has run past advance_max_task_time: it is not
    # handed a task in advance (one of higher priority may come before it ends); worker 0's new one is.
    m = make(2, advance_max_task_time=0.1)
    m.handle(WorkerReady(0), WorkerReady(1), tasks(1, 2, 3, 4, 5), now=0.0)
    out = m.handle(done(0, 1, SHORT), now=0.5)
    assert runs(out) == [(0, 3), (0, 4)]
    assert m.workers[1].task_id == 2 and m.workers[1].next_task is None
    assert [t.task_id for t in m.queue] == [5]


def test_local_queue_runs_lowest_priority_value_first_fifo_within():
    m = make(1)
    m.handle(WorkerReady(0), now=0.0)
    arrived = [(1, 9.0), (2, 5.0), (3, math.inf), (4, 1.0), (5, 5.0), (6, 1.0), (7, 3.0)]
    m.handle(TasksArrived([PoolTask(i, (), p) for i, p in arrived]), now=0.0)
    order = [m.workers[0].task_id]
    for t in range(1, len(arrived)):
        order += [tid for _, tid in runs(m.handle(done(0, order[-1], LONG), now=float(t)))]
    # By priority, in arrival order within one; no priority (inf) last.
    assert order == [4, 6, 7, 2, 5, 1, 3]


def test_exit_lists_tasks_handed_over_in_advance():
    m = make(2, advance_max_task_time=0.1)
    m.handle(WorkerReady(0), WorkerReady(1), tasks(*range(1, 7)), now=0.0)
    m.handle(done(0, 1, SHORT), now=1.0)
    out = m.handle(StopRequested("bye"), now=2.0)
    exits = of_type(out, Exit)
    assert exits[0].unfinished == [2, 3, 4, 5, 6]


# ---------------------------------------------------------------------------------- reconnect


def test_disconnect_longer_than_grace_exits():
    m = make(1, heartbeat_period=BIG, heartbeat_threshold=100.0, reconnect_grace=3.0)
    m.handle(InterchangeDisconnected(), now=5.0)
    assert m.next_deadline() == 8.0
    assert m.handle(InterchangeDisconnected(), now=6.0) == []  # the first disconnect time counts
    assert m.handle(now=7.5) == []
    out = m.handle(now=8.0)
    exits = of_type(out, Exit)
    assert len(exits) == 1 and exits[0].error
    assert "connection" in exits[0].reason


def test_reconnect_within_grace_keeps_running_and_registers_again():
    m = make(1, heartbeat_period=BIG, heartbeat_threshold=50.0, reconnect_grace=3.0)
    m.handle(InterchangeDisconnected(), now=5.0)
    out = m.handle(InterchangeConnected(), now=7.0)
    assert [type(i) for i in out if not isinstance(i, Note)] == [Register]
    assert m.handle(now=8.0) == []
    assert m.handle(now=50.0) == []
    # Silence is allowed for reconnect_timeout, twice the heartbeat threshold unless set.
    assert m.next_deadline() == 100.0


def test_reconnect_grace_capped_by_reconnect_timeout():
    m = make(1, heartbeat_period=BIG, heartbeat_threshold=2.0, reconnect_grace=10.0)
    assert m.reconnect_grace == 4.0


# ---------------------------------------------------------------------------------- properties

ops = st.lists(
    st.one_of(
        st.tuples(st.just("tasks"), st.integers(1, 4)),
        st.tuples(st.just("ready"), st.integers(0, 3)),
        st.tuples(st.just("result"), st.integers(0, 3)),
        st.tuples(st.just("quick"), st.integers(0, 3)),
        st.tuples(st.just("bogus"), st.integers(0, 3)),
        st.tuples(st.just("exit"), st.integers(0, 3)),
        st.tuples(st.just("term"), st.integers(0, 3)),
        st.tuples(st.just("tick"), st.integers(0, 3)),
    ),
    max_size=60,
)


@given(ops=ops, stop=st.booleans())
@settings(deadline=None, max_examples=150)
def test_random_event_sequences_keep_task_accounting(ops, stop):
    """A task is in one place at a time, starts at most once, and ends in exactly one result or as unfinished."""
    m = make(3, max_startup_failures=1000, result_batch_delay=0.5, result_batch_size=4, advance_max_task_time=0.1,
             term_grace=1.0)
    now = 0.0
    next_id = 0
    arrived: list[int] = []
    run_count: Counter[int] = Counter()
    result_count: Counter[int] = Counter()
    unfinished: list[int] = []
    requeued: set[int] = set()  # tasks handed over in advance to a worker that died before starting them

    def step(*events: object) -> None:
        out = m.handle(*events, now=now)  # type: ignore[arg-type]
        for ins in out:
            if isinstance(ins, RunTask):
                run_count[ins.task.task_id] += 1
            elif isinstance(ins, SendResults):
                result_count.update(r[0] for r in ins.results)
            elif isinstance(ins, Exit):
                unfinished.extend(ins.unfinished)
        running = [w.task_id for w in m.workers.values() if w.state == "busy"]
        ahead = [w.next_task.task_id for w in m.workers.values() if w.next_task is not None]
        queued = [t.task_id for t in m.queue]
        assert None not in running
        assert all(w.state == "busy" for w in m.workers.values() if w.next_task is not None)
        places = running + ahead + queued
        assert len(places) == len(set(places)), "a task in two places"
        assert all(run_count[t] == 1 + (t in requeued) for t in running + ahead)
        assert all(run_count[t] == (t in requeued) for t in queued)

    for op, arg in ops:
        now += 0.125
        if op == "tasks":
            ids = list(range(next_id, next_id + arg))
            next_id += arg
            arrived.extend(ids)
            step(tasks(*ids))
        elif op == "ready":
            step(WorkerReady(arg))
        elif op in ("result", "quick"):
            w = m.workers.get(arg)
            if w is not None and w.state == "busy" and w.task_id is not None:
                step(done(arg, w.task_id, SHORT if op == "quick" else LONG))
        elif op == "bogus":
            step(done(arg, 10**6 + arg))
        elif op in ("exit", "term"):
            w = m.workers.get(arg)
            if w is not None and w.next_task is not None:
                requeued.add(w.next_task.task_id)
            step(WorkerExited(arg, -signal.SIGTERM if op == "term" else 1))
        else:
            now += arg
            step(InterchangeContact())
    if stop:
        step(StopRequested("end"))
    else:
        now += 10.0  # past every SIGTERM grace; the results it releases then wait one batch delay
        step(InterchangeContact())
        now += 10.0
        step(InterchangeContact())
        waiting = [t.task_id for t in m.queue] + [
            w.task_id for w in m.workers.values() if w.state == "busy" and w.task_id is not None
        ]
        waiting += [w.next_task.task_id for w in m.workers.values() if w.next_task is not None]
        unfinished.extend(waiting)
    assert all(n <= 1 + (t in requeued) for t, n in run_count.items())
    assert all(n == 1 for n in result_count.values())
    assert sorted(list(result_count) + unfinished) == sorted(arrived)
