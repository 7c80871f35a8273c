"""MPI mode's pure core (htex_ref/core/mpi.py) and the manager core driving it: requests, prefixes,
node discovery parsers, the scheduling policies, and hypothesis properties of the allocation."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from htex_ref.core.manager import (
    ManagerState,
    PoolTask,
    RunTask,
    SendResults,
    TasksArrived,
    WorkerExited,
    WorkerReady,
    WorkerResult,
    make_pool_task,
)
from htex_ref.core.mpi import (
    MPI_ENV_NAMES,
    MPI_POLICIES,
    MpiRequest,
    MpiScheduler,
    Node,
    check_mpi_nodes,
    compose_prefixes,
    expand_slurm_cpus,
    mpi_policy,
    nodes_from_hostnames,
    nodes_from_list,
    nodes_from_nodefile,
    parse_mpi_request,
)
from htex_ref.errors import InvalidResourceSpecification
from htex_ref.protocol import Outcome, pack_task_header, task_spec, unpack_task_header
from htex_ref.tasks import read_spec

# ------------------------------------------------------------------------------------ requests


@pytest.mark.parametrize(("spec", "expected"), [
    ({"num_nodes": 3, "ranks_per_node": 5}, MpiRequest(3, 5)),
    ({"num_nodes": 2, "num_ranks": 8}, MpiRequest(2, 4)),
    ({"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 4}, MpiRequest(2, 2)),
    ({"num_ranks": 4}, MpiRequest(1, 4)),
    ({"num_nodes": 2}, MpiRequest(2, 1)),
    ({"launcher_options": " --mpi=pmi2 "}, MpiRequest(1, 1, "--mpi=pmi2")),
    # Parsl's validation writes the filled-in counts as strings.
    ({"num_nodes": "2", "ranks_per_node": 3, "num_ranks": "6"}, MpiRequest(2, 3)),
    ({"num_nodes": 2.0, "ranks_per_node": 1}, MpiRequest(2, 1)),
])
def test_requests_are_filled_in(spec: dict[str, object], expected: MpiRequest) -> None:
    assert parse_mpi_request(spec) == expected
    assert parse_mpi_request(spec).num_ranks == expected.num_nodes * expected.ranks_per_node  # type: ignore[union-attr]


@pytest.mark.parametrize(("spec", "key", "words"), [
    ({"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 5}, "num_ranks", "num_nodes * ranks_per_node"),
    ({"num_nodes": 2, "num_ranks": 5}, "num_ranks", "does not divide"),
    ({"num_nodes": 0}, "num_nodes", ">= 1"),
    ({"num_nodes": True}, "num_nodes", ">= 1"),
    ({"ranks_per_node": 1.5}, "ranks_per_node", ">= 1"),
    ({"num_nodes": "two"}, "num_nodes", ">= 1"),
    ({"launcher_options": ["--x"]}, "launcher_options", "must be a str"),
    ({"num_nodes": 4}, "num_nodes", "more than a block has (3 nodes"),
])
def test_bad_requests_name_the_key(spec: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(InvalidResourceSpecification) as info:
        parse_mpi_request(spec, nodes_per_block=3)
    assert info.value.invalid_keys == {key}
    assert key in str(info.value) and words in str(info.value)


def test_a_spec_without_mpi_keys_is_no_request() -> None:
    assert parse_mpi_request({"priority": 1}) is None
    assert read_spec({"priority": 1}, mpi_max_nodes=3) == (1.0, None)


def test_mpi_keys_outside_mpi_mode_point_to_mpi_mode() -> None:
    with pytest.raises(InvalidResourceSpecification, match="not in MPI mode: set enable_mpi_mode=True") as info:
        read_spec({"num_nodes": 2})
    assert info.value.invalid_keys == {"num_nodes"}
    with pytest.raises(InvalidResourceSpecification, match="not supported") as info:
        read_spec({"num_nodes": 2, "cores": 4}, mpi_max_nodes=3)
    assert info.value.invalid_keys == {"cores"}


@pytest.mark.parametrize("options", ["x" * 5000, "\u00e9" * 700])
def test_launcher_options_too_long_for_the_task_header_fail_at_submit(options: str) -> None:
    # (700 accented letters are 4,200 bytes as JSON escapes: the wire limit, not the length, decides.)
    with pytest.raises(InvalidResourceSpecification, match="launcher_options is too long") as info:
        read_spec({"num_nodes": 1, "launcher_options": options}, mpi_max_nodes=2)
    assert info.value.invalid_keys == {"launcher_options"}
    assert read_spec({"launcher_options": "x" * 3000}, mpi_max_nodes=2)[1] is not None


def test_read_spec_gives_priority_and_the_checked_request() -> None:
    priority, mpi = read_spec({"priority": -1, "num_ranks": 6, "num_nodes": 3}, mpi_max_nodes=4)
    assert priority == -1.0
    assert mpi == {"num_nodes": 3, "ranks_per_node": 2, "launcher_options": ""}
    assert read_spec(None, mpi_max_nodes=4) == (math.inf, None)


def test_the_task_header_carries_the_spec_only_for_mpi_tasks() -> None:
    plain = pack_task_header(7, 1.0)
    assert task_spec(plain) is None and len(plain) == 16
    mpi = pack_task_header(7, 1.0, {"num_nodes": 2, "ranks_per_node": 1, "launcher_options": ""})
    assert unpack_task_header(mpi) == (7, 1.0)
    assert task_spec(mpi) == {"num_nodes": 2, "ranks_per_node": 1, "launcher_options": ""}
    task = make_pool_task(7, (mpi, b"f", b"a"), 1.0, task_spec(mpi))
    assert task.request == MpiRequest(2, 1) and task.refused is None
    bad = make_pool_task(8, (mpi, b"f", b"a"), 1.0, {"num_nodes": -1})
    assert bad.request is None and bad.refused is not None and "num_nodes" in bad.refused


# ------------------------------------------------------------------------------------ prefixes


def test_prefixes_for_each_launcher() -> None:
    env = compose_prefixes("srun", ["c1", "c3"], MpiRequest(2, 4, "--mpi=pmi2"))
    assert env["PARSL_SRUN_PREFIX"] == "srun --ntasks 8 --ntasks-per-node 4 --nodelist c1,c3 --nodes 2 --mpi=pmi2"
    assert env["PARSL_MPIEXEC_PREFIX"] == "mpiexec -n 8 -ppn 4 -hosts c1,c3 --mpi=pmi2"
    assert env["PARSL_APRUN_PREFIX"] == "aprun -n 8 -N 4 -node-list c1,c3 --mpi=pmi2"
    assert env["PARSL_MPI_PREFIX"] == env["PARSL_SRUN_PREFIX"]
    assert (env["PARSL_MPI_NODELIST"], env["PARSL_NUM_NODES"], env["PARSL_RANKS_PER_NODE"],
            env["PARSL_NUM_RANKS"]) == ("c1,c3", "2", "4", "8")
    assert set(env) == set(MPI_ENV_NAMES)
    for launcher in ("mpiexec", "aprun"):
        plain = compose_prefixes(launcher, ["n1"], MpiRequest(1, 1))
        assert plain["PARSL_MPI_PREFIX"] == plain[f"PARSL_{launcher.upper()}_PREFIX"]
        assert not plain["PARSL_MPI_PREFIX"].endswith(" ") and "None" not in plain["PARSL_MPI_PREFIX"]
    with pytest.raises(ValueError, match="mpi_launcher"):
        compose_prefixes("jsrun", ["n1"], MpiRequest(1, 1))


# ------------------------------------------------------------------------------ node discovery


def test_node_sources() -> None:
    assert expand_slurm_cpus("4(x2),2") == [4, 4, 2]
    assert expand_slurm_cpus("8") == [8]
    with pytest.raises(ValueError, match="SLURM_JOB_CPUS_PER_NODE"):
        expand_slurm_cpus("4(2)")
    assert nodes_from_hostnames(["c1\n", "c2", ""], [4, 2], 1) == [Node("c1", 4), Node("c2", 2)]
    assert nodes_from_hostnames(["c1", "c2"], [4], 8) == [Node("c1", 8), Node("c2", 8)]
    assert nodes_from_nodefile("a\nb\na\n\nc\n", 16) == [Node("a", 2), Node("b", 16), Node("c", 16)]
    assert nodes_from_list(["x:3", "y"], 2) == [Node("x", 3), Node("y", 2)]
    with pytest.raises(ValueError, match="whole number"):
        nodes_from_list(["x:many"], 2)


@pytest.mark.parametrize("value", ["n1", [], ["a", "a:2"], ["a,b"], [""], ["x:"], [3]])
def test_bad_mpi_nodes(value: object) -> None:
    with pytest.raises(ValueError, match=r"mpi_nodes|whole number"):
        check_mpi_nodes(value)


def test_scheduler_refuses_bad_node_lists() -> None:
    with pytest.raises(ValueError, match="at least one node"):
        MpiScheduler([])
    with pytest.raises(ValueError, match="twice"):
        MpiScheduler([Node("a"), Node("a")])
    with pytest.raises(ValueError, match="mpi_policy"):
        mpi_policy("random")


# ---------------------------------------------------------------------------------- scheduling


@dataclass(frozen=True)
class T:
    task_id: int
    request: MpiRequest | None
    priority: float = math.inf


def nodes(n: int, slots: int = 1) -> list[Node]:
    return [Node(f"n{i}", slots) for i in range(n)]


def drain(s: MpiScheduler, limit: int = 100) -> list[tuple[int, list[str] | None]]:
    out = []
    for _ in range(limit):
        picked = s.pop_next()
        if picked is None:
            break
        out.append((picked[0].task_id, picked[1]))
    return out


def test_whole_nodes_are_disjoint_and_come_back() -> None:
    s = MpiScheduler(nodes(3))
    s.extend([T(1, MpiRequest(1, 4)), T(2, MpiRequest(1, 4)), T(3, MpiRequest(3, 1))])
    assert drain(s) == [(1, ["n0"]), (2, ["n1"])]
    assert s.holding(1) == ["n0"] and s.free_nodes() == ["n2"]
    assert s.release(1) == ["n0"] and s.release(1) == []
    assert drain(s) == []  # the 3-node task still waits for n1
    s.release(2)
    assert drain(s) == [(3, ["n0", "n1", "n2"])]


def test_tasks_without_mpi_keys_take_no_nodes() -> None:
    s = MpiScheduler(nodes(1))
    s.extend([T(1, MpiRequest(1, 1)), T(2, None), T(3, None)])
    assert drain(s) == [(1, ["n0"]), (2, None), (3, None)]


def test_fifo_never_passes_the_head() -> None:
    s = MpiScheduler(nodes(3), policy=MPI_POLICIES["fifo"])
    s.extend([T(1, MpiRequest(2, 1)), T(2, MpiRequest(2, 1)), T(3, MpiRequest(1, 1))])
    assert drain(s) == [(1, ["n0", "n1"])]  # 3 would fit on n2, but 2 waits first
    s.release(1)
    assert drain(s) == [(2, ["n0", "n1"]), (3, ["n2"])]


def test_backfill_passes_a_waiting_task_a_bounded_number_of_times() -> None:
    limit = MPI_POLICIES["backfill"].max_bypass
    assert limit is not None
    s = MpiScheduler(nodes(3))
    s.append(T(0, MpiRequest(1, 1)))
    assert drain(s) == [(0, ["n0"])]
    s.append(T(1, MpiRequest(3, 1)))  # needs every node: waits for task 0
    s.extend([T(10 + i, MpiRequest(1, 1)) for i in range(limit + 5)])
    started = []
    for _ in range(limit):
        got = drain(s, 1)
        assert got and got[0][0] != 1
        started.append(got[0][0])
        s.release(got[0][0])
    # Task 1 has been passed `limit` times: it holds the reservation although n1 and n2 are free.
    assert s.reserved() is not None and s.reserved().task_id == 1
    assert drain(s) == []
    s.release(0)
    assert drain(s, 1) == [(1, ["n0", "n1", "n2"])]


def test_smallest_first_orders_by_size() -> None:
    s = MpiScheduler(nodes(4), policy=MPI_POLICIES["smallest_first"])
    s.extend([T(1, MpiRequest(3, 1)), T(2, MpiRequest(1, 1)), T(3, MpiRequest(2, 1))])
    assert [t.task_id for t in s] == [2, 3, 1]
    assert drain(s) == [(2, ["n0"]), (3, ["n1", "n2"])]
    assert s.reserved() is None  # no bound: a stream of small tasks can pass it for ever


def test_priority_comes_before_the_policy() -> None:
    s = MpiScheduler(nodes(2), policy=MPI_POLICIES["smallest_first"])
    s.extend([T(1, MpiRequest(1, 1), priority=5), T(2, MpiRequest(2, 1), priority=1)])
    assert drain(s) == [(2, ["n0", "n1"])]


def test_shared_nodes_pack_best_fit() -> None:
    s = MpiScheduler([Node("a", 4), Node("b", 4)], share=True)
    s.extend([T(1, MpiRequest(1, 3)), T(2, MpiRequest(1, 1)), T(3, MpiRequest(1, 2))])
    # 1 takes 3 of a's 4 slots; 2 fits in a's last slot (best fit) and leaves b whole for 3.
    assert drain(s) == [(1, ["a"]), (2, ["a"]), (3, ["b"])]
    assert s.free_slots == [0, 2]
    s.append(T(4, MpiRequest(2, 2)))
    assert drain(s) == []
    s.release(1)
    s.release(2)
    assert drain(s) == [(4, ["a", "b"])]


def test_unsatisfiable_requests_say_why() -> None:
    s = MpiScheduler([Node("a", 4), Node("b", 2)], share=True)
    assert "num_nodes=3 but this block has 2 nodes (a,b)" in (s.unsatisfiable(MpiRequest(3, 1)) or "")
    assert "fits on 1 of this block's nodes" in (s.unsatisfiable(MpiRequest(2, 3)) or "")
    assert s.unsatisfiable(MpiRequest(1, 4)) is None
    assert MpiScheduler([Node("a", 1)]).unsatisfiable(MpiRequest(1, 64)) is None  # whole nodes: any rank count


# ------------------------------------------------------------------------- hypothesis properties

requests = st.one_of(st.none(), st.builds(MpiRequest, st.integers(1, 4), st.integers(1, 4)))


class SchedulerMachine(RuleBasedStateMachine):
    """Tasks arrive, start while idle workers last, and end in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.s: MpiScheduler | None = None
        self.running: dict[int, tuple[MpiRequest | None, list[str] | None]] = {}
        self.next_id = 0
        self.workers = 0

    @precondition(lambda self: self.s is None)
    @rule(n=st.integers(1, 5), slots=st.integers(1, 4), share=st.booleans(),
          policy=st.sampled_from(sorted(MPI_POLICIES)), workers=st.integers(1, 6))
    def setup(self, n: int, slots: int, share: bool, policy: str, workers: int) -> None:
        self.s = MpiScheduler(nodes(n, slots), share=share, policy=mpi_policy(policy))
        self.workers = workers

    @precondition(lambda self: self.s is not None)
    @rule(request=requests, priority=st.sampled_from([math.inf, 0.0, 1.0]))
    def arrive(self, request: MpiRequest | None, priority: float) -> None:
        assert self.s is not None
        if request is not None and self.s.unsatisfiable(request):
            return  # the manager refuses these on arrival
        self.s.append(T(self.next_id, request, priority))
        self.next_id += 1
        self.start()

    def start(self) -> None:
        assert self.s is not None
        while len(self.running) < self.workers:
            picked = self.s.pop_next()
            if picked is None:
                return
            task, placed = picked
            self.running[task.task_id] = (task.request, placed)

    @precondition(lambda self: self.s is not None and self.running)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        assert self.s is not None
        tid = data.draw(st.sampled_from(sorted(self.running)))
        _, placed = self.running.pop(tid)
        assert sorted(self.s.release(tid)) == sorted(placed or [])
        self.start()

    @invariant()
    def no_node_is_given_twice(self) -> None:
        if self.s is None:
            return
        use: dict[str, int] = {}
        for request, placed in self.running.values():
            assert (request is None) == (placed is None)
            if placed is None:
                continue
            assert request is not None
            assert len(placed) == len(set(placed)) == request.num_nodes
            for name in placed:
                use[name] = use.get(name, 0) + (request.ranks_per_node if self.s.share else 10**6)
        for node in self.s.nodes:
            assert use.get(node.name, 0) <= (node.slots if self.s.share else 10**6)
        expected_free = [n.slots - (use.get(n.name, 0) if self.s.share else n.slots * (n.name in use))
                         for n in self.s.nodes]
        assert self.s.free_slots == expected_free

    @invariant()
    def no_task_waits_while_it_fits(self) -> None:
        """With a worker idle, a waiting task that fits is only held back by an earlier task that holds
        the reservation (fifo: any earlier task that does not fit)."""
        s = self.s
        if s is None or len(self.running) >= self.workers:
            return
        limit = s.policy.max_bypass
        blocked_by_reservation = False
        for waiting in s._waiting:
            fits = s.fits_now(waiting.task.request)
            assert not fits or blocked_by_reservation, f"task {waiting.task.task_id} waits though it fits"
            if not fits and limit is not None and waiting.bypassed >= limit:
                blocked_by_reservation = True

    @invariant()
    def bypass_is_bounded(self) -> None:
        if self.s is None or self.s.policy.max_bypass is None:
            return
        assert all(w.bypassed <= self.s.policy.max_bypass for w in self.s._waiting)

    def teardown(self) -> None:
        # Every node comes back once everything has run.
        s = self.s
        if s is None:
            return
        for _ in range(10_000):
            if not self.running:
                break
            tid = min(self.running)
            self.running.pop(tid)
            s.release(tid)
            self.start()
        assert not self.running and s.count == 0
        assert s.free_slots == [n.slots for n in s.nodes]


