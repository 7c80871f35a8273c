"""MPI mode in the simulation: one pool per block, driven by the real ``ManagerState`` and ``MpiScheduler``,
places multi-node tasks on the block's nodes. Checked from the run's own trace (which nodes each task was
given, and when it started and ended), never against numbers copied from a run."""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from htex_ref.core.mpi import MPI_POLICIES
from simcluster import ScenarioError, load_scenario, parse_scenario, run
from simcluster.metrics import busy_node_seconds, conservation_errors, node_intervals
from simcluster.pilot import DONE, STATE_NAMES, Pilot
from simcluster.workload import build_tasks
from tests.sim.helpers import ROOT, read_csv, simulate

PACKING = ROOT / "examples" / "scenarios" / "mpi_packing.toml"


def mpi_scenario(workload: list[dict[str, Any]], nodes: int = 4, cores: int = 4, **executor: Any) -> Any:
    """One block of ``nodes`` nodes for the whole run, in MPI mode, and ``workload``."""
    cfg: dict[str, Any] = {"label": "mpi", "enable_mpi_mode": True, "strategy": "none", "init_blocks": 1,
                           "max_blocks": 1, "nodes_per_block": nodes, "max_workers_per_block": 8,
                           "prefetch_capacity": 8, "walltime": 86400, "job_start_latency": 10}
    cfg.update(executor)
    return parse_scenario({"name": "mpi", "seed": 5,
                           "cluster": {"partitions": [{"name": "compute", "nodes": nodes, "cores": cores}]},
                           "workload": workload, "executor": [cfg]})


def held_at(p: Pilot, t: float) -> set[str]:
    """Nodes some task holds at instant ``t`` (a task ending at ``t`` no longer holds its nodes)."""
    return {name for name, spans in node_intervals(p).items() if any(s <= t < e for s, e, _ in spans)}


def by_start(p: Pilot) -> list[int]:
    return sorted((i for i in range(len(p.plan)) if p.t_start[i] == p.t_start[i]), key=lambda i: p.t_start[i])


def check_trace(p: Pilot, share: bool = False) -> None:
    """Every MPI task that started got ``num_nodes`` distinct nodes of its own block; without sharing no node
    is ever held by two tasks at once, with sharing no node holds more ranks than it has cores."""
    plan = p.plan
    for ti, names in p.t_nodes.items():
        nodes = names.split(",")
        assert len(set(nodes)) == len(nodes) == plan.num_nodes[ti], (ti, names)
        job = p.scheduler.jobs[p.blocks[p.managers[p.t_mgr[ti]].block].job_id]
        assert set(nodes) <= {f"{job.partition}-{n}" for n in job.alloc}, (ti, names, job.alloc)
    started = {i for i in range(len(plan)) if p.t_start[i] == p.t_start[i]}
    assert {i for i in started if plan.num_nodes[i]} == set(p.t_nodes)  # no MPI task ran without its nodes
    cores = p.partition.cores
    for name, spans in node_intervals(p).items():
        if not share:
            for (_, end, a), (start, _, b) in pairwise(spans):
                assert start >= end, f"{name} given to task {b + 1} at {start} while task {a + 1} holds it to {end}"
            continue
        # Shared: the ranks on the node never exceed its cores, at any instant a task starts.
        for start, _, _ in spans:
            ranks = sum(plan.ranks_per_node[ti] for s, e, ti in spans if s <= start < e)
            assert ranks <= cores, (name, start, ranks)


MIX = [
    {"kind": "bag", "tasks": 30, "duration": {"dist": "uniform", "low": 20, "high": 200},
     "num_nodes": {"values": [1, 2, 3, 4], "weights": [4, 2, 1, 1]}},
    {"kind": "arrivals", "tasks": 40, "rate": 0.05, "duration": {"dist": "exponential", "mean": 60},
     "num_nodes": {"values": [1, 2]}},
    {"kind": "bag", "tasks": 5, "start": 30, "duration": 15},  # no MPI keys: run on the pool's node
]


