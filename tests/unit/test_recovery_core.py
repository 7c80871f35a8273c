"""Recovery from lost connections, partitions and interchange restarts, in the pure cores.

Scenario tests for the rules that issue 20 added (interchange rules 9-11, manager rules 5 and 12), and
a stateful hypothesis test that runs the real ``InterchangeState`` and ``ManagerState`` objects over a
network model that loses, delays and repeats messages, cuts connections, partitions pools past the
heartbeat threshold and restarts the interchange, then heals everything and checks that every task
ended exactly once and that no result reached the executor twice.
"""

from __future__ import annotations

import math
import signal
from collections import Counter, deque
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from htex_ref.core import interchange as ic
from htex_ref.core import manager as mg
from htex_ref.core.notes import Note
from htex_ref.core.selectors import RandomManagerSelector
from htex_ref.protocol import Outcome, Registration
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__

THRESHOLD = 5.0


def reg(uid: str, workers: int = 1, held: tuple[int, ...] = (), block: str = "0") -> Registration:
    return Registration(PROTOCOL_VERSION, __version__, PYTHON_VERSION, uid, block, workers, 0, "node", 1, 1, 1,
                        "Linux", held=held)


def qtask(tid: int) -> ic.QueuedTask:
    return ic.QueuedTask(tid, math.inf, (b"h%d" % tid, b"f", b"a"))


def acts(out: list[Any], kind: type) -> list[Any]:
    return [i for i in out if isinstance(i, kind)]


def sent_ids(out: list[Any], mid: bytes) -> list[int]:
    return [t.task_id for i in acts(out, ic.SendTasks) if i.manager_id == mid for t in i.tasks]


def forwarded_ids(out: list[Any]) -> list[int]:
    return [r[0] for i in acts(out, ic.ForwardResults) for r in i.results]


def ok(tid: int) -> tuple[int, Outcome, bytes, float]:
    return (tid, Outcome.OK, b"v%d" % tid, 1.0)


# --------------------------------------------------------------------------- interchange scenarios


def test_every_result_is_acknowledged_accepted_or_not():
    s = ic.InterchangeState(THRESHOLD, selector=RandomManagerSelector(7))
    s.handle(ic.ManagerRegistered(b"a", reg("a", 2)), ic.TaskSubmitted(qtask(1)), ic.TaskSubmitted(qtask(2)), now=0)
    out = s.handle(ic.ResultsReceived(b"a", [ok(1), ok(1), ok(99)]), now=1)
    assert forwarded_ids(out) == [1]
    assert [a.task_ids for a in acts(out, ic.AckResults)] == [[1, 1, 99]]


def test_reregistration_keeps_named_tasks_and_requeues_the_ones_that_never_arrived_first():
    s = ic.InterchangeState(THRESHOLD, selector=RandomManagerSelector(7))
    s.handle(ic.ManagerRegistered(b"a", reg("a", 3)), *(ic.TaskSubmitted(qtask(t)) for t in (1, 2, 3)), now=0)
    s.handle(ic.TaskSubmitted(qtask(4)), now=0.5)
    assert s.managers[b"a"].tasks.keys() == {1, 2, 3} and s.pending_count == 1
    # The connection dropped: task 2 was sent into it and never arrived.
    out = s.handle(ic.ManagerRegistered(b"a", reg("a", 3, held=(1, 3))), now=1)
    assert acts(out, ic.AcceptRegistration) and not acts(out, ic.DropOnManager)
    # 2 goes back ahead of 4 (it was handed out first) and, with a slot free again, to the same pool.
    assert sent_ids(out, b"a") == [2]
    assert s.managers[b"a"].tasks.keys() == {1, 2, 3} and s.pending_count == 1
    assert s.in_flight_count == 3


