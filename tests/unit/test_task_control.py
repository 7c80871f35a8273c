"""Task control in the pure cores: time limits, stops, cancels, memory limits (manager), cancels
(interchange), the retry rule, and the cancel message."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from htex_ref.core.interchange import CancelOnManager, InterchangeState, ManagerRegistered, QueuedTask, SendTasks
from htex_ref.core.interchange import CancelTasks as IxCancel
from htex_ref.core.interchange import TaskSubmitted as IxTask
from htex_ref.core.manager import (
    CancelTasks,
    PoolTask,
    SendResults,
    SignalWorker,
    StartWorker,
    TasksArrived,
    WorkerExited,
    WorkerMemory,
    WorkerReady,
    WorkerResult,
    make_pool_task,
)
from htex_ref.core.retry import Attempt, Decision, RetryPolicy
from htex_ref.errors import ProtocolError, TaskMemoryExceeded, TaskTimeout
from htex_ref.memory import memory_cgroup_file, parse_oom_kills
from htex_ref.protocol import MAX_CANCEL_IDS, Outcome, Registration, pack_cancel, unpack_cancel
from htex_ref.serialize import decode_outcome
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__
from tests.unit.test_core_manager import SHORT, Quiet, done, of_type, runs, sent_ids
from tests.unit.test_core_manager import make as make_manager

TERM, KILL = signal.SIGTERM, signal.SIGKILL


def make(workers: int = 2, **kw: Any) -> Quiet:
    """A manager core that sends results at once (batching is another test's subject)."""
    kw.setdefault("result_batch_delay", 0.0)
    return make_manager(workers, **kw)


def limited(tid: int, walltime: float | None) -> PoolTask:
    return PoolTask(tid, (b"h", b"f", b"a"), walltime=walltime)


def results(out: list[Any]) -> list[tuple[int, Outcome, dict[str, Any]]]:
    found = []
    for batch in of_type(out, SendResults):
        for tid, outcome, payload, _ in batch.results:
            info = json.loads(bytes(payload)) if outcome not in (Outcome.OK, Outcome.EXCEPTION) else {}
            found.append((tid, outcome, info))
    return found


def signals(out: list[Any]) -> list[tuple[int, int]]:
    return [(i.rank, i.signum) for i in of_type(out, SignalWorker)]


# ------------------------------------------------------------------------------------ time limits


def test_a_task_past_its_walltime_is_stopped_then_killed_and_fails_with_timeout():
    m = make(2, hostname="n1", kill_grace=2.0)
    m.handle(WorkerReady(0), WorkerReady(1), now=0.0)
    assert runs(m.handle(TasksArrived([limited(1, 5.0), limited(2, None)]), now=0.0)) == [(0, 1), (1, 2)]
    assert m.next_deadline() <= 5.0
    assert signals(m.handle(now=4.9)) == []
    assert signals(m.handle(now=5.0)) == [(0, TERM)]
    assert signals(m.handle(now=6.9)) == []
    assert signals(m.handle(now=7.0)) == [(0, KILL)]
    out = m.handle(WorkerExited(0, -KILL), now=7.1)
    [(tid, outcome, info)] = results(out)
    assert (tid, outcome) == (1, Outcome.TIMEOUT)
    assert info["limit"] == 5.0 and info["worker"] == 0 and info["host"] == "n1" and info["killed"] is True
    # The group is killed (children) and the slot restarted; the other worker was never touched.
    assert signals(out) == [(0, KILL)] and of_type(out, StartWorker) == [StartWorker(0)]
    ok, exc = decode_outcome(outcome, json.dumps(info).encode())
    assert not ok and isinstance(exc, TaskTimeout) and exc.limit == 5.0 and "n1" in str(exc)
    assert m.busy == 1


def test_a_worker_that_dies_at_sigterm_is_not_killed_again_and_its_task_times_out_once():
    m = make(1, kill_grace=2.0)
    m.handle(WorkerReady(0), TasksArrived([limited(1, 1.0)]), now=0.0)
    m.handle(now=1.0)
    out = m.handle(WorkerExited(0, -TERM), now=1.2)
    assert [(t, o) for t, o, _ in results(out)] == [(1, Outcome.TIMEOUT)]
    assert results(m.handle(now=3.5)) == [] and signals(m.handle(now=3.5)) == []


def test_a_task_that_ends_in_time_leaves_no_timer_behind():
    m = make(1)
    m.handle(WorkerReady(0), TasksArrived([limited(1, 5.0)]), now=0.0)
    m.handle(done(0, 1), now=1.0)
    out = m.handle(TasksArrived([limited(2, None)]), now=1.0)
    assert runs(out) == [(0, 2)]
    assert signals(m.handle(now=5.0)) == [] and signals(m.handle(now=50.0)) == []


def test_a_result_racing_the_stop_is_the_one_outcome():
    m = make(1, kill_grace=2.0)
    m.handle(WorkerReady(0), TasksArrived([limited(1, 1.0), limited(2, None)]), now=0.0)
    assert signals(m.handle(now=1.0)) == [(0, TERM)]
    out = m.handle(done(0, 1), now=1.01)
    assert [(t, o) for t, o, _ in results(out)] == [(1, Outcome.OK)]
    assert runs(out) == []  # the worker is dying: task 2 waits for its replacement
    out = m.handle(WorkerExited(0, -TERM), now=1.02)
    assert results(out) == [] and of_type(out, StartWorker) == [StartWorker(0)]
    assert runs(m.handle(WorkerReady(0), now=1.5)) == [(0, 2)]


def test_no_grace_kills_at_once():
    m = make(1, kill_grace=0.0)
    m.handle(WorkerReady(0), TasksArrived([limited(1, 1.0)]), now=0.0)
    assert signals(m.handle(now=1.0)) == [(0, KILL)]


def test_a_worker_with_a_time_limit_is_handed_nothing_in_advance():
    m = make(1)
    m.handle(WorkerReady(0), TasksArrived([limited(1, None)]), now=0.0)
    m.handle(done(0, 1, SHORT), now=0.01)  # short calls: advance hand-over is on
    out = m.handle(TasksArrived([limited(2, 9.0), limited(3, None)]), now=0.02)
    assert runs(out) == [(0, 2)]
    out = m.handle(TasksArrived([limited(4, None)]), now=0.03)
    assert runs(out) == []


def test_a_stopped_worker_gives_back_the_task_it_held_in_advance():
    m = make(1)
    m.handle(WorkerReady(0), TasksArrived([limited(1, None)]), now=0.0)
    m.handle(done(0, 1, SHORT), now=0.01)
    assert runs(m.handle(TasksArrived([limited(2, None), limited(3, None)]), now=0.02)) == [(0, 2), (0, 3)]
    m.handle(CancelTasks((2,), kill_running=True), now=0.03)
    out = m.handle(WorkerExited(0, -TERM), now=0.04)
    assert [(t, o) for t, o, _ in results(out)] == [(2, Outcome.CANCELLED)]
    assert runs(m.handle(WorkerReady(0), now=0.5)) == [(0, 3)]


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "5", True, None])
def test_a_bad_walltime_in_a_task_header_is_refused(bad: Any):
    task = make_pool_task(1, (b"h", b"f", b"a"), 0.0, {"walltime": bad})
    assert task.refused is not None and "walltime" in task.refused
    m = make(1)
    assert [o for _, o, _ in results(m.handle(TasksArrived([task]), now=0.0))] == [Outcome.REFUSED]


