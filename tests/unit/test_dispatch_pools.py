"""The interchange's dispatch structures against a brute-force model.

The interchange keeps its candidate managers in pools updated by events, so that dispatch never scans
the manager table. These tests check that this gives the same choices as a naive scan of every manager
would: the pools alone (random add/discard/choose sequences against a dict), and inside the interchange
core (random registrations, results that change capacity and run times, holds, drains, expiries,
goodbyes and cancelled blocks), where every single choice is checked against a scan made at that moment.
"""

from __future__ import annotations

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
    BlockCancelled,
    HoldManager,
    InterchangeState,
    ManagerGoodbye,
    ManagerHeartbeat,
    ManagerRecord,
    ManagerRegistered,
    QueuedTask,
    ResultsReceived,
    SendTasks,
    TaskSubmitted,
)
from htex_ref.core.selectors import (
    BlockIdManagerSelector,
    BlockIdPool,
    CandidatePool,
    ManagerSelector,
    RandomManagerSelector,
    RandomPool,
)
from htex_ref.protocol import Outcome, Registration
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__

BLOCK_IDS = ["0", "1", "2", "9", "10", "x", None]


@dataclass
class Cand:
    block_id: str | None


# -------------------------------------------------------------------------------------- pools alone

pool_ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "discard", "choose"]),
        st.sampled_from([b"a", b"b", b"c", b"d", b"e", b"f"]),
        st.sampled_from(BLOCK_IDS),
    ),
    max_size=200,
)


@pytest.mark.parametrize("kind", ["random", "block_id"])
@given(ops=pool_ops, seed=st.integers(0, 100))
@settings(max_examples=300)
def test_pool_matches_a_dict_model(kind: str, ops: list[tuple[str, bytes, str | None]], seed: int) -> None:
    selector: ManagerSelector = RandomManagerSelector(seed) if kind == "random" else BlockIdManagerSelector()
    pool = selector.new_pool()
    model: dict[bytes, Cand] = {}
    for op, mid, block in ops:
        if op == "add":
            pool.add(mid, block)
            model.setdefault(mid, Cand(block))  # adding a member again changes nothing
        elif op == "discard":
            pool.discard(mid)
            model.pop(mid, None)
        elif model:
            got = pool.choose()
            assert got in model
            if kind == "block_id":
                assert got == BlockIdManagerSelector().choose(model)
        assert len(pool) == len(model)
        assert all((m in pool) == (m in model) for m in [b"a", b"b", b"c", b"d", b"e", b"f"])


def test_block_id_pool_follows_a_manager_that_returns_with_another_block() -> None:
    pool = BlockIdPool()
    pool.add(b"m", "10")
    pool.add(b"n", "5")
    pool.discard(b"m")
    pool.add(b"m", "1")  # the stale entry for block 10 must not win
    assert pool.choose() == b"n"
    pool.discard(b"n")
    assert pool.choose() == b"m"


def test_block_id_pool_stays_small_when_members_come_and_go() -> None:
    pool = BlockIdPool()
    pool.add(b"top", "99")
    for _ in range(10_000):
        pool.add(b"low", "1")
        pool.discard(b"low")
    assert len(pool._heap) <= 2 * len(pool) + 17
    assert pool.choose() == b"top"


def test_random_pool_is_uniform() -> None:
    pool = RandomPool(random.Random(7))
    for i in range(10):
        pool.add(b"m%d" % i, None)
    pool.discard(b"m3")  # swaps the last member into the hole
    counts = Counter(pool.choose() for _ in range(45_000))
    assert set(counts) == {b"m%d" % i for i in range(10) if i != 3}
    # 5,000 expected each; a uniform draw stays within +-10% here with overwhelming probability.
    assert all(4_500 < n < 5_500 for n in counts.values()), counts


# ------------------------------------------------------------------------- inside the interchange


def naive_candidates(state: InterchangeState, which: str) -> dict[bytes, ManagerRecord]:
    """What a scan of every manager would offer, by the rules in the interchange core's docstring."""
    out = {}
    for mid, rec in state.managers.items():
        if not rec.active or rec.draining:
            continue
        can_prefetch = state.auto_prefetch and rec.free <= 0 and state._prefetch_room(rec) > 0
        if (which == "free" and rec.free > 0) or (which == "prefetch" and can_prefetch):
            out[mid] = rec
    return out


