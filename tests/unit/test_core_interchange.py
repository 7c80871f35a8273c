"""Unit tests for the interchange's pure state machine (htex_ref.core.interchange) and the selectors."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from htex_ref.core.interchange import (
    AUTO_PREFETCH_MAX_PER_WORKER,
    AcceptRegistration,
    BlockCancelled,
    DropOnManager,
    ForwardResults,
    HoldBlock,
    HoldManager,
    InterchangeState,
    ManagerChanged,
    ManagerGoodbye,
    ManagerHeartbeat,
    ManagerRegistered,
    QueuedTask,
    RegisterAgain,
    RejectRegistration,
    ReplyHeartbeat,
    ResultsReceived,
    SendTasks,
    ShutdownAll,
    StopManager,
    TaskSubmitted,
    replay,
)
from htex_ref.core.notes import Note
from htex_ref.core.selectors import (
    BlockIdManagerSelector,
    RandomManagerSelector,
    block_rank,
    selector_from_name,
)
from htex_ref.errors import ManagerLost, ProtocolError
from htex_ref.protocol import Kind, Outcome, Registration, ResultTuple, join_results, split_results
from htex_ref.serialize import decode_outcome
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__

THRESHOLD = 10.0

# ------------------------------------------------------------------------------------------ helpers


def make_reg(
    uid: str = "m",
    *,
    workers: int = 1,
    prefetch: int = 0,
    block: str | None = "0",
    protocol: int = PROTOCOL_VERSION,
    python: str = PYTHON_VERSION,
    drain_in: float | None = None,
    host: str = "node1",
    held: tuple[int, ...] = (),
) -> Registration:
    return Registration(
        protocol_version=protocol,
        htex_ref_version=__version__,
        python_version=python,
        uid=uid,
        block_id=block,
        worker_count=workers,
        prefetch_capacity=prefetch,
        hostname=host,
        pid=4242,
        held=held,
        cpu_count=8,
        total_memory=1 << 30,
        os="Linux",
        drain_in=drain_in,
    )


def registered(mid: bytes, **kw: object) -> ManagerRegistered:
    kw.setdefault("uid", mid.decode())
    return ManagerRegistered(mid, make_reg(**kw))  # type: ignore[arg-type]


def task(tid: int, priority: float = math.inf) -> TaskSubmitted:
    return TaskSubmitted(QueuedTask(tid, priority, (b"hdr%d" % tid, b"fn", b"args")))


def ok(tid: int, run_time: float = 0.0) -> ResultTuple:
    return (tid, Outcome.OK, b"value-%d" % tid, run_time)


def of_type(instrs: list, cls: type) -> list:
    return [i for i in instrs if isinstance(i, cls)]


def sent(instrs: list, mid: bytes | None = None) -> list[int]:
    """Task ids handed to ``mid`` (or to anyone), in order."""
    return [t.task_id for i in of_type(instrs, SendTasks) if mid is None or i.manager_id == mid for t in i.tasks]


def forwarded(instrs: list) -> list[ResultTuple]:
    """Every result forwarded to the executor, raw batches decoded."""
    out: list[ResultTuple] = []
    for fr in of_type(instrs, ForwardResults):
        out.extend(fr.results)
        for raw in fr.raw:
            out.extend(split_results([Kind.RESULTS, raw]))
    return out


class Quiet(InterchangeState):
    """The interchange core with its log notes and monitoring records kept aside (``notes``, ``changes``),
    so that tests compare actions."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.notes: list[Note] = []
        self.changes: list[ManagerChanged] = []

    def handle(self, *events: Any, now: float) -> list[Any]:
        out = super().handle(*events, now=now)
        self.notes += [i for i in out if isinstance(i, Note)]
        self.changes += [i for i in out if isinstance(i, ManagerChanged)]
        return [i for i in out if not isinstance(i, Note | ManagerChanged)]


def new_state(**kw: object) -> Quiet:
    kw.setdefault("heartbeat_threshold", THRESHOLD)
    kw.setdefault("selector", RandomManagerSelector(seed=1))
    return Quiet(**kw)


# ------------------------------------------------------------------------------------ registration


def test_registration_accepted_and_recorded():
    s = new_state()
    out = s.handle(registered(b"a", block="7", workers=3, prefetch=2), now=5.0)
    assert out == [AcceptRegistration(b"a")]
    assert b"a" in s.managers
    snap = s.managers_snapshot(now=6.0)
    assert len(snap) == 1
    assert snap[0]["manager"] == "a"
    assert snap[0]["block_id"] == "7"
    assert snap[0]["worker_count"] == 3
    assert snap[0]["prefetch_capacity"] == 2
    assert snap[0]["tasks"] == 0
    assert snap[0]["last_heartbeat_age"] == pytest.approx(1.0)


def test_connected_blocks_distinct_in_order_and_kept_after_managers_leave():
    s = new_state()
    s.handle(
        registered(b"a", block="3"),
        registered(b"b", block="1"),
        registered(b"c", block="3"),
        registered(b"d", block=None),
        registered(b"e", block="10"),
        now=0.0,
    )
    assert s.connected_blocks() == ["3", "1", "10"]
    s.handle(ManagerGoodbye(b"a", "done"), ManagerGoodbye(b"b", "done"), now=1.0)
    assert s.connected_blocks() == ["3", "1", "10"]
    # The caller gets a copy, not the internal list.
    s.connected_blocks().append("zzz")
    assert s.connected_blocks() == ["3", "1", "10"]