def test_a_pool_declared_lost_comes_back_and_is_told_to_drop_its_tasks():
    s = ic.InterchangeState(THRESHOLD, selector=RandomManagerSelector(7))
    s.handle(ic.ManagerRegistered(b"a", reg("a", 2)), ic.TaskSubmitted(qtask(1)), ic.TaskSubmitted(qtask(2)), now=0)
    out = s.handle(now=THRESHOLD + 0.1)
    assert sorted(r[0] for i in acts(out, ic.ForwardResults) for r in i.results
                  if r[1] is Outcome.MANAGER_LOST) == [1, 2]
    # Its late results are neither forwarded nor acknowledged; it is asked to register again.
    out = s.handle(ic.ResultsReceived(b"a", [ok(1)]), now=THRESHOLD + 1)
    assert not forwarded_ids(out) and not acts(out, ic.AckResults)
    assert acts(out, ic.RegisterAgain)
    # Retried by the executor (the same id), task 1 waits in the queue; the returning pool must not
    # adopt it (its run was given up), and drops both of its tasks.
    s.handle(ic.TaskSubmitted(qtask(1)), now=THRESHOLD + 1.5)
    assert s.pending_count == 1
    out = s.handle(ic.ManagerRegistered(b"a", reg("a", 2, held=(1, 2))), now=THRESHOLD + 2)
    assert [d.task_ids for d in acts(out, ic.DropOnManager)] == [(1, 2)]
    # It is a fresh pool now: the retried copy may run there.
    assert sent_ids(out, b"a") == [1]


def test_a_stopped_pool_or_one_of_an_ended_block_is_refused():
    s = ic.InterchangeState(THRESHOLD, selector=RandomManagerSelector(7))
    s.handle(ic.ManagerRegistered(b"a", reg("a", 1, block="0")), ic.ManagerRegistered(b"b", reg("b", 1, block="1")),
             now=0)
    out = s.handle(ic.ShutdownAll("test"), now=1)
    assert {i.manager_id for i in acts(out, ic.StopManager)} == {b"a", b"b"}
    out = s.handle(ic.ManagerHeartbeat(b"a"), now=2)
    assert acts(out, ic.StopManager) and not acts(out, ic.RegisterAgain)
    out = s.handle(ic.ManagerRegistered(b"a", reg("a", 1)), now=2)
    assert acts(out, ic.RejectRegistration)
    s2 = ic.InterchangeState(THRESHOLD, selector=RandomManagerSelector(7))
    s2.handle(ic.BlockCancelled("7"), now=0)
    out = s2.handle(ic.ManagerRegistered(b"c", reg("c", 1, block="7")), now=1)
    assert "block 7" in acts(out, ic.RejectRegistration)[0].reason


def test_recovery_adopts_claimed_tasks_and_requeues_the_rest_when_the_window_ends():
    s = ic.InterchangeState(THRESHOLD, selector=RandomManagerSelector(7))
    s.handle(*(ic.RecoverTask(qtask(t)) for t in (1, 2, 3, 4)), ic.RecoveryStart(window=3.0, managers=None), now=0)
    assert s.recovering and s.pending_count == 0 and s.next_deadline() == 3.0
    # A pool holding 2 (running) and 9 (finished, unacknowledged, already delivered: not outstanding).
    out = s.handle(ic.ManagerRegistered(b"a", reg("a", 2, held=(2, 9))), now=0.5)
    assert [d.task_ids for d in acts(out, ic.DropOnManager)] == [(9,)]
    assert s.managers[b"a"].tasks.keys() == {2} and not sent_ids(out, b"a")
    # A task submitted during recovery runs at once.
    out = s.handle(ic.TaskSubmitted(qtask(5)), now=1.0)
    assert sent_ids(out, b"a") == [5]
    out = s.handle(now=3.0)
    rec = acts(out, ic.Recovered)
    assert rec == [ic.Recovered([1, 3, 4], 1, 1)]
    assert not s.recovering and s.pending_count == 3


def test_recovery_ends_as_soon_as_the_pools_last_seen_are_back():
    s = ic.InterchangeState(THRESHOLD, selector=RandomManagerSelector(7))
    s.handle(ic.RecoverTask(qtask(1)), ic.RecoverTask(qtask(2)), ic.RecoveryStart(window=30.0, managers=2), now=0)
    out = s.handle(ic.ManagerRegistered(b"a", reg("a", 1, held=(1,))), now=0.2)
    assert not acts(out, ic.Recovered)
    out = s.handle(ic.ManagerRegistered(b"b", reg("b", 1)), now=0.4)
    assert acts(out, ic.Recovered) == [ic.Recovered([2], 1, 2)]
    assert sent_ids(out, b"b") == [2]