class CheckedPool:
    """Wraps a pool inside an InterchangeState; every choice is compared with a naive scan."""

    def __init__(self, inner: CandidatePool, state: InterchangeState, which: str, selector: ManagerSelector) -> None:
        self.inner = inner
        self.state = state
        self.which = which
        self.selector = selector
        self.choices = 0

    def add(self, manager_id: bytes, block_id: str | None) -> None:
        self.inner.add(manager_id, block_id)

    def discard(self, manager_id: bytes) -> None:
        self.inner.discard(manager_id)

    def __len__(self) -> int:
        return len(self.inner)

    def __contains__(self, manager_id: object) -> bool:
        return manager_id in self.inner

    def check_members(self) -> dict[bytes, ManagerRecord]:
        naive = naive_candidates(self.state, self.which)
        assert len(self.inner) == len(naive), (self.which, len(self.inner), sorted(naive))
        assert all(m in self.inner for m in naive), self.which
        return naive

    def choose(self) -> bytes:
        naive = self.check_members()
        got = self.inner.choose()
        assert got in naive
        if isinstance(self.selector, BlockIdManagerSelector):
            assert got == self.selector.choose(naive)
        self.choices += 1
        return got


def registration(mid: bytes, block: str | None, workers: int, prefetch: int, drain_in: float | None) -> Registration:
    return Registration(
        protocol_version=PROTOCOL_VERSION, htex_ref_version=__version__, python_version=PYTHON_VERSION,
        uid=mid.decode(), block_id=block, worker_count=workers, prefetch_capacity=prefetch, hostname="h",
        pid=1, cpu_count=4, total_memory=1, os="Linux", drain_in=drain_in,
    )


MIDS = [b"m%d" % i for i in range(8)]
THRESHOLD = 10.0


class DispatchMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.s: InterchangeState | None = None
        self.pools: list[CheckedPool] = []

    @initialize(kind=st.sampled_from(["random", "block_id"]), auto=st.booleans(), seed=st.integers(0, 99))
    def setup(self, kind: str, auto: bool, seed: int) -> None:
        selector: ManagerSelector = RandomManagerSelector(seed) if kind == "random" else BlockIdManagerSelector()
        s = InterchangeState(heartbeat_threshold=THRESHOLD, selector=selector, auto_prefetch=auto)
        self.pools = [CheckedPool(s._free, s, "free", selector), CheckedPool(s._prefetchable, s, "prefetch", selector)]
        s._free, s._prefetchable = self.pools  # type: ignore[assignment]
        self.s = s
        self.now = 0.0
        self.next_id = 0
        self.held_by_pool: dict[bytes, set[int]] = {m: set() for m in MIDS}
        self.answered: Counter[int] = Counter()

    def step(self, *events: Any) -> None:
        assert self.s is not None
        for ins in self.s.handle(*events, now=self.now):
            if isinstance(ins, SendTasks):
                self.held_by_pool[ins.manager_id].update(t.task_id for t in ins.tasks)
            elif hasattr(ins, "results"):
                self.answered.update(r[0] for r in ins.results)
                for raw in ins.raw:
                    raise AssertionError(f"no raw batches are sent here, got {raw!r}")

    @rule(n=st.integers(1, 40), priority=st.sampled_from([0.0, 1.0, math.inf]))
    def submit(self, n: int, priority: float) -> None:
        events = []
        for _ in range(n):
            events.append(TaskSubmitted(QueuedTask(self.next_id, priority, (b"", b"", b""))))
            self.next_id += 1
        self.step(*events)

    @rule(mid=st.sampled_from(MIDS), block=st.sampled_from(BLOCK_IDS), workers=st.integers(1, 4),
          prefetch=st.integers(0, 2), drain_in=st.one_of(st.none(), st.floats(0, 20)))
    def register(self, mid: bytes, block: str | None, workers: int, prefetch: int, drain_in: float | None) -> None:
        if self.s is not None and mid not in self.s.managers:
            self.held_by_pool[mid] = set()
        self.step(ManagerRegistered(mid, registration(mid, block, workers, prefetch, drain_in)))

    @rule(mid=st.sampled_from(MIDS), data=st.data(), run_time=st.sampled_from([0.0, 0.001, 0.02, 0.5, 3.0]))
    def results(self, mid: bytes, data: st.DataObject, run_time: float) -> None:
        holding = sorted(self.held_by_pool[mid])
        if not holding:
            return
        done = data.draw(st.lists(st.sampled_from(holding), unique=True, min_size=1), label="done")
        self.held_by_pool[mid] -= set(done)
        self.step(ResultsReceived(mid, [(t, Outcome.OK, b"r", run_time) for t in done]))

    @rule(mid=st.sampled_from(MIDS))
    def heartbeat(self, mid: bytes) -> None:
        self.step(ManagerHeartbeat(mid))

    @rule(mid=st.sampled_from(MIDS))
    def hold(self, mid: bytes) -> None:
        self.step(HoldManager(mid))

    @rule(mid=st.sampled_from(MIDS))
    def goodbye(self, mid: bytes) -> None:
        self.held_by_pool[mid] = set()
        self.step(ManagerGoodbye(mid, "exit"))

    @rule(block=st.sampled_from(BLOCK_IDS[:-1]))
    def cancel_block(self, block: str) -> None:
        assert self.s is not None
        for mid, rec in self.s.managers.items():
            if rec.block_id == block:
                self.held_by_pool[mid] = set()
        self.step(BlockCancelled(block))

    @rule(dt=st.floats(0, 1.5 * THRESHOLD))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.step()

    @invariant()
    def pools_match_a_scan(self) -> None:
        for pool in self.pools:
            pool.check_members()

    @invariant()
    def each_task_answered_at_most_once(self) -> None:
        assert all(n == 1 for n in self.answered.values())