def test_duplicate_manager_id_rejected_and_first_kept():
    s = new_state()
    s.handle(registered(b"a", workers=1, host="first"), now=0.0)
    out = s.handle(registered(b"a", workers=5, host="second"), now=1.0)
    rejects = of_type(out, RejectRegistration)
    assert len(rejects) == 1
    assert rejects[0].manager_id == b"a"
    assert rejects[0].mismatch is None
    assert not of_type(out, AcceptRegistration)
    assert s.managers[b"a"].registration.hostname == "first"
    # Capacity is still the first registration's.
    out = s.handle(*[task(i) for i in range(5)], now=2.0)
    assert sent(out, b"a") == [0]


def test_protocol_version_mismatch_rejected_naming_both_versions():
    s = new_state(protocol_version=7)
    out = s.handle(registered(b"a", protocol=8), now=0.0)
    assert len(out) == 1
    rej = out[0]
    assert isinstance(rej, RejectRegistration)
    assert rej.mismatch is not None
    theirs, ours = rej.mismatch
    assert "protocol=8" in theirs
    assert "protocol=7" in ours
    assert "protocol=8" in rej.reason and "protocol=7" in rej.reason
    assert b"a" not in s.managers
    # Nothing is dispatched to a refused manager.
    assert sent(s.handle(task(1), now=1.0)) == []
    assert s.pending_count == 1


def test_python_minor_mismatch_rejected_naming_both_versions():
    s = new_state(python_version="3.11.7")
    out = s.handle(registered(b"a", python="3.12.1"), now=0.0)
    rej = of_type(out, RejectRegistration)
    assert len(rej) == 1
    assert rej[0].mismatch is not None
    theirs, ours = rej[0].mismatch
    assert "python=3.12.1" in theirs
    assert "python=3.11.7" in ours
    assert b"a" not in s.managers


def test_python_patch_difference_is_accepted():
    s = new_state(python_version="3.11.7")
    assert s.handle(registered(b"a", python="3.11.2"), now=0.0) == [AcceptRegistration(b"a")]


def test_python_check_disabled():
    s = new_state(python_version="3.11.7", check_python_version=False)
    assert s.handle(registered(b"a", python="3.9.0"), now=0.0) == [AcceptRegistration(b"a")]
    # ... but the protocol version is still checked.
    out = s.handle(registered(b"b", protocol=PROTOCOL_VERSION + 1), now=0.0)
    assert of_type(out, RejectRegistration)[0].mismatch is not None


def test_zero_workers_rejected():
    s = new_state()
    out = s.handle(registered(b"a", workers=0, prefetch=4), task(1), now=0.0)
    rej = of_type(out, RejectRegistration)
    assert len(rej) == 1 and rej[0].mismatch is None
    assert b"a" not in s.managers
    assert sent(out) == []
    assert s.pending_count == 1


# -------------------------------------------------------------------------------- priority order


def test_priority_order_before_any_manager():
    s = new_state()
    prios = {1: math.inf, 2: 5, 3: 1, 4: 5, 5: 1, 6: math.inf, 7: -2, 8: 0.5}
    s.handle(*[task(t, p) for t, p in prios.items()], now=0.0)
    assert s.pending_count == len(prios)
    out = s.handle(registered(b"a", workers=len(prios)), now=1.0)
    assert sent(out, b"a") == [7, 8, 3, 5, 2, 4, 1, 6]


def test_priority_order_one_at_a_time_across_calls():
    s = new_state()
    s.handle(task(1), task(2, 3), now=0.0)
    s.handle(task(3, 3), task(4), task(5, 1), now=0.5)
    order = sent(s.handle(registered(b"a", workers=1), now=1.0))
    for t in range(2, 10):
        order += sent(s.handle(ResultsReceived(b"a", [ok(order[-1])]), now=float(t)))
    assert order == [5, 2, 3, 1, 4]


def test_unprioritised_tasks_are_fifo():
    s = new_state()
    ids = list(range(20))
    for i in ids:
        s.handle(task(i), now=i * 0.1)
    out = s.handle(registered(b"a", workers=len(ids)), now=5.0)
    assert sent(out) == ids


# ------------------------------------------------------------------------------ capacity/batching


def test_capacity_never_exceeded_and_results_trigger_dispatch():
    s = new_state()
    out = s.handle(registered(b"a", workers=2, prefetch=1), *[task(i) for i in range(10)], now=0.0)
    first = sent(out, b"a")
    assert first == [0, 1, 2]
    assert len(s.managers[b"a"].tasks) == 3
    # More tasks do not go to a full manager.
    assert sent(s.handle(task(10), now=0.5)) == []
    out = s.handle(ResultsReceived(b"a", [ok(0), ok(1)]), now=1.0)
    assert [r[0] for r in forwarded(out)] == [0, 1]
    assert sent(out, b"a") == [3, 4]
    assert len(s.managers[b"a"].tasks) == 3
    assert s.in_flight_count == 3
    assert s.pending_count == 11 - 5


def test_one_send_tasks_per_manager_per_handle_call():
    s = new_state()
    s.handle(registered(b"a", workers=3, prefetch=1), registered(b"b", workers=2), now=0.0)
    out = s.handle(*[task(i) for i in range(20)], now=1.0)
    sends = of_type(out, SendTasks)
    assert sorted(x.manager_id for x in sends) == [b"a", b"b"]
    sizes = {x.manager_id: len(x.tasks) for x in sends}
    assert sizes == {b"a": 4, b"b": 2}
    assert s.tasks_dispatched == 6


def test_many_results_in_one_call_one_send_per_manager():
    s = new_state()
    s.handle(registered(b"a", workers=4), *[task(i) for i in range(12)], now=0.0)
    held = sorted(s.managers[b"a"].tasks)
    out = s.handle(*[ResultsReceived(b"a", [ok(t)]) for t in held], now=1.0)
    sends = of_type(out, SendTasks)
    assert len(sends) == 1
    assert [t.task_id for t in sends[0].tasks] == [4, 5, 6, 7]
    assert len(of_type(out, ForwardResults)) == 1
    assert sorted(r[0] for r in forwarded(out)) == held