@pytest.mark.parametrize("policy", sorted(MPI_POLICIES))
def test_whole_nodes_are_never_given_to_two_tasks_and_every_task_finishes(policy: str) -> None:
    r, p = simulate(mpi_scenario(MIX, mpi_policy=policy))
    assert conservation_errors(p) == []
    assert r.metrics["done"] == r.metrics["tasks"] == 75
    check_trace(p)
    # One pool per block, on its first node, with max_workers_per_block workers.
    assert len(p.managers) == len(p.blocks) == 1 and p.managers[0].workers == 8
    assert p.managers[0].node == p.scheduler.jobs[p.blocks["0"].job_id].alloc[0]
    # Tasks without MPI keys ran, and were given no node.
    plain = [i for i in range(len(p.plan)) if not p.plan.num_nodes[i]]
    assert len(plain) == 5 and all(p.state[i] == DONE and i not in p.t_nodes for i in plain)
    # Node utilization is busy node-seconds over allocated ones; busy ones are the tasks' nodes x run time.
    busy = sum(p.plan.num_nodes[i] * (p.t_end[i] - p.t_start[i]) for i in p.t_nodes)
    assert busy_node_seconds(p) == pytest.approx(busy)
    m = r.metrics
    assert m["mpi_policy"] == policy
    assert m["node_hours_used"] == pytest.approx(busy / 3600)
    assert m["utilization"] == pytest.approx(m["node_hours_used"] / m["node_hours_allocated"])
    assert 0 < m["utilization"] <= 1


def test_nodes_come_back_when_a_worker_or_the_block_dies() -> None:
    # Tasks that crash their worker (the pool's core gives their nodes back with the worker), and a node
    # failure that ends the block while tasks hold its nodes (the next block's pool starts with all free).
    sc = parse_scenario({
        "name": "mpi", "seed": 5,
        "cluster": {"partitions": [{"name": "compute", "nodes": 4, "cores": 4}],
                    "failures": [{"time": 150, "node": 0}, {"time": 150, "node": 1}]},
        "workload": [{"kind": "bag", "tasks": 60, "duration": {"dist": "uniform", "low": 10, "high": 60},
                      "num_nodes": {"values": [1, 2, 3]}, "crash_fraction": 0.2}],
        "executor": [{"enable_mpi_mode": True, "strategy": "simple", "max_blocks": 1, "nodes_per_block": 3,
                      "max_workers_per_block": 4, "prefetch_capacity": 4, "job_start_latency": 10,
                      "block_error_handler": "none"}]})
    r, p = simulate(sc)
    assert conservation_errors(p) == []
    assert r.metrics["lost_other"] > 0  # crashed tasks: WorkerLost
    assert r.metrics["blocks_failed"] == 1 and len(p.blocks) >= 2  # the failure ended a block; another came
    assert r.metrics["lost_node_failure"] > 0 and r.metrics["done"] > 0
    assert r.metrics["unfinished"] == 0  # nothing waits for ever on nodes that never came back
    check_trace(p)


def test_a_three_node_task_waits_for_three_free_nodes() -> None:
    # Two one-node tasks of different lengths start first on the 4-node block; the 3-node task, which
    # arrives just after, has 2 free nodes and must wait for the shorter one to end.
    sc = mpi_scenario([
        {"kind": "bag", "tasks": 1, "duration": 100, "num_nodes": 1},
        {"kind": "bag", "tasks": 1, "duration": 300, "num_nodes": 1},
        {"kind": "bag", "tasks": 1, "start": 1, "duration": 50, "num_nodes": 3},
    ])
    r, p = simulate(sc)
    assert r.metrics["done"] == 3
    check_trace(p)
    short, long, big = 0, 1, 2
    registered = p.t_start[short]  # the pool started the first tasks as soon as it registered
    assert p.t_submit[big] < registered and len(held_at(p, registered)) == 2  # only 2 nodes free: not enough
    assert p.t_start[big] == p.t_end[short] > registered  # it started the moment a third node came back
    assert p.t_end[long] > p.t_start[big]
    assert p.t_nodes[long] not in p.t_nodes[big].split(",")  # on the nodes the running task does not hold