def test_a_cancel_during_recovery_removes_the_waiting_task():
    s = ic.InterchangeState(THRESHOLD, selector=RandomManagerSelector(7))
    s.handle(ic.RecoverTask(qtask(1)), ic.RecoverTask(qtask(2)), ic.RecoveryStart(window=1.0), now=0)
    s.handle(ic.CancelTasks((1,)), now=0.1)
    out = s.handle(now=1.0)
    assert acts(out, ic.Recovered)[0].requeued == [2]


# ------------------------------------------------------------------------------- manager scenarios


def pool(workers: int = 1, **kw: Any) -> mg.ManagerState:
    kw.setdefault("heartbeat_period", 1e9)
    kw.setdefault("heartbeat_threshold", 1e9)
    return mg.ManagerState(worker_count=workers, now=0.0, **kw)


def ptasks(*ids: int) -> mg.TasksArrived:
    return mg.TasksArrived([mg.PoolTask(i, (b"h%d" % i, b"f", b"a")) for i in ids])


def quiet(out: list[Any]) -> list[Any]:
    return [i for i in out if not isinstance(i, Note)]


def test_results_are_kept_until_acknowledged_and_sent_again_after_registering_again():
    m = pool(1)
    m.handle(mg.WorkerReady(0), ptasks(1, 2), now=0)
    out = m.handle(mg.WorkerResult(0, 1, Outcome.OK, b"v1", 5.0), now=1)
    assert [r[0] for i in acts(out, mg.SendResults) for r in i.results] == [1]
    assert set(m.unacked) == {1}
    assert m.held_ids() == (1, 2)
    # The connection drops and comes back: the pool registers again naming both.
    m.handle(mg.InterchangeDisconnected(), now=2)
    out = m.handle(mg.InterchangeConnected(), now=3)
    assert acts(out, mg.Register) == [mg.Register((1, 2))]
    out = m.handle(mg.RegistrationAccepted(), now=3.1)
    assert [r[0] for i in acts(out, mg.SendResults) for r in i.results] == [1]
    m.handle(mg.ResultsAcked((1,)), now=3.2)
    assert m.unacked == {} and m.held_ids() == (2,)


def test_a_request_to_register_again_is_answered_once_per_heartbeat_period():
    m = pool(1, heartbeat_period=2.0, heartbeat_threshold=10.0)
    out = m.handle(mg.RegisterAgainRequested("who?"), mg.RegisterAgainRequested("who?"), now=0.5)
    assert len(acts(out, mg.Register)) == 1
    out = m.handle(mg.RegisterAgainRequested("who?"), now=3.0)
    assert len(acts(out, mg.Register)) == 1


def test_dropped_tasks_stop_without_a_result_and_others_are_unaffected():
    m = pool(2, kill_grace=1.0)
    m.handle(mg.WorkerReady(0), mg.WorkerReady(1), ptasks(1, 2, 3), now=0)
    m.handle(mg.WorkerResult(1, 2, Outcome.OK, b"v", 5.0), now=0.5)  # 2 done (unacked), 3 starts on worker 1
    out = quiet(m.handle(mg.DropTasks((1, 2)), now=1))
    assert out == [mg.SignalWorker(0, signal.SIGTERM)]
    assert m.unacked == {} and m.held_ids() == (3,)
    # Worker 0 dies of the SIGTERM: no result for 1, the slot restarts.
    out = quiet(m.handle(mg.WorkerExited(0, -signal.SIGTERM), now=1.2))
    assert not acts(out, mg.SendResults) and acts(out, mg.StartWorker)
    out = quiet(m.handle(mg.WorkerResult(1, 3, Outcome.OK, b"v3", 5.0), now=2))
    assert [r[0] for i in acts(out, mg.SendResults) for r in i.results] == [3]


def test_a_dropped_task_that_finishes_before_its_stop_reports_nothing():
    m = pool(1, kill_grace=1.0)
    m.handle(mg.WorkerReady(0), ptasks(1), now=0)
    m.handle(mg.DropTasks((1,)), now=1)
    out = quiet(m.handle(mg.WorkerResult(0, 1, Outcome.OK, b"v", 1.0), now=1.1))
    assert not acts(out, mg.SendResults)