def test_block_id_selector_fills_highest_numeric_block_first():
    s = new_state(selector=BlockIdManagerSelector())
    s.handle(
        registered(b"a", block="9", workers=2),
        registered(b"b", block="10", workers=2),
        registered(b"c", block=None, workers=2),
        now=0.0,
    )
    out = s.handle(*[task(i) for i in range(5)], now=1.0)
    assert sent(out, b"b") == [0, 1]
    assert sent(out, b"a") == [2, 3]
    assert sent(out, b"c") == [4]


# ------------------------------------------------------------------------------ heartbeat expiry


def _lost_results(instrs: list) -> list[ResultTuple]:
    return [r for r in forwarded(instrs) if r[1] is Outcome.MANAGER_LOST]


def test_silent_manager_expires_tasks_fail_with_manager_lost():
    s = new_state()
    timeline = [
        (0.0, registered(b"a", workers=2, host="nodeA")),
        (0.0, task(1)),
        (0.0, task(2)),
        (0.0, task(3)),
    ]
    replay(s, timeline)
    assert s.next_deadline() == THRESHOLD
    assert s.handle(now=THRESHOLD - 0.001) == []
    assert b"a" in s.managers
    out = s.handle(now=THRESHOLD)
    lost = _lost_results(out)
    assert sorted(r[0] for r in lost) == [1, 2]
    assert b"a" not in s.managers
    assert s.in_flight_count == 0
    assert s.pending_count == 1  # task 3 was never dispatched and stays queued
    assert not of_type(out, StopManager)
    # The payload decodes to a ManagerLost naming the manager and its host.
    okflag, exc = decode_outcome(Outcome.MANAGER_LOST, lost[0][2])
    assert not okflag
    assert isinstance(exc, ManagerLost)
    assert exc.manager_id == "a"
    assert exc.hostname == "nodeA"
    assert "heartbeat" in exc.detail


def test_heartbeat_just_before_deadline_keeps_manager():
    s = new_state()
    s.handle(registered(b"a"), task(1), now=0.0)
    out = s.handle(ManagerHeartbeat(b"a"), now=THRESHOLD - 0.5)
    assert out == [ReplyHeartbeat(b"a")]
    assert s.handle(now=THRESHOLD) == []
    assert b"a" in s.managers
    assert s.next_deadline() == 2 * THRESHOLD - 0.5
    assert s.handle(now=2 * THRESHOLD - 0.75) == []
    out = s.handle(now=2 * THRESHOLD - 0.5)
    assert [r[0] for r in _lost_results(out)] == [1]
    assert b"a" not in s.managers


def test_results_count_as_contact():
    s = new_state()
    s.handle(registered(b"a"), task(1), task(2), now=0.0)
    s.handle(ResultsReceived(b"a", [ok(1)]), now=9.0)
    assert _lost_results(s.handle(now=THRESHOLD)) == []
    assert b"a" in s.managers
    assert [r[0] for r in _lost_results(s.handle(now=19.0))] == [2]


def test_late_messages_from_expired_manager_are_ignored_and_it_is_asked_to_register_again():
    s = new_state()
    s.handle(registered(b"a", workers=2), task(1), task(2), task(3), now=0.0)
    out = s.handle(now=THRESHOLD + 1)
    assert sorted(r[0] for r in _lost_results(out)) == [1, 2]
    raw = join_results([ok(1), ok(2)])[1]
    out = s.handle(
        ManagerHeartbeat(b"a"),
        ResultsReceived(b"a", [ok(1), ok(2)], raw=raw),
        HoldManager(b"a"),
        ManagerGoodbye(b"a", "late"),
        now=THRESHOLD + 2,
    )
    # Nothing is forwarded, acknowledged or dispatched; the forgotten pool is asked to register again.
    assert not of_type(out, ForwardResults) and not of_type(out, SendTasks)
    assert {type(i) for i in out} == {RegisterAgain} and {i.manager_id for i in out} == {b"a"}
    assert b"a" not in s.managers
    assert s.pending_count == 1
    # When it does, naming the tasks it still holds, it is told to drop them: they were failed already.
    out = s.handle(registered(b"a", workers=2, held=(1, 2)), now=THRESHOLD + 3)
    assert [i.task_ids for i in of_type(out, DropOnManager)] == [(1, 2)]
    assert of_type(out, AcceptRegistration)
    assert sent(out, b"a") == [3]


def test_next_deadline_reports_expiry_and_drain():
    s = new_state()
    assert s.next_deadline() is None
    s.handle(registered(b"a"), now=3.0)
    assert s.next_deadline() == 3.0 + THRESHOLD
    s.handle(registered(b"b", drain_in=4.0), now=3.5)
    assert s.next_deadline() == 7.5


# ------------------------------------------------------------------------------ goodbye, hold, drain


def test_goodbye_fails_in_flight_tasks_immediately():
    s = new_state()
    s.handle(registered(b"a", workers=2, host="hA"), registered(b"b", workers=1), now=0.0)
    out = s.handle(task(1), task(2), task(3), task(4), now=0.0)
    held_a = sorted(s.managers[b"a"].tasks)
    held_b = sorted(s.managers[b"b"].tasks)
    assert len(held_a) == 2 and len(held_b) == 1
    out = s.handle(ManagerGoodbye(b"a", "walltime reached"), now=1.0)
    lost = _lost_results(out)
    assert sorted(r[0] for r in lost) == held_a
    info = json.loads(lost[0][2])
    assert info["manager"] == "a" and info["host"] == "hA"
    assert "walltime reached" in info["detail"]
    assert b"a" not in s.managers
    assert not of_type(out, StopManager)
    # The other manager's task is untouched, the pending task goes to b later.
    assert sorted(s.managers[b"b"].tasks) == held_b
    out = s.handle(ResultsReceived(b"b", [ok(held_b[0])]), now=2.0)
    assert [r[0] for r in forwarded(out)] == held_b
    assert sent(out, b"b") == [4]