TestScheduler = SchedulerMachine.TestCase
TestScheduler.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# ---------------------------------------------------------------------------- the manager core


def mpi_task(tid: int, spec: dict[str, object] | None) -> PoolTask:
    header = pack_task_header(tid, math.inf, spec)
    return make_pool_task(tid, (header, b"f", b"a"), math.inf, task_spec(header))


def manager(workers: int, node_names: list[str], launcher: str = "srun") -> ManagerState:
    m = ManagerState(workers, 30, 120, 0.0, "head", mpi=MpiScheduler([Node(n) for n in node_names]),
                     mpi_launcher=launcher)
    m.handle(*[WorkerReady(r) for r in range(workers)], now=0.0)
    return m


def runs(out: list[object]) -> dict[int, RunTask]:
    return {ins.task.task_id: ins for ins in out if isinstance(ins, RunTask)}


def results(out: list[object]) -> list[tuple[int, Outcome, bytes]]:
    return [(r[0], r[1], bytes(r[2])) for ins in out if isinstance(ins, SendResults) for r in ins.results]


def test_manager_gives_nodes_and_the_task_environment() -> None:
    m = manager(2, ["c1", "c2", "c3"])
    out = m.handle(TasksArrived([mpi_task(1, {"num_nodes": 2, "ranks_per_node": 2, "launcher_options": "--mpi=pmi2"}),
                                 mpi_task(2, None)]), now=1.0)
    started = runs(out)
    assert started[1].env is not None
    assert started[1].env["PARSL_MPI_PREFIX"] == ("srun --ntasks 4 --ntasks-per-node 2 --nodelist c1,c2 --nodes 2 "
                                                  "--mpi=pmi2")
    assert started[2].env is None  # a plain task in MPI mode runs, with no MPI variables