def _large_behind_stream(policy: str) -> Pilot:
    """A 4-node block busy with 1-node tasks; a 4-node task arrives early in a steady stream of them."""
    sc = mpi_scenario([
        {"kind": "bag", "tasks": 3, "duration": 60, "num_nodes": 1},
        {"kind": "bag", "tasks": 1, "start": 5, "duration": 60, "num_nodes": 4},
        {"kind": "arrivals", "tasks": 150, "start": 6, "rate": 0.1, "duration": {"dist": "fixed", "value": 40},
         "num_nodes": 1},
    ], mpi_policy=policy, prefetch_capacity=16)
    r, p = simulate(sc)
    assert r.metrics["done"] == r.metrics["tasks"]
    check_trace(p)
    return p


def _passed(p: Pilot, ti: int) -> int:
    """Tasks submitted after task ``ti`` that started before it."""
    return sum(1 for i in range(len(p.plan)) if p.t_submit[i] > p.t_submit[ti] and p.t_start[i] < p.t_start[ti])


def test_smallest_first_starves_a_large_task_that_backfill_bounds() -> None:
    large = 3
    fifo, backfill, smallest = (_large_behind_stream(name) for name in ("fifo", "backfill", "smallest_first"))
    waits = {name: p.t_start[large] - p.t_submit[large]
             for name, p in (("fifo", fifo), ("backfill", backfill), ("smallest_first", smallest))}
    # fifo: nothing that came later starts before it; backfill: at most max_bypass tasks do, then it holds
    # a reservation; smallest_first: every small task that fits goes first, for as long as they come.
    bound = MPI_POLICIES["backfill"].max_bypass
    assert bound is not None
    assert _passed(fifo, large) == 0
    assert 0 < _passed(backfill, large) <= bound
    assert _passed(smallest, large) > 2 * bound
    assert waits["smallest_first"] > 2 * waits["backfill"] and waits["backfill"] >= waits["fifo"]
    # Starved for as long as small tasks kept the nodes: it ran after most of the stream had started.
    stream = range(4, len(smallest.plan))
    assert sum(smallest.t_start[i] < smallest.t_start[large] for i in stream) > len(stream) // 2


def test_fifo_leaves_nodes_idle_that_backfill_fills() -> None:
    # A 3-node task holds 3 of 4 nodes; the 4-node task behind it waits for all of them; then 1-node tasks.
    sc_tasks = [
        {"kind": "bag", "tasks": 1, "duration": 200, "num_nodes": 3},
        {"kind": "bag", "tasks": 1, "start": 1, "duration": 50, "num_nodes": 4},
        {"kind": "bag", "tasks": 6, "start": 2, "duration": 30, "num_nodes": 1},
    ]
    runs = {name: simulate(mpi_scenario(sc_tasks, mpi_policy=name)) for name in ("fifo", "backfill")}
    (r_fifo, fifo), (r_back, back) = runs["fifo"], runs["backfill"]
    for p in (fifo, back):
        check_trace(p)
    head, small = 1, range(2, 8)
    # fifo: while the head waits, the fourth node is free and small tasks that fit wait behind it.
    waiting = fifo.t_start[0] + 1
    assert len(held_at(fifo, waiting)) == 3 and all(fifo.t_start[i] > waiting for i in small)
    assert all(fifo.t_start[i] >= fifo.t_start[head] for i in small)
    # backfill: the small tasks use that node while the head waits.
    assert any(back.t_start[i] < back.t_start[head] for i in small)
    assert busy_node_seconds(back) == pytest.approx(busy_node_seconds(fifo))  # the same work
    assert r_back.metrics["makespan"] < r_fifo.metrics["makespan"]
    assert r_back.metrics["utilization"] > r_fifo.metrics["utilization"]


def test_shared_nodes_hold_ranks_up_to_their_cores() -> None:
    workload = [{"kind": "bag", "tasks": 40, "duration": {"dist": "uniform", "low": 20, "high": 100},
                 "num_nodes": {"values": [1, 2]}, "ranks_per_node": {"values": [1, 2, 4]}}]
    r_whole, whole = simulate(mpi_scenario(workload))
    r_shared, shared = simulate(mpi_scenario(workload, mpi_share_nodes=True))
    for r in (r_whole, r_shared):
        assert r.metrics["done"] == 40
    check_trace(whole)
    check_trace(shared, share=True)
    # Sharing happened: some node was held by two tasks at once, and the work took less time.
    assert any(s2 < e1 for spans in node_intervals(shared).values()
               for (_, e1, _), (s2, _, _) in pairwise(spans))
    assert r_shared.metrics["makespan"] < r_whole.metrics["makespan"]