@pytest.mark.parametrize("reason, shown", [("", "was cancelled by the executor"),
                                           ("ended (FAILED, exit code -9)", "ended (FAILED, exit code -9)")])
def test_block_end_fails_its_managers_tasks_at_once_with_the_reason(reason, shown):
    s = new_state()
    s.handle(registered(b"a", workers=2, block="3"), registered(b"b", workers=2, block="4"), now=0.0)
    s.handle(task(1), task(2), task(3), task(4), now=0.0)
    held_a = sorted(s.managers[b"a"].tasks)
    out = s.handle(BlockCancelled("3", reason), now=0.5)  # long before heartbeat_threshold
    lost = _lost_results(out)
    assert sorted(r[0] for r in lost) == held_a
    assert f"its block 3 {shown}" in json.loads(lost[0][2])["detail"]
    assert [ins.manager_id for ins in of_type(out, StopManager)] == [b"a"]
    assert b"a" not in s.managers and b"b" in s.managers


def test_hold_stops_dispatch_but_results_still_forwarded():
    s = new_state(selector=BlockIdManagerSelector())
    s.handle(registered(b"a", block="2", workers=1), registered(b"b", block="1", workers=1), now=0.0)
    out = s.handle(task(1), task(2), now=0.0)
    assert sent(out, b"a") == [1]
    assert sent(out, b"b") == [2]
    assert s.handle(HoldManager(b"a"), task(3), task(4), now=1.0) == []
    out = s.handle(ResultsReceived(b"a", [ok(1)]), now=2.0)
    assert [r[0] for r in forwarded(out)] == [1]
    assert sent(out) == []
    out = s.handle(ResultsReceived(b"b", [ok(2)]), now=3.0)
    assert sent(out, b"b") == [3]
    assert sent(out, b"a") == []
    # A held manager still heartbeats and stays registered.
    assert s.handle(ManagerHeartbeat(b"a"), now=4.0) == [ReplyHeartbeat(b"a")]


def test_hold_block_holds_every_manager_registered_in_the_block_and_no_other():
    s = new_state(selector=BlockIdManagerSelector())
    s.handle(registered(b"a", block="2", workers=1), registered(b"b", block="2", workers=1),
             registered(b"c", block="1", workers=1), now=0.0)
    assert s.handle(HoldBlock("2"), now=1.0) == []
    assert [s.managers[m].active for m in (b"a", b"b", b"c")] == [False, False, True]
    assert s.block_loads(1.0)["2"].active == 0 and s.block_loads(1.0)["1"].active == 1
    # Block 2 is the newest, which block_id would fill first: held, it gets nothing.
    out = s.handle(task(1), task(2), now=2.0)
    assert sent(out, b"c") == [1] and sent(out, b"a") == sent(out, b"b") == []
    # Holding a block with no managers, or one that is gone, does nothing.
    assert s.handle(HoldBlock("9"), now=3.0) == []
    assert s.handle(HoldBlock("2"), now=3.0) == []  # again: still held, counted once
    assert s.block_loads(3.0)["2"].active == 0


@pytest.mark.parametrize("run_time", [0.0, 5e-324, 1e-300, 1e-9])
def test_automatic_prefetch_survives_any_tiny_run_time(run_time):
    # Found by the stateful test: a denormal run time made the prefetch allowance infinite (OverflowError),
    # which would have ended the interchange process on one result header.
    s = new_state(auto_prefetch=True)
    s.handle(registered(b"a", workers=1), task(1), now=0.0)
    out = s.handle(ResultsReceived(b"a", [ok(1, run_time)]), *[task(i) for i in range(2, 200)], now=1.0)
    assert len(sent(out, b"a")) == 1 + 64  # its free slot, and the most automatic prefetch gives one worker


def test_hold_unknown_manager_is_harmless():
    s = new_state()
    assert s.handle(HoldManager(b"nobody"), now=0.0) == []


def test_drain_stops_dispatch_at_drain_time_and_stops_manager_when_idle():
    s = new_state()
    out = s.handle(registered(b"a", workers=1, drain_in=5.0), task(1), task(2), task(3), now=0.0)
    assert sent(out) == [1]
    out = s.handle(ResultsReceived(b"a", [ok(1)]), now=2.0)
    assert sent(out) == [2]  # before the drain time, dispatch goes on
    out = s.handle(now=5.0)
    assert out == []  # draining, but it still holds task 2
    assert s.managers[b"a"].draining
    out = s.handle(ResultsReceived(b"a", [ok(2)]), now=6.0)
    assert [r[0] for r in forwarded(out)] == [2]
    assert sent(out) == []
    assert of_type(out, StopManager) == [StopManager(b"a", "drained")]
    assert b"a" not in s.managers
    assert s.pending_count == 1


def test_drain_of_idle_manager_stops_it_at_drain_time():
    s = new_state()
    s.handle(registered(b"a", drain_in=3.0), now=1.0)
    assert s.handle(now=3.9) == []
    out = s.handle(now=4.0)
    assert of_type(out, StopManager) == [StopManager(b"a", "drained")]
    assert b"a" not in s.managers


