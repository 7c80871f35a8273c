"""The scaling policy's known cases (docs/scaling.md), reproduced in simulation with the executor's own
control pass and strategy."""

from __future__ import annotations

import itertools
import math

from simcluster.metrics import block_state
from tests.sim.helpers import scenario, simulate

BIG_NODE = {"nodes": 4, "cores": 48, "memory_gb": 192}


def test_14_tasks_on_a_48_worker_block_do_not_oscillate() -> None:
    # Parsl's htex_auto_scale cancels the pending block (ceil((48-14)/48) = 1 block too many), then
    # submits it again on the next pass, over and over. Here the block waits 300 s in the batch queue behind
    # another user's job and its pool takes 120 s to register: dozens of strategy passes see it
    # unregistered, and it is neither cancelled nor joined by a second one.
    sc = scenario(partition={**BIG_NODE, "nodes": 1},
                  background={"jobs": [{"submit": -10, "nodes": 1, "runtime": 300, "walltime": 400}]},
                  workload=[{"kind": "bag", "tasks": 14, "duration": 60}],
                  executor={"strategy": "htex_auto_scale", "max_blocks": 2, "max_workers_per_node": 0,
                            "job_start_latency": 120, "max_idletime": 0})
    r, p = simulate(sc)
    assert r.metrics["blocks_submitted"] == 1
    assert r.metrics["blocks_scaled_in"] == 0
    assert r.metrics["done"] == 14
    rec = p.blocks["0"]
    assert math.isclose(rec.start, p.t0 + 290)  # when the other job ended
    assert r.metrics["makespan"] == 290 + 120 + 60


def test_49_tasks_on_48_worker_blocks_take_two_blocks_48_take_one() -> None:
    for tasks, blocks in ((48, 1), (49, 2)):
        sc = scenario(partition=BIG_NODE, workload=[{"kind": "bag", "tasks": tasks, "duration": 60}],
                      executor={"strategy": "simple", "max_blocks": 4, "max_workers_per_node": 0})
        r, _ = simulate(sc)
        assert r.metrics["blocks_submitted"] == blocks, tasks


def test_idle_blocks_are_scaled_in_after_max_idletime() -> None:
    # Two bags an hour apart; between them the blocks idle and go after max_idletime (300 s), counted
    # from when the last task ended; the second bag gets new blocks.
    for strategy in ("simple", "htex_auto_scale"):
        sc = scenario(workload=[{"kind": "bag", "tasks": 8, "duration": 100},
                                {"kind": "bag", "tasks": 8, "duration": 100, "start": 3600}],
                      executor={"strategy": strategy, "max_idletime": 300})
        r, p = simulate(sc)
        first_bag_end = max(p.t_end[i] for i in range(8))
        scaled = [b for b in p.blocks if block_state(p, b)[0] == "SCALED_IN"]
        assert scaled == ["0", "1"], strategy
        for b in scaled:
            gone = p.blocks[b].end - first_bag_end
            # At the first strategy pass (every 5 s) at or after 300 s of no work.
            assert 300 <= gone < 305, (strategy, gone)
        assert r.metrics["blocks_submitted"] == 4 and r.metrics["done"] == 16


def test_min_blocks_is_restored_after_a_walltime() -> None:
    # min_blocks=1 with a 600 s walltime and nothing to do for most of an hour: a new block follows each
    # one that reached its walltime, within one control pass (5 s).
    sc = scenario(workload=[{"kind": "bag", "tasks": 1, "duration": 10, "start": 3300}],
                  executor={"strategy": "simple", "min_blocks": 1, "walltime": 600})
    r, p = simulate(sc)
    states = [block_state(p, b)[0] for b in p.blocks]
    assert states == ["TIMEOUT"] * 5 + ["CANCELLED"]  # the last one at shutdown, after the task
    starts = [p.blocks[b].start - p.t0 for b in p.blocks]
    assert all(0 <= s2 - (s1 + 600) <= 5 for s1, s2 in itertools.pairwise(starts))
    assert r.metrics["done"] == 1