def test_a_pool_waits_reconnect_timeout_for_a_silent_interchange():
    m = pool(1, heartbeat_period=1.0, heartbeat_threshold=5.0)
    assert m.reconnect_timeout == 10.0
    assert not acts(m.handle(now=9.9), mg.Exit)
    assert acts(m.handle(now=10.0), mg.Exit)


# --------------------------------------------------------------------------------- stateful model

POOLS = [b"p0", b"p1", b"p2"]


class Pool:
    """One worker pool process: its core, its workers (the tasks each was handed, current first) and the
    two directions of its connection (lists of messages; a cut connection loses what is in flight)."""

    def __init__(self, mid: bytes, workers: int, now: float, generation: int) -> None:
        self.mid = mid
        self.uid = f"{mid.decode()}-{generation}"
        self.workers = workers
        self.core = mg.ManagerState(worker_count=workers, heartbeat_period=1.0, heartbeat_threshold=THRESHOLD,
                                    now=now, kill_grace=0.5, advance_max_task_time=0.0)
        self.running: dict[int, list[int]] = {r: [] for r in range(workers)}
        self.starting: set[int] = set(range(workers))
        self.up: deque[tuple[str, Any]] = deque([("register", ())])  # pool -> interchange
        self.down: deque[tuple[str, Any]] = deque()  # interchange -> pool
        self.dead: set[int] = set()
        self.alive = True
        self.partitioned = False