def test_drain_in_zero_gets_no_tasks():
    s = new_state()
    out = s.handle(task(1), registered(b"a", drain_in=0.0), now=0.0)
    assert sent(out) == []
    assert of_type(out, StopManager) == [StopManager(b"a", "drained")]
    assert s.pending_count == 1


def test_shutdown_all_stops_every_manager_and_fails_their_tasks():
    s = new_state()
    s.handle(registered(b"a", workers=2), registered(b"b"), registered(b"c"), now=0.0)
    s.handle(*[task(i) for i in range(3)], now=0.5)
    in_flight = sorted(t for m in s.managers.values() for t in m.tasks)
    assert in_flight == [0, 1, 2]
    out = s.handle(ShutdownAll("bye"), now=1.0)
    assert sorted(r[0] for r in _lost_results(out)) == in_flight
    assert sorted(x.manager_id for x in of_type(out, StopManager)) == [b"a", b"b", b"c"]
    assert s.managers == {}
    assert s.in_flight_count == 0


# ------------------------------------------------------------------------------------- results


def test_result_for_task_not_held_is_dropped():
    s = new_state(selector=BlockIdManagerSelector())
    s.handle(registered(b"a", block="2"), registered(b"b", block="1"), task(1), task(2), now=0.0)
    assert s.managers[b"a"].tasks.keys() == {1}
    assert s.managers[b"b"].tasks.keys() == {2}
    # a reports b's task and a task nobody has: both dropped, b keeps its task.
    out = s.handle(ResultsReceived(b"a", [ok(2), ok(99)]), now=1.0)
    assert forwarded(out) == []
    assert s.managers[b"b"].tasks.keys() == {2}
    assert s.managers[b"a"].tasks.keys() == {1}
    # A duplicate result is dropped too.
    out = s.handle(ResultsReceived(b"a", [ok(1), ok(1)]), now=2.0)
    assert [r[0] for r in forwarded(out)] == [1]


def test_raw_batch_forwarded_verbatim_when_all_accepted():
    s = new_state()
    s.handle(registered(b"a", workers=3), task(1), task(2), task(3), now=0.0)
    results = [ok(1), (2, Outcome.EXCEPTION, b"boom", 0.5)]
    raw = join_results(results)[1]
    out = s.handle(ResultsReceived(b"a", results, raw=raw), now=1.0)
    frs = of_type(out, ForwardResults)
    assert len(frs) == 1
    assert frs[0].raw == [raw]
    assert frs[0].raw[0] is raw
    assert frs[0].results == []


def test_raw_batch_not_forwarded_when_any_result_dropped():
    s = new_state()
    s.handle(registered(b"a", workers=3), task(1), task(2), now=0.0)
    results = [ok(1), ok(77), ok(2)]
    raw = join_results(results)[1]
    out = s.handle(ResultsReceived(b"a", results, raw=raw), now=1.0)
    frs = of_type(out, ForwardResults)
    assert len(frs) == 1
    assert frs[0].raw == []
    assert [r[0] for r in frs[0].results] == [1, 2]


# -------------------------------------------------------------------------------- auto prefetch


def test_auto_prefetch_waits_for_a_short_run_time():
    s = new_state(auto_prefetch=True)
    out = s.handle(registered(b"a", workers=2), *[task(i) for i in range(50)], now=0.0)
    assert sent(out) == [0, 1]  # no run time known yet: no prefetch
    assert s.handle(now=1.0) == []
    out = s.handle(ResultsReceived(b"a", [ok(0, run_time=0.001)]), now=2.0)
    n = len(s.managers[b"a"].tasks)
    assert n > 2  # prefetch kicked in
    assert n <= 2 + 2 * AUTO_PREFETCH_MAX_PER_WORKER
    assert s.pending_count == 50 - 1 - n


def test_auto_prefetch_only_when_every_slot_is_taken_and_tasks_pend():
    s = new_state(auto_prefetch=True, selector=BlockIdManagerSelector())
    # a learns that its tasks are short.
    s.handle(registered(b"a", block="1", workers=1), task(0), now=0.0)
    s.handle(ResultsReceived(b"a", [ok(0, run_time=0.001)]), now=1.0)
    assert s.managers[b"a"].avg_task_time == pytest.approx(0.001)
    # Exactly enough tasks for every slot: nothing is prefetched.
    out = s.handle(task(1), now=2.0)
    assert sent(out, b"a") == [1]
    assert s.managers[b"a"].tasks.keys() == {1}
    # b has free slots (and is preferred): new tasks go there, a gets no prefetch.
    s.handle(registered(b"b", block="2", workers=3), now=3.0)
    out = s.handle(task(2), task(3), now=4.0)
    assert sent(out, b"b") == [2, 3]
    assert sent(out, b"a") == []
    # More tasks than free slots: b fills up, the rest is prefetched to a (b has no run time yet).
    out = s.handle(task(4), task(5), task(6), now=5.0)
    assert sent(out, b"b") == [4]
    assert sent(out, b"a") == [5, 6]
    assert len(s.managers[b"b"].tasks) == 3
    assert s.pending_count == 0


def test_no_auto_prefetch_for_long_tasks():
    s = new_state(auto_prefetch=True, auto_prefetch_max_task_time=1.0)
    s.handle(registered(b"a", workers=2), *[task(i) for i in range(20)], now=0.0)
    out = s.handle(ResultsReceived(b"a", [ok(0, run_time=2.0)]), now=2.0)
    assert sent(out) == [2]
    assert len(s.managers[b"a"].tasks) == 2
    out = s.handle(ResultsReceived(b"a", [ok(1, run_time=1.5)]), now=3.0)
    assert sent(out) == [3]
    assert len(s.managers[b"a"].tasks) == 2