def test_manager_returns_nodes_on_result_and_on_worker_death() -> None:
    m = manager(2, ["c1", "c2"])
    assert m.mpi is not None
    m.handle(TasksArrived([mpi_task(1, {"num_nodes": 1}), mpi_task(2, {"num_nodes": 1}),
                           mpi_task(3, {"num_nodes": 2})]), now=1.0)
    assert m.mpi.free_nodes() == [] and m.mpi.count == 1
    r1 = next(r for r, w in m.workers.items() if w.task_id == 1)
    out = m.handle(WorkerResult(r1, 1, Outcome.OK, b"x"), now=2.0)
    assert runs(out) == {} and m.mpi.free_nodes() == ["c1"]  # 3 needs both nodes
    r2 = next(r for r, w in m.workers.items() if w.task_id == 2)
    out = m.handle(WorkerExited(r2, -9), now=3.0)
    # Task 1's result was held for batching (a task waits here) and goes out with task 2's loss.
    assert [(t, o) for t, o, _ in results(out)] == [(1, Outcome.OK), (2, Outcome.WORKER_LOST)]
    # The dead worker's node came back: task 3 starts at once on the idle worker.
    assert set(runs(out)) == {3} and runs(out)[3].rank == r1 and m.mpi.holding(3) == ["c1", "c2"]