TestDispatchMachine = DispatchMachine.TestCase
TestDispatchMachine.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("selector", [RandomManagerSelector(3), BlockIdManagerSelector()])
def test_dispatch_work_does_not_visit_every_manager(selector: ManagerSelector) -> None:
    """With 2,000 managers registered and only one with room, a result and a new task touch one manager.

    The manager table is swapped for a mapping that counts how often it is iterated: a scan of all
    managers (as a list for a random choice, or a prefetch pass) would show up as an iteration.
    """

    class CountingDict(dict[bytes, ManagerRecord]):
        iterations = 0

        def __iter__(self) -> Any:
            CountingDict.iterations += 1
            return super().__iter__()

        def values(self) -> Any:
            CountingDict.iterations += 1
            return super().values()

        def items(self) -> Any:
            CountingDict.iterations += 1
            return super().items()

    s = InterchangeState(heartbeat_threshold=THRESHOLD, selector=selector, auto_prefetch=True)
    s.managers = CountingDict()
    mids = [b"x%05d" % i for i in range(2000)]
    s.handle(*[ManagerRegistered(m, registration(m, str(i % 50), 2, 0, None)) for i, m in enumerate(mids)], now=0.0)
    out = s.handle(*[TaskSubmitted(QueuedTask(i, math.inf, (b"", b"", b""))) for i in range(4000 + 100)], now=0.0)
    holder = {t.task_id: ins.manager_id for ins in out if isinstance(ins, SendTasks) for t in ins.tasks}
    assert s.pending_count == 100 and s.in_flight_count == 4000 == len(holder)
    CountingDict.iterations = 0
    for i in range(4000):
        mid = holder[i]
        out = s.handle(ResultsReceived(mid, [(i, Outcome.OK, b"r", 5.0)]), now=1.0)
        if i < 100:
            assert [ins.manager_id for ins in out if isinstance(ins, SendTasks)] == [mid]
    assert CountingDict.iterations == 0
    assert s.pending_count == 0


# ------------------------------------------------------------------------------------ task queue


@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.sampled_from([0.0, -1.0, 2.5, math.inf, -math.inf])),
            st.tuples(st.just("take"), st.integers(0, 9)),
        ),
        max_size=300,
    )
)
@settings(max_examples=300)
def test_pending_queue_matches_a_heap(ops: list[tuple[str, float]]) -> None:
    """Priority order, arrival order within a priority, and the count, as a (priority, seq) heap gives."""
    import heapq

    from htex_ref.core.interchange import PendingQueue

    PendingQueue.COMPACT_AT = 3  # exercise compaction on small queues too
    q = PendingQueue()
    model: list[tuple[float, int]] = []
    seq = 0
    try:
        for op, arg in ops:
            if op == "push":
                q.push(QueuedTask(seq, arg, (b"", b"", b"")))
                heapq.heappush(model, (arg, seq))
                seq += 1
            else:
                got = [t.task_id for t in q.take(int(arg))]
                want = [heapq.heappop(model)[1] for _ in range(min(int(arg), len(model)))]
                assert got == want
            assert len(q) == len(model)
    finally:
        PendingQueue.COMPACT_AT = 4096