def test_no_auto_prefetch_when_disabled():
    s = new_state(auto_prefetch=False)
    s.handle(registered(b"a", workers=2), *[task(i) for i in range(20)], now=0.0)
    s.handle(ResultsReceived(b"a", [ok(0, run_time=0.0001)]), now=1.0)
    assert len(s.managers[b"a"].tasks) == 2


def test_no_auto_prefetch_to_held_or_draining_manager():
    s = new_state(auto_prefetch=True)
    s.handle(registered(b"a", workers=1), registered(b"b", workers=1, drain_in=5.0), task(0), task(1), now=0.0)
    out = s.handle(
        ResultsReceived(b"a", [ok(t, 0.001) for t in s.managers[b"a"].tasks]),
        ResultsReceived(b"b", [ok(t, 0.001) for t in s.managers[b"b"].tasks]),
        task(2),
        task(3),
        now=1.0,
    )
    assert sorted(sent(out)) == [2, 3]  # one each: both now have a short run time and are full
    s.handle(HoldManager(b"a"), now=2.0)
    assert s.handle(now=5.0) == []
    assert s.managers[b"b"].draining  # draining but still running its task
    out = s.handle(*[task(i) for i in range(4, 12)], now=6.0)
    assert sent(out) == []
    assert s.pending_count == 8
    assert len(s.managers[b"a"].tasks) == 1 and len(s.managers[b"b"].tasks) == 1


def test_auto_prefetch_one_send_tasks_per_manager_per_call():
    s = new_state(auto_prefetch=True)
    s.handle(registered(b"a", workers=1), *[task(i) for i in range(50)], now=0.0)
    out = s.handle(ResultsReceived(b"a", [ok(0, run_time=0.001)]), now=1.0)
    assert len(s.managers[b"a"].tasks) > 1  # prefetch happened
    assert len([x for x in of_type(out, SendTasks) if x.manager_id == b"a"]) == 1


def test_nan_run_time_does_not_crash_auto_prefetch():
    # The wire decoder refuses it...
    with pytest.raises(ProtocolError):
        split_results([Kind.RESULTS, join_results([ok(0, run_time=math.nan)])[1]])
    # ...and the core ignores it if it gets one anyway.
    s = new_state(auto_prefetch=True)
    s.handle(registered(b"a", workers=1), *[task(i) for i in range(5)], now=0.0)
    out = s.handle(ResultsReceived(b"a", [ok(0, run_time=math.nan)]), now=1.0)
    assert [r[0] for r in forwarded(out)] == [0]
    assert s.managers[b"a"].avg_task_time is None


def test_worker_lost_result_does_not_count_as_short_run_time():
    s = new_state(auto_prefetch=True)
    s.handle(registered(b"a", workers=1), *[task(i) for i in range(100)], now=0.0)
    lost = (0, Outcome.WORKER_LOST, b'{"worker": 0, "host": "h", "detail": "x"}', 0.0)
    s.handle(ResultsReceived(b"a", [lost]), now=1.0)
    assert len(s.managers[b"a"].tasks) == 1


def test_stale_drain_timer_does_not_drain_reregistered_manager():
    s = new_state()
    s.handle(registered(b"a", drain_in=100.0), now=0.0)
    s.handle(ManagerGoodbye(b"a", "restarting"), now=5.0)
    assert s.handle(registered(b"a"), now=6.0) == [AcceptRegistration(b"a")]
    s.handle(ManagerHeartbeat(b"a"), now=95.0)
    out = s.handle(now=100.0)
    assert of_type(out, StopManager) == []
    assert b"a" in s.managers and not s.managers[b"a"].draining


def test_next_deadline_finite_after_manager_with_infinite_drain_leaves():
    with pytest.raises(ProtocolError, match="drain_in"):
        Registration.decode(make_reg("a", drain_in=math.inf).encode())
    s = new_state()
    reg = make_reg("a", drain_in=math.inf)
    s.handle(ManagerRegistered(b"a", reg), now=0.0)
    s.handle(ManagerGoodbye(b"a", "done"), now=1.0)
    s.handle(now=THRESHOLD)
    d = s.next_deadline()
    assert d is None or math.isfinite(d)


# ------------------------------------------------------------------------------------- selectors


@dataclass
class Cand:
    block_id: str | None


def test_block_id_selector_numeric_order():
    sel = BlockIdManagerSelector()
    assert sel.choose({b"x": Cand("9"), b"y": Cand("10"), b"z": Cand("2")}) == b"y"
    assert sel.choose({b"x": Cand(None), b"y": Cand("0")}) == b"y"
    assert sel.choose({b"x": Cand(None), b"y": Cand("abc")}) == b"y"
    assert sel.choose({b"x": Cand("abc"), b"y": Cand("1")}) == b"y"
    assert sel.choose({b"only": Cand(None)}) == b"only"


def test_block_rank_orders_numbers_by_value_and_none_last():
    ids = ["10", None, "9", "b", "100", "a", "2"]
    assert sorted(ids, key=block_rank) == [None, "a", "b", "2", "9", "10", "100"]


@given(
    blocks=st.lists(st.one_of(st.none(), st.integers(0, 10**6).map(str), st.text(max_size=4)), min_size=1, max_size=8)
)
def test_block_id_selector_picks_a_max_rank_candidate(blocks):
    cands = {b"m%d" % i: Cand(b) for i, b in enumerate(blocks)}
    chosen = BlockIdManagerSelector().choose(cands)
    assert chosen in cands
    assert block_rank(cands[chosen].block_id) == max(block_rank(c.block_id) for c in cands.values())