def test_walltime_travels_with_an_mpi_request():
    task = make_pool_task(1, (b"h", b"f", b"a"), 0.0, {"walltime": 3, "num_ranks": 2})
    assert task.walltime == 3.0 and task.request is not None and task.request.num_ranks == 2


# ---------------------------------------------------------------------------------------- cancel


def test_cancel_drops_queued_tasks_and_leaves_running_ones_unless_asked():
    m = make(1)
    m.handle(WorkerReady(0), TasksArrived([limited(1, None), limited(2, None), limited(3, None)]), now=0.0)
    out = m.handle(CancelTasks((2, 1, 99)), now=0.1)
    assert [(t, o) for t, o, _ in results(out)] == [(2, Outcome.CANCELLED)]
    assert signals(out) == []
    out = m.handle(CancelTasks((1,), kill_running=True), now=0.2)
    assert signals(out) == [(0, TERM)]
    out = m.handle(WorkerExited(0, -TERM), now=0.3)
    assert [(t, o) for t, o, _ in results(out)] == [(1, Outcome.CANCELLED)]
    assert runs(m.handle(WorkerReady(0), now=0.4)) == [(0, 3)]
    assert m.held == 1


def test_a_second_stop_of_a_stopping_worker_changes_nothing():
    m = make(1, kill_grace=5.0)
    m.handle(WorkerReady(0), TasksArrived([limited(1, 1.0)]), now=0.0)
    m.handle(CancelTasks((1,), kill_running=True), now=0.5)
    assert signals(m.handle(now=1.0)) == []  # the time limit does not stop it a second time
    out = m.handle(WorkerExited(0, -TERM), now=1.1)
    assert [(t, o) for t, o, _ in results(out)] == [(1, Outcome.CANCELLED)]