def test_manager_refuses_what_no_node_set_could_run() -> None:
    m = manager(1, ["c1", "c2"])
    bad = make_pool_task(5, (pack_task_header(5, 0.0), b"f", b"a"), 0.0, {"num_ranks": 3, "num_nodes": 2})
    out = m.handle(TasksArrived([mpi_task(4, {"num_nodes": 3}), bad]), now=1.0)
    got = {t: (o, json.loads(p)["detail"]) for t, o, p in results(out)}
    assert got[4][0] is Outcome.REFUSED and "num_nodes=3 but this block has 2 nodes" in got[4][1]
    assert got[5][0] is Outcome.REFUSED and "num_ranks=3" in got[5][1]
    assert m.mpi is not None and m.mpi.count == 0


def test_a_pool_not_in_mpi_mode_refuses_mpi_tasks() -> None:
    m = ManagerState(1, 30, 120, 0.0, "head")
    m.handle(WorkerReady(0), now=0.0)
    out = m.handle(TasksArrived([mpi_task(1, {"num_nodes": 1}), mpi_task(2, None)]), now=1.0)
    assert [(t, o) for t, o, _ in results(out)] == [(1, Outcome.REFUSED)]
    assert set(runs(out)) == {2}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["arrive", "finish", "die"]), st.integers(1, 3)), max_size=40),
       st.integers(1, 3))