@given(seed=st.integers(0, 2**32), n=st.integers(1, 10), rounds=st.integers(1, 20))
def test_random_selector_returns_only_candidates(seed, n, rounds):
    cands = {b"m%d" % i: Cand(str(i)) for i in range(n)}
    sel = RandomManagerSelector(seed)
    other = RandomManagerSelector(seed)
    for _ in range(rounds):
        c = sel.choose(cands)
        assert c in cands
        assert other.choose(cands) == c  # deterministic for a seed


def test_random_selector_uses_every_candidate_eventually():
    cands = {b"m%d" % i: Cand(str(i)) for i in range(4)}
    sel = RandomManagerSelector(0)
    assert {sel.choose(cands) for _ in range(200)} == set(cands)


def test_selector_from_name():
    assert isinstance(selector_from_name("random"), RandomManagerSelector)
    assert isinstance(selector_from_name("block_id"), BlockIdManagerSelector)
    with pytest.raises(ValueError, match="nope"):
        selector_from_name("nope")


# ---------------------------------------------------------------------------- stateful property

MANAGER_IDS = [b"m0", b"m1", b"m2", b"m3"]


class InterchangeMachine(RuleBasedStateMachine):
    """Random interleavings of everything the interchange can be told, against a model of the pools."""

    def __init__(self) -> None:
        super().__init__()
        self.s: InterchangeState | None = None

    @initialize(auto=st.booleans(), seed=st.integers(0, 1000))
    def setup(self, auto: bool, seed: int) -> None:
        self.auto = auto
        self.s = Quiet(heartbeat_threshold=THRESHOLD, selector=RandomManagerSelector(seed), auto_prefetch=auto)
        self.now = 0.0
        self.next_id = 0
        self.submitted: set[int] = set()
        self.priority: dict[int, float] = {}
        self.forwarded: Counter[int] = Counter()
        self.dispatched: set[int] = set()
        # What each (live or gone) pool process believes it holds: late results come from here.
        self.pool_tasks: dict[bytes, set[int]] = {m: set() for m in MANAGER_IDS}
        self.held: set[bytes] = set()
        self.drain_at: dict[bytes, float] = {}
        self.registering_drain_in: float | None = None
        self.registrations = 0

    def step(self, *events: object) -> None:
        assert self.s is not None
        out = self.s.handle(*events, now=self.now)  # type: ignore[arg-type]
        sends: Counter[bytes] = Counter()
        sent_now: list[int] = []
        for ins in out:
            if isinstance(ins, AcceptRegistration):
                self.held.discard(ins.manager_id)
                self.pool_tasks[ins.manager_id] = set()
                d = self.registering_drain_in
                self.drain_at[ins.manager_id] = math.inf if d is None else self.now + d
            elif isinstance(ins, SendTasks):
                sent_now.extend(t.task_id for t in ins.tasks)
                sends[ins.manager_id] += 1
                mid = ins.manager_id
                assert mid not in self.held, "task sent to a held manager"
                assert self.now < self.drain_at[mid], "task sent to a draining manager"
                assert mid in self.s.managers
                for t in ins.tasks:
                    assert t.task_id in self.submitted
                    assert t.task_id not in self.dispatched, "task dispatched twice"
                    self.dispatched.add(t.task_id)
                    self.pool_tasks[mid].add(t.task_id)
            elif isinstance(ins, ForwardResults):
                for r in forwarded([ins]):
                    assert r[0] in self.dispatched, "result for a task never dispatched"
                    self.forwarded[r[0]] += 1
                    assert self.forwarded[r[0]] == 1, f"task {r[0]} forwarded twice"
            elif isinstance(ins, StopManager | RegisterAgain):
                assert ins.manager_id not in self.s.managers
        if not self.auto:
            assert all(n == 1 for n in sends.values()), "more than one SendTasks to a manager in one call"
        # No task is handed out while one of higher priority (lower value) is left waiting.
        waiting = [self.priority[t] for t in self.submitted - self.dispatched]
        if sent_now and waiting:
            assert max(self.priority[t] for t in sent_now) <= min(waiting), "a lower priority went first"

    @rule(n=st.integers(1, 6), priority=st.sampled_from([0.0, 1.0, 5.0, math.inf]))
    def submit(self, n: int, priority: float) -> None:
        events = []
        for _ in range(n):
            tid = self.next_id
            self.next_id += 1
            self.submitted.add(tid)
            self.priority[tid] = priority
            events.append(task(tid, priority))
        self.step(*events)

    @rule(
        mid=st.sampled_from(MANAGER_IDS),
        workers=st.integers(0, 3),
        prefetch=st.integers(0, 2),
        drain_in=st.one_of(st.none(), st.floats(0, 30)),
        block=st.sampled_from(["0", "1"]),
    )
    def register(self, mid: bytes, workers: int, prefetch: int, drain_in: float | None, block: str) -> None:
        self.registering_drain_in = drain_in
        # Each registration here is a new pool process (its own uid, holding nothing); a pool that
        # registers again with its tasks is tests/unit/test_recovery_core.py's subject.
        self.registrations += 1
        self.step(registered(mid, uid=f"{mid.decode()}-{self.registrations}", workers=workers, prefetch=prefetch,
                             drain_in=drain_in, block=block))

    @rule(block=st.sampled_from(["0", "1"]))
    def hold_block(self, block: str) -> None:
        assert self.s is not None
        self.held.update(mid for mid, rec in self.s.managers.items() if rec.block_id == block)
        self.step(HoldBlock(block))

    @rule(
        mid=st.sampled_from(MANAGER_IDS),
        data=st.data(),
        bogus=st.booleans(),
        raw=st.booleans(),
        run_time=st.floats(0, 2),
        outcome=st.sampled_from([Outcome.OK, Outcome.EXCEPTION, Outcome.WORKER_LOST]),
    )
    def results(self, mid, data, bogus, raw, run_time, outcome) -> None:
        holding = sorted(self.pool_tasks[mid])
        chosen = data.draw(st.lists(st.sampled_from(holding), unique=True), label="done") if holding else []
        batch = [(t, outcome, b"p", run_time) for t in chosen]
        if bogus:
            batch.append((data.draw(st.sampled_from([*sorted(self.submitted), 10**9])), Outcome.OK, b"x", 0.0))
        if not batch:
            return
        self.pool_tasks[mid] -= set(chosen)
        self.step(ResultsReceived(mid, batch, raw=join_results(batch)[1] if raw else None))

    @rule(mid=st.sampled_from(MANAGER_IDS))
    def heartbeat(self, mid: bytes) -> None:
        self.step(ManagerHeartbeat(mid))

    @rule(mid=st.sampled_from(MANAGER_IDS))
    def hold(self, mid: bytes) -> None:
        assert self.s is not None
        if mid in self.s.managers:
            self.held.add(mid)
        self.step(HoldManager(mid))

    @rule(mid=st.sampled_from(MANAGER_IDS))
    def goodbye(self, mid: bytes) -> None:
        self.pool_tasks[mid] = set()
        self.step(ManagerGoodbye(mid, "pool exits"))

    @rule(dt=st.floats(0, 1.5 * THRESHOLD))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.step()

    @rule(dt=st.floats(0, 1.0))
    def advance_to_deadline(self, dt: float) -> None:
        assert self.s is not None
        d = self.s.next_deadline()
        if d is not None:
            self.now = max(self.now, d) + dt * 1e-3
        self.step()

    @rule()
    def shutdown(self) -> None:
        self.step(ShutdownAll("test"))

    @invariant()
    def every_task_in_exactly_one_place(self) -> None:
        if self.s is None:
            return
        in_managers: Counter[int] = Counter()
        for rec in self.s.managers.values():
            in_managers.update(rec.tasks.keys())
        assert all(n == 1 for n in in_managers.values()), "task held by two managers"
        assert not (set(in_managers) & set(self.forwarded)), "finished task still held"
        assert set(in_managers) <= self.dispatched
        undispatched = self.submitted - self.dispatched
        assert self.s.pending_count == len(undispatched)
        assert self.s.in_flight_count == len(in_managers)
        # Every dispatched task is either still held by exactly one manager or forwarded exactly once.
        assert self.dispatched == set(in_managers) | set(self.forwarded)
        assert all(n == 1 for n in self.forwarded.values())

    @invariant()
    def capacity_respected(self) -> None:
        if self.s is None:
            return
        for rec in self.s.managers.values():
            limit = rec.capacity
            if self.auto:
                limit += rec.worker_count * AUTO_PREFETCH_MAX_PER_WORKER
            assert len(rec.tasks) <= limit

    @invariant()
    def deadline_in_future(self) -> None:
        if self.s is None:
            return
        d = self.s.next_deadline()
        assert d is None or d > self.now