# ---------------------------------------------------------------------------------------- memory


def test_a_worker_over_its_memory_limit_is_stopped_and_its_task_says_so():
    m = make(2, memory_limit=100 * 2**20, hostname="n2")
    m.handle(WorkerReady(0), WorkerReady(1), TasksArrived([limited(1, None), limited(2, None)]), now=0.0)
    assert signals(m.handle(WorkerMemory(0, 50 * 2**20), WorkerMemory(1, 99 * 2**20), now=1.0)) == []
    assert signals(m.handle(WorkerMemory(1, 150 * 2**20), now=1.5)) == [(1, TERM)]
    [(tid, outcome, info)] = results(m.handle(WorkerExited(1, -TERM), now=1.6))
    assert (tid, outcome) == (2, Outcome.MEMORY_EXCEEDED)
    _, exc = decode_outcome(outcome, json.dumps(info).encode())
    assert isinstance(exc, TaskMemoryExceeded) and exc.limit == 100 * 2**20 and exc.peak_rss == 150 * 2**20
    assert m.busy == 1


def test_memory_samples_mean_nothing_without_a_limit():
    m = make(1)
    m.handle(WorkerReady(0), TasksArrived([limited(1, None)]), now=0.0)
    assert signals(m.handle(WorkerMemory(0, 10**12), now=1.0)) == []


def test_a_worker_that_ran_out_of_memory_is_replaced_after_its_result():
    m = make(1)
    m.handle(WorkerReady(0), TasksArrived([limited(1, None), limited(2, None)]), now=0.0)
    payload = json.dumps({"worker": 0, "host": "h", "limit": 1, "peak_rss": 2, "detail": "x"}).encode()
    out = m.handle(WorkerResult(0, 1, Outcome.MEMORY_EXCEEDED, payload, 0.1), now=0.5)
    assert [(t, o) for t, o, _ in results(out)] == [(1, Outcome.MEMORY_EXCEEDED)] and runs(out) == []
    out = m.handle(WorkerExited(0, 0), now=0.6)
    assert results(out) == [] and of_type(out, StartWorker) == [StartWorker(0)]
    assert runs(m.handle(WorkerReady(0), now=1.0)) == [(0, 2)]


def test_a_worker_the_oom_killer_ended_fails_its_task_as_out_of_memory():
    m = make(1)
    m.handle(WorkerReady(0), TasksArrived([limited(1, None)]), now=0.0)
    [(tid, outcome, info)] = results(m.handle(WorkerExited(0, -KILL, oom=True), now=1.0))
    assert (tid, outcome) == (1, Outcome.MEMORY_EXCEEDED) and "OOM killer" in info["detail"]


def test_oom_counters_are_read_from_either_cgroup_version(tmp_path: Any):
    assert parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n") == 3
    assert parse_oom_kills("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n") == 1
    assert parse_oom_kills("oom 1\n") is None
    assert memory_cgroup_file("4:memory:/a/b\n0::/x\n", root="/cg") == "/cg/memory/a/b/memory.oom_control"
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "memory.events").write_text("oom_kill 0\n")
    assert memory_cgroup_file("0::/x\n", root=str(tmp_path)) == str(tmp_path / "x" / "memory.events")
    assert memory_cgroup_file("0::/missing\n", root=str(tmp_path)) is None