def test_mpi_draws_are_seeded_and_leave_the_other_draws_alone() -> None:
    plain = parse_scenario({"workload": [{"tasks": 500, "duration": {"dist": "exponential", "mean": 5}}]})
    mpi = parse_scenario({"workload": [{"tasks": 500, "duration": {"dist": "exponential", "mean": 5},
                                        "num_nodes": {"values": [1, 2, 8], "weights": [6, 3, 1]},
                                        "ranks_per_node": 4}],
                          "executor": [{"enable_mpi_mode": True, "nodes_per_block": 8}],
                          "cluster": {"partitions": [{"nodes": 8}]}})
    a, b = build_tasks(mpi.workload, 1), build_tasks(mpi.workload, 1)
    assert list(a.duration) == list(build_tasks(plain.workload, 1).duration)
    assert list(a.num_nodes) == list(b.num_nodes) != list(build_tasks(mpi.workload, 2).num_nodes)
    assert set(a.num_nodes) == {1, 2, 8} and a.num_nodes.count(1) > a.num_nodes.count(2) > a.num_nodes.count(8)
    assert set(a.ranks_per_node) == {4}
    assert len(build_tasks(plain.workload, 1).num_nodes) == 0  # no MPI phase: no per-task arrays


_MPI_EXEC = {"enable_mpi_mode": True, "nodes_per_block": 4}


@pytest.mark.parametrize(("data", "message"), [
    ({"workload": [{"num_nodes": 5}], "executor": [_MPI_EXEC]},
     "workload[0].num_nodes: num_nodes=5 is more than a block has (4 nodes"),
    ({"workload": [{"num_nodes": {"values": [1, 6]}}], "executor": [{"label": "a", **_MPI_EXEC}]},
     "executor[0] 'a' has nodes_per_block = 4); the executor refuses such a task at submit"),
    ({"workload": [{"num_nodes": 2}], "executor": [_MPI_EXEC, {"label": "plain"}]},
     "workload[0].num_nodes: MPI tasks need an executor in MPI mode, and executor[1] ('plain') is not"),
    ({"workload": [{"ranks_per_node": 2}], "executor": [{}]}, "workload[0].ranks_per_node: MPI tasks need"),
    ({"workload": [{"num_nodes": 0}], "executor": [_MPI_EXEC]}, "workload[0].num_nodes must be an int >= 1"),
    ({"workload": [{"num_nodes": 1.5}], "executor": [_MPI_EXEC]}, "workload[0].num_nodes must be an int >= 1"),
    ({"workload": [{"num_nodes": {"values": []}}], "executor": [_MPI_EXEC]},
     "workload[0].num_nodes.values must be a non-empty array"),
    ({"workload": [{"num_nodes": {"values": [1, 2], "weights": [1]}}], "executor": [_MPI_EXEC]},
     "workload[0].num_nodes.weights must be an array of 2 numbers"),
    ({"workload": [{"num_nodes": {"values": [1], "odds": [1]}}], "executor": [_MPI_EXEC]},
     "workload[0].num_nodes has unknown keys ['odds']"),
    ({"workload": [{"num_nodes": 2, "ranks_per_node": 64}],
      "executor": [{**_MPI_EXEC, "mpi_share_nodes": True}]},
     "workload[0].ranks_per_node: ranks_per_node=64 fits on 0 of this block's nodes"),
    ({"executor": [{"mpi_policy": "fifo"}]}, "executor[0].mpi_policy only means something in MPI mode"),
    ({"executor": [{"max_workers_per_block": 4}]}, "executor[0].max_workers_per_block only means something"),
    ({"executor": [{**_MPI_EXEC, "max_workers_per_node": 4}]},
     "executor[0].max_workers_per_node: in MPI mode the block's one pool runs max_workers_per_block workers"),
    ({"executor": [{**_MPI_EXEC, "mpi_policy": "random"}]}, "executor[0].mpi_policy must be one of"),
    ({"executor": [{**_MPI_EXEC, "mpi_share_nodes": "yes"}]}, "executor[0].mpi_share_nodes must be true or false"),
    ({"executor": [{**_MPI_EXEC, "max_workers_per_block": 0}]}, "executor[0].max_workers_per_block must be an int"),
])
def test_bad_mpi_fields_are_named(data: dict[str, Any], message: str) -> None:
    data = {"cluster": {"partitions": [{"nodes": 8, "cores": 32}]}, **data}
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data)
    assert message in str(info.value)