TestInterchangeMachine = InterchangeMachine.TestCase
TestInterchangeMachine.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@given(
    seed=st.integers(0, 10**6),
    n_tasks=st.integers(0, 60),
    caps=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 3)), min_size=1, max_size=4),
)
@settings(deadline=None, max_examples=60)
def test_everything_completes_when_pools_keep_answering(seed, n_tasks, caps):
    """Liveness: with live pools that answer every task, each task ends in exactly one result."""
    rng = random.Random(seed)
    s = new_state(selector=RandomManagerSelector(seed))
    mids = [b"p%d" % i for i in range(len(caps))]
    s.handle(*[registered(m, workers=w, prefetch=p) for m, (w, p) in zip(mids, caps, strict=True)], now=0.0)
    s.handle(*[task(i, rng.choice([0, 1, math.inf])) for i in range(n_tasks)], now=0.0)
    done: Counter[int] = Counter()
    t = 0.0
    for _ in range(10 * n_tasks + 10):
        if not s.in_flight_count:
            break
        t += 1.0
        m = rng.choice([m for m in mids if s.managers[m].tasks] or mids)
        held = sorted(s.managers[m].tasks)
        finished = rng.sample(held, rng.randint(min(1, len(held)), len(held)))
        out = s.handle(*[ManagerHeartbeat(x) for x in mids], ResultsReceived(m, [ok(x) for x in finished]), now=t)
        done.update(r[0] for r in forwarded(out))
    assert s.pending_count == 0
    assert s.in_flight_count == 0
    assert done == Counter(range(n_tasks))


# ------------------------------------------------------------------------------------- monitoring


def test_every_manager_change_is_reported_for_monitoring():
    from htex_ref.core.interchange import HoldManager, ManagerGoodbye

    s = new_state()
    s.handle(registered(b"a", block="1", workers=2), registered(b"b", block="2", workers=1),
             registered(b"c", block="3", workers=1, drain_in=0.5), now=0.0)
    s.handle(HoldManager(b"a"), now=1.0)
    s.handle(ManagerGoodbye(b"a", "drained"), now=2.0)
    s.handle(now=THRESHOLD + 1.0)  # b falls silent past the threshold
    assert [(c.uid, c.event) for c in s.changes if c.uid != "c"] == [
        ("a", "registered"), ("b", "registered"), ("a", "held"), ("a", "gone"), ("b", "gone")]
    assert [c.event for c in s.changes if c.uid == "c"][:3] == ["registered", "draining", "gone"]
    s.changes = [c for c in s.changes if c.uid != "c"]
    assert s.changes[3].detail == "exited: drained" and s.changes[4].detail.startswith("lost: no heartbeat")
    assert (s.changes[0].block_id, s.changes[0].workers) == ("1", 2)
