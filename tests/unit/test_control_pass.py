"""Block control's pass as a decision table: what it observes in, the instructions it gives out, in order.

Each row sets up block control (``htex_ref.core.blocks.BlockControl``) through a few steps, then runs one
more step and compares every instruction carried out (launch, cancel, hold, report ended, fail all) with
the row's expectation. Steps are what the control thread feeds it: a wake (``None``) or a request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from htex_ref.core.blocks import (
    EXTERNAL,
    BlockEnded,
    Cancel,
    ExternalPass,
    FailAll,
    FailOutstanding,
    HoldBlock,
    Launch,
    Launched,
    ScaleIn,
    ScaleOut,
    Shutdown,
    Start,
    StatusQuery,
    Tick,
)
from htex_ref.core.interchange import BlockLoad
from htex_ref.core.jobs import JobState
from tests.unit.control_harness import FakeProvider, Harness

R, P, C, F, TO = JobState.RUNNING, JobState.PENDING, JobState.COMPLETED, JobState.FAILED, JobState.TIMEOUT


def idle(seconds: float, managers: int = 1, active: int = 1) -> BlockLoad:
    return BlockLoad(managers=managers, active=active, workers=managers, tasks=0, idle_for=seconds)


def busy(tasks: int) -> BlockLoad:
    return BlockLoad(managers=1, active=1, workers=1, tasks=tasks, idle_for=None)


def kinds(done: list[Any]) -> list[tuple[Any, ...]]:
    """Instructions as comparable tuples (a FailAll by its failure's headline or error)."""
    out: list[tuple[Any, ...]] = []
    for ins in done:
        if isinstance(ins, Launch):
            out.append(("launch", ins.block_id))
        elif isinstance(ins, Cancel):
            out.append(("cancel", ins.block_ids, ins.scaled_in))
        elif isinstance(ins, HoldBlock):
            out.append(("hold", ins.block_id))
        elif isinstance(ins, BlockEnded):
            out.append(("ended", ins.block_id, ins.reason))
        elif isinstance(ins, FailAll):
            out.append(("fail all", ins.failure.headline))
        elif isinstance(ins, FailOutstanding):
            out.append(("fail outstanding",))
    return out


@dataclass
class Row:
    name: str
    #: Builds the harness and brings it to the state before the step under test.
    setup: Callable[[], Harness]
    #: The step under test: a request, or None for a wake; at ``now``.
    step: Any
    now: float
    expect: list[tuple[Any, ...]]
    kw: dict[str, Any] = field(default_factory=dict)


def started(init: int = 1, **kw: Any) -> Harness:
    h = Harness(FakeProvider(init_blocks=init, max_blocks=kw.pop("max_blocks", 4), min_blocks=kw.pop("min_blocks", 0)),
                **kw)
    h.run(Start(), 0.0)
    return h


def registered_running(init: int = 1, **kw: Any) -> Harness:
    h = started(init, **kw)
    h.set_jobs(R)
    h.registered = [str(b) for b in range(init)]
    h.run(None, 5.0)  # first refresh: all running and registered
    return h


def ended_after_registering() -> Harness:
    h = registered_running(2)
    h.set_jobs(C, "0")
    return h


def failed_before_registering() -> Harness:
    h = started(1)
    h.set_jobs(F, "0")
    return h


def timed_out() -> Harness:
    h = started(1, registration_timeout=30.0)
    h.set_jobs(R)
    h.run(None, 5.0)  # first seen running at 5
    return h


def demand(outstanding: int, strategy: str = "simple", **kw: Any) -> Callable[[], Harness]:
    def make() -> Harness:
        h = started(0, strategy=strategy, **kw)
        h.outstanding = outstanding
        return h
    return make


def idle_blocks(strategy: str) -> Callable[[], Harness]:
    def make() -> Harness:
        h = registered_running(2, strategy=strategy, max_idletime=60.0)
        h.loads = {"0": idle(100.0), "1": idle(10.0)}
        h.run(None, 10.0)  # no work since the start (the idle timer runs from the first pass, at 0)
        return h
    return make


def idle_and_pending() -> Harness:
    """Block 0 registered and idle 100 s, block 1 registered and idle 10 s, block 2 busy, block 3 pending."""
    h = registered_running(3, max_idletime=60.0)
    h.loads = {"0": idle(100.0), "1": idle(10.0), "2": busy(1)}
    h.run(ScaleOut(1), 6.0)
    return h


def in_bad_state() -> Harness:
    h = registered_running(1, strategy="simple")
    h.bad_state = True
    h.outstanding = 50
    h.set_jobs(C, "0")
    return h


def shutting_down() -> Harness:
    h = registered_running(2)
    h.set_jobs(C, "1")
    return h


ROWS = [
    Row("start launches init_blocks, even with strategy none", lambda: Harness(FakeProvider(init_blocks=2)),
        Start(), 0.0, [("launch", "0"), ("launch", "1")]),
    Row("a block that ended after registering is reported to the interchange once",
        ended_after_registering, None, 10.0, [("ended", "0", "ended (COMPLETED)")]),
    Row("a block that failed before registering fails the executor (simple rule), nothing reported",
        failed_before_registering, None, 5.0, [("fail all", "all 1 blocks of executor hx failed:")]),
    Row("a block that runs past the registration time-out is cancelled (not scaled in), then judged",
        timed_out, None, 35.0, [("cancel", ("0",), False), ("fail all", "all 1 blocks of executor hx failed:")]),
    Row("demand with no block: one block per 1-worker node per task, up to max_blocks",
        demand(3), None, 5.0, [("launch", "0"), ("launch", "1"), ("launch", "2")]),
    Row("demand on 2-node blocks of 2 workers per node: 4 tasks a block",
        demand(8, extra={"nodes_per_block": 2, "workers_per_node": 2}), None, 5.0, [("launch", "0"), ("launch", "1")]),
    Row("MPI mode: a block runs one pool, so 2 tasks a block however many nodes it has",
        demand(8, extra={"nodes_per_block": 2, "workers_per_node": 2, "mpi_mode": True}), None, 5.0,
        [("launch", "0"), ("launch", "1"), ("launch", "2"), ("launch", "3")]),
    Row("demand is capped by max_blocks", demand(9, max_blocks=2), None, 5.0, [("launch", "0"), ("launch", "1")]),
    Row("strategy none never scales on demand", demand(9, strategy="none"), None, 5.0, []),
    Row("no work for max_idletime: hold, cancel (scaled in), report; longest idle first, down to min_blocks",
        idle_blocks("simple"), None, 70.0,
        [("hold", "0"), ("hold", "1"), ("cancel", ("0", "1"), True), ("ended", "0", ""), ("ended", "1", "")]),
    Row("not yet idle for max_idletime: nothing", idle_blocks("simple"), None, 55.0, []),
    Row("in bad state: no refresh, no report, no scaling", in_bad_state, None, 10.0, []),
    Row("scale_in(1) takes the longest idle block: hold, cancel, report", idle_blocks("none"), ScaleIn(1), 20.0,
        [("hold", "0"), ("cancel", ("0",), True), ("ended", "0", "")]),
    Row("scale_in(block_ids) takes exactly the live ones named", idle_blocks("none"), ScaleIn(block_ids=("1", "7")),
        20.0, [("hold", "1"), ("cancel", ("1",), True), ("ended", "1", "")]),
    Row("scale_in(n, max_idletime) takes only registered blocks idle for longer, never a pending one",
        idle_and_pending, ScaleIn(3, max_idletime=30.0), 20.0, [("hold", "0"), ("cancel", ("0",), True),
                                                                 ("ended", "0", "")]),
    Row("scale_in(n, max_idletime=0): every idle registered block, still none pending or busy",
        idle_and_pending, ScaleIn(4, max_idletime=0.0), 20.0,
        [("hold", "0"), ("hold", "1"), ("cancel", ("0", "1"), True), ("ended", "0", ""), ("ended", "1", "")]),
    Row("external strategy: start launches nothing, not even init_blocks",
        lambda: Harness(FakeProvider(init_blocks=2), strategy=EXTERNAL), Start(), 0.0, []),
    Row("external strategy: no scaling on demand (the other scheduler decides)",
        demand(9, strategy=EXTERNAL), None, 5.0, []),
    Row("a status query with fresh statuses is this pass's refresh: a block that ended is reported",
        ended_after_registering, StatusQuery(with_missing=True), 6.0, [("ended", "0", "ended (COMPLETED)")]),
    Row("scale_out(2) launches two blocks with the next ids", lambda: started(1), ScaleOut(2), 1.0,
        [("launch", "1"), ("launch", "2")]),
    Row("shutdown cancels every live block and tells the interchange nothing", shutting_down, Shutdown(), 20.0,
        [("cancel", ("0",), True)]),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_decision_table(row: Row) -> None:
    h = row.setup()
    assert kinds(h.step(row.step, row.now)) == row.expect


def test_answers_name_what_was_done() -> None:
    h = started(1)
    assert h.run(ScaleOut(2), 1.0) == ["1", "2"]
    h.set_jobs(R)
    assert h.run(ScaleIn(block_ids=("2",)), 2.0) == ["2"]
    assert h.run(Shutdown(), 3.0) == ["0", "1"]


def test_a_block_launched_after_shutdown_began_is_cancelled_when_its_job_id_comes_back() -> None:
    # The control thread was inside provider.submit for block 1 when shutdown was asked for; the launch's
    # feedback reaches block control after the Shutdown request (the race the control thread prevents,
    # replayed here in the worst order).
    h = started(1)
    h.set_jobs(R)
    assert h.run(Shutdown(), 1.0) == ["0"]
    done = h.core.handle(Launched("1", "j9"), now=1.5)
    assert kinds(done) == [("cancel", ("1",), True)]


def test_a_scaling_pass_sees_the_blocks_it_just_launched() -> None:
    # Launched blocks count as live in the next strategy pass, before any status refresh has seen them.
    h = started(0, strategy="simple", max_blocks=4, status_interval=100.0)
    h.outstanding = 2
    assert kinds(h.step(None, 5.0)) == [("launch", "0"), ("launch", "1")]
    assert kinds(h.step(None, 10.0)) == []  # no refresh since: still two pending blocks, enough for 2 tasks


def test_registered_history_is_read_incrementally() -> None:
    h = registered_running(2)
    assert h.core.registered == {"0", "1"}
    h.registered = ["0", "1", "5"]
    h.run(None, 10.0)
    assert h.core.registered == {"0", "1", "5"}


# ------------------------------------------------------------------------------------- no silent wait


def waiting(strategy: str = "none", init: int = 0, max_blocks: int = 4, since: float = 5.0) -> Harness:
    """Three tasks outstanding from ``since`` on, and (unless the strategy starts one) no block."""
    h = started(init, strategy=strategy, max_blocks=max_blocks)
    h.outstanding = 3
    h.run(None, since)
    return h


def all_scaled_in() -> Harness:
    h = registered_running(2)
    assert h.run(ScaleIn(2), 6.0) == ["0", "1"]
    h.outstanding = 3
    h.run(None, 10.0)
    return h


@pytest.mark.parametrize(("setup", "now", "fails"), [
    (lambda: waiting(), 9.9, False),  # within the grace (5 s): a user may still call scale_out
    (lambda: waiting(), 10.0, True),  # strategy none, init_blocks=0: nothing will ever start a block
    (lambda: waiting(strategy="simple"), 10.0, False),  # the strategy launched a block instead
    (lambda: waiting(strategy="simple", max_blocks=0), 10.0, True),  # ... unless max_blocks forbids it
    (lambda: waiting(init=1), 10.0, False),  # a pending block will run them
    (all_scaled_in, 15.0, True),  # every block scaled in, strategy none
])
def test_tasks_never_wait_for_a_block_nothing_will_start(setup: Any, now: float, fails: bool) -> None:
    h = setup()
    assert (("fail outstanding",) in kinds(h.step(None, now))) is fails


def test_under_an_external_scheduler_tasks_fail_after_two_passes_that_start_nothing() -> None:
    h = started(0, strategy=EXTERNAL)
    h.outstanding = 3
    h.run(None, 1.0)  # tasks wait from 1 s on; the wake alone never fails them
    assert kinds(h.step(None, 30.0)) == []
    assert kinds(h.step(ExternalPass(3), 31.0)) == []  # one pass that started nothing
    # The next pass (the scheduler's period later) launched nothing either: nothing will.
    assert kinds(h.step(ExternalPass(3), 36.0)) == [("fail outstanding",)]
    reason = next(i.reason for i in h.done if isinstance(i, FailOutstanding))
    assert "3 task(s) of executor hx waited 35 s" in reason and "started none in 2 passes" in reason
    assert "Config(strategy='simple')" in reason


def test_under_an_external_scheduler_a_pass_that_launches_keeps_tasks_waiting() -> None:
    # As under the adapter: the other scheduler judges failed blocks, block control does not.
    h = started(0, strategy=EXTERNAL, block_error_handler=False)
    h.outstanding = 3
    assert kinds(h.step(ExternalPass(3), 1.0)) == []
    assert h.run(ScaleOut(1), 1.1) == ["0"]  # the scheduler's strategy, after its pass
    assert kinds(h.step(ExternalPass(3), 6.0)) == []
    assert kinds(h.step(ExternalPass(3), 11.0)) == []  # the block is pending: the tasks wait for it
    h.set_jobs(JobState.COMPLETED)  # it ended; nothing replaces it in the next two passes
    assert kinds(h.step(None, 12.0)) == [("ended", "0", "ended (MISSING)")]  # it never registered
    assert kinds(h.step(ExternalPass(3), 16.0)) == []
    assert kinds(h.step(ExternalPass(3), 21.0)) == [("fail outstanding",)]


def test_the_grace_starts_again_after_tasks_are_failed_or_a_block_appears() -> None:
    h = waiting()
    assert kinds(h.step(None, 10.0)) == [("fail outstanding",)]
    reason = next(i.reason for i in h.done if isinstance(i, FailOutstanding))
    assert "3 task(s) of executor hx waited 5 s" in reason and "strategy='none'" in reason
    assert "scale_out()" in reason and "strategy='simple'" in reason
    assert kinds(h.step(None, 11.0)) == []  # new tasks get a grace of their own
    assert h.run(ScaleOut(1), 12.0) == ["0"]
    assert kinds(h.step(None, 30.0)) == []  # a block is pending: they wait for it
    fail = [i for i in h.core.handle(Tick(), now=31.0) if isinstance(i, FailOutstanding)]
    assert fail == []