class RecoveryMachine(RuleBasedStateMachine):
    """Tasks, pools and one interchange (replaced on restart) over a lossy network; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.ix = ic.InterchangeState(THRESHOLD, selector=RandomManagerSelector(7))
        self.pools: dict[bytes, Pool] = {}
        self.generations: Counter[bytes] = Counter()
        self.next_id = 1
        self.outstanding: set[int] = set()
        self.ended: Counter[int] = Counter()
        self.forwarded: Counter[int] = Counter()
        self.outcomes: dict[int, Outcome] = {}

    # -- plumbing

    def ix_handle(self, *events: Any) -> None:
        for ins in self.ix.handle(*events, now=self.now):
            self.ix_do(ins)

    def ix_do(self, ins: Any) -> None:
        def down(mid: bytes, msg: tuple[str, Any]) -> None:
            p = self.pools.get(mid)
            if p is not None and p.alive:
                p.down.append(msg)

        if isinstance(ins, ic.SendTasks):
            down(ins.manager_id, ("tasks", [t.task_id for t in ins.tasks]))
        elif isinstance(ins, ic.ForwardResults):
            assert not ins.raw
            for tid, outcome, _, _ in ins.results:
                self.forwarded[tid] += 1
                assert self.forwarded[tid] == 1, f"result of task {tid} reached the executor twice"
                if tid in self.outstanding:
                    self.outstanding.discard(tid)
                    self.ended[tid] += 1
                    self.outcomes[tid] = outcome
        elif isinstance(ins, ic.AckResults):
            down(ins.manager_id, ("ack", tuple(ins.task_ids)))
        elif isinstance(ins, ic.DropOnManager):
            down(ins.manager_id, ("drop", ins.task_ids))
        elif isinstance(ins, ic.RegisterAgain):
            down(ins.manager_id, ("register_again", None))
        elif isinstance(ins, ic.AcceptRegistration):
            down(ins.manager_id, ("registered", None))
        elif isinstance(ins, ic.RejectRegistration | ic.StopManager):
            down(ins.manager_id, ("stop", None))
        elif isinstance(ins, ic.ReplyHeartbeat):
            down(ins.manager_id, ("hb", None))
        elif isinstance(ins, ic.CancelOnManager):
            down(ins.manager_id, ("cancel", ins.task_ids))

    def pool_handle(self, p: Pool, *events: Any) -> None:
        if not p.alive:
            return
        for ins in p.core.handle(*events, now=self.now):
            if isinstance(ins, mg.RunTask):
                p.running[ins.rank].append(ins.task.task_id)
            elif isinstance(ins, mg.SendResults):
                p.up.append(("results", list(ins.results)))
            elif isinstance(ins, mg.SendHeartbeat):
                p.up.append(("hb", None))
            elif isinstance(ins, mg.Register):
                p.up.append(("register", ins.held))
            elif isinstance(ins, mg.SignalWorker):
                # Signals kill at once here; the exit is reported by the worker_exits rule.
                p.running[ins.rank] = []
                p.starting.discard(ins.rank)
                p.dead.add(ins.rank)
            elif isinstance(ins, mg.StartWorker):
                p.running[ins.rank] = []
                p.starting.add(ins.rank)
            elif isinstance(ins, mg.Exit):
                p.alive = False
                p.up.append(("bye", ins.reason))

    def deliver_up(self, p: Pool) -> None:
        kind, body = p.up.popleft()
        if kind == "register":
            self.ix_handle(ic.ManagerRegistered(p.mid, reg(p.uid, p.workers, held=body)))
        elif kind == "results":
            self.ix_handle(ic.ResultsReceived(p.mid, body))
        elif kind == "hb":
            self.ix_handle(ic.ManagerHeartbeat(p.mid))
        elif kind == "bye":
            self.ix_handle(ic.ManagerGoodbye(p.mid, body))

    def deliver_down(self, p: Pool) -> None:
        kind, body = p.down.popleft()
        event: Any = {
            "tasks": lambda: mg.TasksArrived([mg.PoolTask(t, (b"h", b"f", b"a")) for t in body]),
            "ack": lambda: mg.ResultsAcked(body),
            "drop": lambda: mg.DropTasks(body),
            "register_again": lambda: mg.RegisterAgainRequested("unknown"),
            "registered": lambda: mg.RegistrationAccepted(),
            "stop": lambda: mg.StopRequested("told to stop"),
            "hb": lambda: None,
            "cancel": lambda: mg.CancelTasks(body, True),
        }[kind]()
        self.pool_handle(p, mg.InterchangeContact(), *([event] if event is not None else []))

    def live(self) -> list[Pool]:
        return [p for p in self.pools.values() if p.alive]

    # -- rules

    @rule(n=st.integers(1, 4))
    def submit(self, n: int) -> None:
        events = []
        for _ in range(n):
            self.outstanding.add(self.next_id)
            events.append(ic.TaskSubmitted(qtask(self.next_id)))
            self.next_id += 1
        self.ix_handle(*events)

    @rule(mid=st.sampled_from(POOLS), workers=st.integers(1, 2))
    def start_pool(self, mid: bytes, workers: int) -> None:
        if mid in self.pools and self.pools[mid].alive:
            return
        self.generations[mid] += 1
        p = self.pools[mid] = Pool(mid, workers, self.now, self.generations[mid])
        self.pool_handle(p, *(mg.WorkerReady(r) for r in range(workers)))
        p.starting.clear()

    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        ready = [p for p in self.pools.values() if not p.partitioned and (p.up or (p.alive and p.down))]
        if not ready:
            return
        p = data.draw(st.sampled_from(ready))
        if p.up and (not (p.alive and p.down) or data.draw(st.booleans())):
            self.deliver_up(p)
        else:
            self.deliver_down(p)

    @rule(data=st.data())
    def repeat_a_message(self, data: st.DataObject) -> None:
        """A message arrives twice (results sent again after registering again, a second registration)."""
        ready = [p for p in self.pools.values() if p.up and p.up[0][0] in ("results", "register")]
        if ready:
            p = data.draw(st.sampled_from(ready))
            p.up.appendleft(p.up[0])

    @rule(data=st.data())
    def worker_finishes(self, data: st.DataObject) -> None:
        busy = [(p, r) for p in self.live() for r, ts in p.running.items() if ts]
        if not busy:
            return
        p, rank = data.draw(st.sampled_from(busy))
        tid = p.running[rank].pop(0)
        self.pool_handle(p, mg.WorkerResult(rank, tid, Outcome.OK, b"v", 1.0))

    @rule()
    def workers_exit(self) -> None:
        """Workers the pools signalled exit; slots started again become ready."""
        for p in self.live():
            for rank in sorted(p.dead):
                self.pool_handle(p, mg.WorkerExited(rank, -signal.SIGKILL))
            p.dead = set()
            for rank in sorted(p.starting):
                self.pool_handle(p, mg.WorkerReady(rank))
            p.starting.clear()

    @rule(mid=st.sampled_from(POOLS))
    def cut_connection(self, mid: bytes) -> None:
        """The TCP connection is reset and comes back: what was in flight is lost; the pool registers again."""
        p = self.pools.get(mid)
        if p is None or not p.alive:
            return
        p.up.clear()
        p.down.clear()
        self.pool_handle(p, mg.InterchangeDisconnected())
        self.pool_handle(p, mg.InterchangeConnected())

    @rule(mid=st.sampled_from(POOLS))
    def partition(self, mid: bytes) -> None:
        if mid in self.pools:
            self.pools[mid].partitioned = not self.pools[mid].partitioned

    @rule(window=st.sampled_from([0.0, 2.0, 20.0]), tell=st.booleans())
    def restart_interchange(self, window: float, tell: bool) -> None:
        """The interchange dies; a new one gets every outstanding task; every connection is reset."""
        known = len(self.ix.managers)
        self.ix = ic.InterchangeState(THRESHOLD, selector=RandomManagerSelector(7))
        for p in self.pools.values():
            p.down.clear()
            p.up = deque(m for m in p.up if m[0] == "bye") if not p.alive else deque()
            if p.alive:
                self.pool_handle(p, mg.InterchangeDisconnected())
                self.pool_handle(p, mg.InterchangeConnected())
        self.ix_handle(*(ic.RecoverTask(qtask(t)) for t in sorted(self.outstanding)),
                       ic.RecoveryStart(window, known if tell else None))

    @rule(dt=st.sampled_from([0.3, 1.0, 3.0, 2 * THRESHOLD + 1]))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.ix_handle()
        for p in list(self.pools.values()):
            self.pool_handle(p)

    # -- invariants

    @invariant()
    def nothing_ends_twice(self) -> None:
        assert all(n == 1 for n in self.ended.values())
        assert not (self.outstanding & set(self.ended))

    @invariant()
    def interchange_books_balance(self) -> None:
        held = [t for rec in self.ix.managers.values() for t in rec.tasks]
        assert len(held) == len(set(held)), "a task counted on two pools"
        assert self.ix.in_flight_count == len(held)

    def teardown(self) -> None:
        """Heal everything and run until quiet: every task must end exactly once."""
        for p in self.pools.values():
            p.partitioned = False
        for _ in range(4000):
            if not self.outstanding:
                break
            if not self.live():
                self.start_pool(POOLS[0], 2)
            progressed = False
            for p in list(self.pools.values()):
                while p.up or (p.alive and p.down):
                    if p.up:
                        self.deliver_up(p)
                    if p.alive and p.down:
                        self.deliver_down(p)
                    progressed = True
            for p in self.live():
                for rank, ts in p.running.items():
                    if ts:
                        self.pool_handle(p, mg.WorkerResult(rank, ts.pop(0), Outcome.OK, b"v", 1.0))
                        progressed = True
            self.workers_exit()
            if not progressed:
                self.advance(0.3)
        assert not self.outstanding, f"tasks never ended: {sorted(self.outstanding)}"
        assert all(n == 1 for n in self.ended.values())


TestRecoveryMachine = RecoveryMachine.TestCase
TestRecoveryMachine.settings = settings(max_examples=1000, stateful_step_count=60, deadline=None)


def test_a_pool_of_a_held_block_that_registers_later_is_held_too():
    # A block held for scaling in (or replayed to a restarted interchange) gets no tasks from pools that
    # register after the hold.
    s = ic.InterchangeState(THRESHOLD, selector=RandomManagerSelector(7))
    s.handle(ic.HoldBlock("0"), ic.TaskSubmitted(qtask(1)), now=0)
    out = s.handle(ic.ManagerRegistered(b"a", reg("a", 2, block="0")), now=1)
    assert acts(out, ic.AcceptRegistration) and not sent_ids(out, b"a")
    assert not s.managers[b"a"].active and s.pending_count == 1
    out = s.handle(ic.ManagerRegistered(b"b", reg("b", 2, block="1")), now=2)
    assert sent_ids(out, b"b") == [1]