def test_manager_never_gives_a_node_twice(steps: list[tuple[str, int]], workers: int) -> None:
    m = manager(workers, ["c1", "c2", "c3"])
    assert m.mpi is not None
    next_id = 0
    now = 1.0
    for action, n in steps:
        now += 1
        if action == "arrive":
            out = m.handle(TasksArrived([mpi_task(next_id, {"num_nodes": n})]), now=now)
            next_id += 1
        else:
            busy = [(r, w.task_id) for r, w in m.workers.items() if w.state == "busy"]
            if not busy:
                continue
            rank, tid = busy[n % len(busy)]
            assert tid is not None
            if action == "finish":
                out = m.handle(WorkerResult(rank, tid, Outcome.OK, b""), now=now)
            else:
                out = m.handle(WorkerExited(rank, -9), now=now)
                out += m.handle(WorkerReady(rank), now=now)
        held = [name for w in m.workers.values() if w.task_id is not None for name in m.mpi.holding(w.task_id)]
        assert len(held) == len(set(held))
        assert sorted(held + m.mpi.free_nodes()) == ["c1", "c2", "c3"]
        for ins in out:
            if isinstance(ins, RunTask) and ins.env is not None:
                assert ins.env["PARSL_MPI_NODELIST"].split(",") == m.mpi.holding(ins.task.task_id)
        idle = any(w.state == "idle" for w in m.workers.values())
        if idle and m.mpi.count:
            assert not any(m.mpi.fits_now(t.request) for t in m.mpi) or m.mpi.reserved() is not None