def test_whole_nodes_take_any_ranks_per_node() -> None:
    # Without sharing a node is given whole, whatever its ranks (oversubscribing is the user's call).
    sc = parse_scenario({"cluster": {"partitions": [{"nodes": 8, "cores": 32}]},
                         "workload": [{"num_nodes": 2, "ranks_per_node": 64}], "executor": [_MPI_EXEC]})
    assert sc.workload[0].mpi


def test_packing_scenario_compares_the_policies(tmp_path: Path) -> None:
    sc = load_scenario(PACKING)
    policies = {cfg.label: (cfg.mpi_policy, cfg.mpi_share_nodes) for cfg in sc.executors}
    assert {pol for pol, _ in policies.values()} == set(MPI_POLICIES) and any(s for _, s in policies.values())
    results = run(sc, tmp_path, plots=False)
    rows = {row["label"]: row for row in read_csv(tmp_path / "runs.csv")}
    assert all(int(row["done"]) == sc.total_tasks for row in rows.values())
    assert {row["mpi_policy"] for row in rows.values()} == set(MPI_POLICIES)
    for r in results.runs:
        assert r.wall_seconds < 5
        placements = read_csv(tmp_path / r.label / "mpi_tasks.csv")
        assert len(placements) == sc.total_tasks
        assert all(len(row["nodes"].split()) == int(row["num_nodes"]) for row in placements)
    m = {r.label: r.metrics for r in results.runs}
    # The same work in every configuration (whole nodes); sharing nodes needs fewer node-hours for it.
    assert len({round(m[label]["node_hours_used"], 6) for label, (_, s) in policies.items() if not s}) == 1
    shared = next(label for label, (_, s) in policies.items() if s)
    assert m[shared]["node_hours_allocated"] < min(m[label]["node_hours_allocated"] for label in policies
                                                   if label != shared)
    # fifo leaves nodes idle; smallest_first makes some task wait longest.
    by_policy = {pol: m[label] for label, (pol, s) in policies.items() if not s}
    assert by_policy["fifo"]["utilization"] < by_policy["backfill"]["utilization"]
    assert by_policy["smallest_first"]["wait_max"] > by_policy["backfill"]["wait_max"]
    assert not math.isnan(by_policy["backfill"]["makespan"])


def test_packing_scenario_from_the_command_line(tmp_path: Path) -> None:
    from simcluster.cli import main

    assert main([str(PACKING), "-o", str(tmp_path), "--no-plots", "-q", "--only", "backfill"]) == 0
    rows = read_csv(tmp_path / "backfill" / "mpi_tasks.csv")
    per_node: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        for node in row["nodes"].split():
            per_node[node].append((float(row["start"]), float(row["end"])))
    for spans in per_node.values():
        spans.sort()
        assert all(b[0] >= a[1] for a, b in pairwise(spans))


def test_a_crashed_task_gives_its_nodes_back() -> None:
    # The first task kills its worker; the pool's core replaces the worker and frees the task's 2 nodes,
    # which the second task (2 nodes of the 2-node block) needs.
    sc = mpi_scenario([{"kind": "bag", "tasks": 1, "duration": 30, "num_nodes": 2, "crash_fraction": 1.0},
                       {"kind": "bag", "tasks": 1, "start": 1, "duration": 30, "num_nodes": 2}], nodes=2)
    _, p = simulate(sc)
    assert conservation_errors(p) == []
    assert [STATE_NAMES[s] for s in p.state] == ["lost", "done"]
    assert "worker process exited with code 9" in p.reasons[0]
    assert p.t_start[1] == p.t_end[0]  # the nodes came back with the dead worker
    check_trace(p)