def test_a_task_sent_to_a_block_about_to_reach_its_walltime_is_lost() -> None:
    # The same, with the task arriving 5 s before the live block's walltime: htex dispatches to any
    # registered manager, so the task runs there and is lost with the block (a real risk the report shows).
    sc = scenario(workload=[{"kind": "bag", "tasks": 1, "duration": 10, "start": 3600}],
                  executor={"strategy": "simple", "min_blocks": 1, "walltime": 600})
    r, p = simulate(sc)
    assert r.metrics["lost_walltime"] == 1 and "ended (TIMEOUT)" in p.reasons[0]


def test_drain_before_walltime_keeps_tasks_off_blocks_about_to_end() -> None:
    # The same with drain_before_walltime=30: each block stops taking tasks 30 s before its walltime, its
    # pool exits, its job ends COMPLETED, the strategy starts the next block, and the task runs there.
    sc = scenario(workload=[{"kind": "bag", "tasks": 1, "duration": 10, "start": 3600}],
                  executor={"strategy": "simple", "min_blocks": 1, "walltime": 600, "drain_before_walltime": 30})
    r, p = simulate(sc)
    assert r.metrics["lost_walltime"] == 0 and r.metrics["done"] == 1
    states = [block_state(p, b)[0] for b in p.blocks]
    assert "TIMEOUT" not in states and states[:-1] == ["COMPLETED"] * (len(states) - 1)
    # Each block drained 30 s before its walltime: it ran 570 s from its job's start.
    ends = [p.blocks[b].end - p.blocks[b].start for b in p.blocks][:-1]
    assert ends and all(abs(e - 570) < 1e-6 for e in ends), ends


def test_long_tasks_drain_with_their_block_and_none_is_lost() -> None:
    # Tasks of 200 s arriving all the time on 600 s blocks: without a drain some run into the walltime;
    # with drain_before_walltime at the task length none does, and every task is done.
    wl = [{"kind": "arrivals", "tasks": 40, "rate": 0.02, "duration": 200}]
    ex = {"strategy": "simple", "max_blocks": 2, "walltime": 600}
    plain, _ = simulate(scenario(workload=wl, executor=ex))
    drained, _ = simulate(scenario(workload=wl, executor={**ex, "drain_before_walltime": 200}))
    assert plain.metrics["lost_walltime"] > 0
    assert drained.metrics["lost_walltime"] == 0 and drained.metrics["done"] == 40


def test_parallelism_half_takes_half_the_blocks() -> None:
    sc = scenario(workload=[{"kind": "bag", "tasks": 16, "duration": 60}],
                  executor={"strategy": "simple", "max_blocks": 4, "parallelism": 0.5})
    r, _ = simulate(sc)
    assert r.metrics["blocks_submitted"] == 2  # demand 8 on 4-worker blocks


def test_htex_auto_scale_cancels_idle_blocks_while_few_tasks_remain() -> None:
    # 4 blocks for 16 long tasks plus a stream of short ones; once only a few long tasks remain, rule 5
    # cancels the registered blocks idle for max_idletime, which simple keeps until no task is left.
    wl = [{"kind": "bag", "tasks": 16, "duration": {"dist": "uniform", "low": 100, "high": 2000}}]
    ex = {"max_blocks": 4, "max_idletime": 120}
    auto, _ = simulate(scenario(workload=wl, executor={**ex, "strategy": "htex_auto_scale"}))
    simple, _ = simulate(scenario(workload=wl, executor={**ex, "strategy": "simple"}))
    assert auto.metrics["makespan"] == simple.metrics["makespan"]
    assert auto.metrics["blocks_scaled_in"] > 0 and simple.metrics["blocks_scaled_in"] == 0
    assert auto.metrics["node_hours_allocated"] < simple.metrics["node_hours_allocated"]