# ----------------------------------------------------------------------------------- interchange


def registration(uid: str, workers: int = 1, prefetch: int = 0) -> Registration:
    return Registration(PROTOCOL_VERSION, __version__, PYTHON_VERSION, uid, "0", workers, prefetch, "h", 1, 1, 1,
                        "Linux")


def test_the_interchange_drops_queued_cancelled_tasks_and_asks_managers_for_held_ones():
    ix = InterchangeState(heartbeat_threshold=1e9)
    ix.handle(*[IxTask(QueuedTask(i, 0.0, (b"h", b"f", b"a"))) for i in range(1, 6)], now=0.0)
    out = ix.handle(ManagerRegistered(b"m", registration("m", workers=2)), now=0.0)
    assert [t.task_id for s in of_type(out, SendTasks) for t in s.tasks] == [1, 2]
    out = ix.handle(IxCancel((4, 2, 77), kill_running=True), now=1.0)
    assert of_type(out, CancelOnManager) == [CancelOnManager(b"m", (2,), True)]
    assert ix.pending_count == 2 and ix.in_flight_count == 2  # 2 stays counted until the manager reports
    # What is left runs in its order.
    from htex_ref.core.interchange import ResultsReceived
    out = ix.handle(ResultsReceived(b"m", [(1, Outcome.OK, b"", 0.1), (2, Outcome.CANCELLED, b"{}", 0.0)]), now=2.0)
    assert [t.task_id for s in of_type(out, SendTasks) for t in s.tasks] == [3, 5]


# ----------------------------------------------------------------------------------------- retry


def attempt(n: int, outcome: Outcome = Outcome.WORKER_LOST) -> Attempt:
    return Attempt(n, outcome, "h", "worker 0", "died")


def test_retry_rule():
    assert RetryPolicy(0).decide([attempt(1)]) is Decision.GIVE_UP
    assert RetryPolicy(2, crash_limit=0).decide([attempt(1), attempt(2)]) is Decision.RETRY
    assert RetryPolicy(2, crash_limit=0).decide([attempt(1), attempt(2), attempt(3)]) is Decision.GIVE_UP
    assert RetryPolicy(5, crash_limit=2).decide([attempt(1), attempt(2)]) is Decision.CRASH_LIMIT
    lost = Outcome.MANAGER_LOST
    # Lost pools are the infrastructure's fault: they never count towards the crash limit.
    assert RetryPolicy(5, crash_limit=2).decide([attempt(1, lost), attempt(2, lost), attempt(3)]) is Decision.RETRY
    assert "worker pool lost" in str(attempt(1, lost)) and "attempt 1" in str(attempt(1))


# --------------------------------------------------------------------------------------- message


def test_cancel_messages_round_trip_and_malformed_ones_are_refused():
    assert unpack_cancel(pack_cancel([1, 2, 2**40], True)) == ((1, 2, 2**40), True)
    assert unpack_cancel(pack_cancel([], False)) == ((), False)
    for bad in (b"", b"\x02", b"\x01abc", b"\x00" + b"\x01" * 8 * (MAX_CANCEL_IDS + 1)):
        with pytest.raises(ProtocolError):
            unpack_cancel(bad)


def test_cancelled_results_read_as_cancelled():
    import concurrent.futures

    ok, exc = decode_outcome(Outcome.CANCELLED, b'{"detail": "cancelled while queued"}')
    assert not ok and isinstance(exc, concurrent.futures.CancelledError)


def test_every_signal_goes_to_a_slot_that_exists():
    m = make(3, kill_grace=1.0)
    m.handle(*[WorkerReady(r) for r in range(3)], now=0.0)
    m.handle(TasksArrived([limited(i, 1.0) for i in range(3)]), now=0.0)
    out = m.handle(now=1.0)
    assert sorted(signals(out)) == [(0, TERM), (1, TERM), (2, TERM)]
    assert sent_ids(out) == []
