"""Whole simulated runs: every task ends exactly once, walltime kills and node failures lose tasks the way
the real executor does (ManagerLost with a reason), and the runs are reproducible."""

from __future__ import annotations

import math

import pytest

from htex_ref.core.strategy import TERMINAL
from simcluster import load_scenario, run
from simcluster.metrics import block_state, conservation_errors
from simcluster.pilot import DEP_FAILED, DONE, FAILED, LOST, STATE_NAMES
from tests.sim.helpers import SMOKE, scenario, simulate


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_task_ends_exactly_once_under_faults(seed: int) -> None:
    # Walltimes shorter than the work, node failures, priorities, dependency waves, other users' jobs.
    sc = scenario(
        seed=seed,
        partition={"nodes": 6, "node_mtbf_hours": 0.5, "repair_time": 300},
        background={"kind": "synthetic", "load": 0.4, "max_nodes": 2, "warmup": 1800,
                    "runtime": {"dist": "exponential", "mean": 600}},
        workload=[
            {"kind": "bag", "tasks": 60, "duration": {"dist": "uniform", "low": 5, "high": 200}},
            {"kind": "arrivals", "tasks": 80, "rate": 0.2, "priority": 1,
             "duration": {"dist": "pareto", "minimum": 5, "alpha": 1.5, "cap": 900}},
            {"kind": "waves", "tasks": 8, "waves": 4, "start": 100, "duration": 30},
        ],
        executor={"max_blocks": 3, "walltime": 400, "block_error_handler": "none"},
    )
    r, p = simulate(sc)
    assert conservation_errors(p) == []
    m = r.metrics
    ended = m["done"] + m["lost_walltime"] + m["lost_node_failure"] + m["lost_other"] + m["dep_failed"] \
        + m["failed"] + m["unfinished"]
    assert ended == m["tasks"] == 172
    assert m["lost_walltime"] > 0 and m["done"] > 0  # the scenario does exercise the walltime path
    for i in range(len(p.plan)):
        if p.state[i] == LOST:
            assert "ended (TIMEOUT)" in p.reasons[i] or "ended (FAILED" in p.reasons[i] \
                or "no heartbeat" in p.reasons[i], p.reasons[i]
    # No live block left behind: the executor's shutdown cancelled them.
    assert all(p.blocks[b].state in TERMINAL for b in p.blocks)


def test_walltime_kill_loses_running_tasks_with_a_reason() -> None:
    # One 4-worker block with a 100 s walltime; 4 tasks of 150 s start at 5 s (job start latency) and are
    # killed with the job at 100. The executor learns it at its next status refresh and the
    # interchange fails them with MANAGER_LOST naming the block and TIMEOUT.
    sc = scenario(workload=[{"kind": "bag", "tasks": 4, "duration": 150}],
                  executor={"strategy": "none", "init_blocks": 1, "max_blocks": 1, "walltime": 100,
                            "block_error_handler": "none"})
    r, p = simulate(sc)
    assert [STATE_NAMES[s] for s in p.state] == ["lost"] * 4
    assert all("its block 0 ended (TIMEOUT)" in p.reasons[i] for i in range(4))
    assert all(p.t_start[i] == 5 for i in range(4))
    assert all(p.t_end[i] == 100 for i in range(4))  # the work stopped when the job was killed
    assert r.metrics["lost_walltime"] == 4 and r.metrics["blocks_walltime"] == 1
    # The control thread wakes every 5 s (strategy_period) and refreshes when 10 s passed since the last
    # refresh: at 5, 15, ..., 95, 105. The kill at 100 is reported, and the tasks fail, at 105.
    assert r.metrics["makespan"] == 105
    assert block_state(p, "0")[0] == "TIMEOUT"


def test_node_failure_loses_tasks_through_the_block_report() -> None:
    # Two 1-node blocks of 4 workers; node 0 (block 0's) fails at 50 s. Block 0's job is FAILED, its 4
    # running tasks are lost at the next refresh; block 1's tasks finish.
    sc = scenario(workload=[{"kind": "bag", "tasks": 8, "duration": 100}],
                  cluster={"failures": [{"time": 50, "node": 0}]},
                  executor={"strategy": "none", "init_blocks": 2, "block_error_handler": "none"})
    r, p = simulate(sc)
    lost = [i for i in range(8) if p.state[i] == LOST]
    assert len(lost) == 4 and all(p.managers[p.t_mgr[i]].block == "0" for i in lost)
    assert all("ended (FAILED" in p.reasons[i] for i in lost)
    assert all(p.t_end[i] == 50 for i in lost)
    assert r.metrics["lost_node_failure"] == 4 and r.metrics["done"] == 4 and r.metrics["blocks_failed"] == 1


def test_heartbeat_expiry_loses_tasks_when_status_polling_is_slow() -> None:
    # With status refreshes every 1000 s, the interchange notices the dead manager first: no heartbeat
    # for heartbeat_threshold (30 s), heartbeats every 10 s.
    sc = scenario(workload=[{"kind": "bag", "tasks": 4, "duration": 500}],
                  cluster={"failures": [{"time": 52, "node": 0}]},
                  executor={"strategy": "none", "init_blocks": 1, "max_blocks": 1, "block_error_handler": "none",
                            "status_polling_interval": 1000, "heartbeat_threshold": 30, "heartbeat_period": 10})
    r, p = simulate(sc)
    assert all(p.state[i] == LOST and "no heartbeat" in p.reasons[i] for i in range(4))
    # Last heartbeat at 50 (ticks every 10 s), so the manager expires between 80 and 90.
    assert r.metrics["makespan"] is not None and 80 <= r.metrics["makespan"] <= 90


def test_registration_timeout_puts_the_executor_in_bad_state() -> None:
    # Pools that take longer to start than block_registration_timeout: the block is cancelled and
    # reported MISSING; the simple handler then fails every task with BadStateException.
    sc = scenario(executor={"strategy": "simple", "job_start_latency": 500, "block_registration_timeout": 60,
                            "max_blocks": 1})
    _r, p = simulate(sc)
    assert all(p.state[i] == FAILED and "BadStateException" in p.reasons[i] for i in range(20))
    assert "block_registration_timeout=60 s" in p.reasons[0]
    assert block_state(p, "0")[0] == "MISSING"
    assert conservation_errors(p) == []


def test_a_failed_wave_fails_the_waves_after_it() -> None:
    # Wave 0 runs on a block killed by its walltime; waves 1 and 2 depend on it and never run.
    sc = scenario(workload=[{"kind": "waves", "tasks": 4, "waves": 3, "duration": 200}],
                  executor={"strategy": "none", "init_blocks": 1, "walltime": 100, "block_error_handler": "none"})
    _, p = simulate(sc)
    assert [p.state[i] for i in range(12)] == [LOST] * 4 + [DEP_FAILED] * 8
    assert conservation_errors(p) == []


def test_waves_run_in_order() -> None:
    sc = scenario(workload=[{"kind": "waves", "tasks": 6, "waves": 3, "duration": {"dist": "uniform", "low": 5,
                                                                                    "high": 15}}])
    _, p = simulate(sc)
    assert all(p.state[i] == DONE for i in range(18))
    for w in (1, 2):
        previous_end = max(p.t_end[i] for i in range((w - 1) * 6, w * 6))
        assert all(p.t_submit[i] == previous_end for i in range(w * 6, (w + 1) * 6))


def test_priorities_go_first() -> None:
    # One worker; 5 tasks of priority 2 then 5 of priority 1, all submitted before the block registers:
    # the priority-1 tasks run first, each priority in submission order.
    sc = scenario(workload=[{"kind": "bag", "tasks": 5, "duration": 10, "priority": 2},
                            {"kind": "bag", "tasks": 5, "duration": 10, "priority": 1}],
                  executor={"strategy": "none", "init_blocks": 1, "max_workers_per_node": 1})
    _, p = simulate(sc)
    order = sorted(range(10), key=lambda i: p.t_start[i])
    assert order == [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]


def test_same_seed_same_results_other_seed_other_results(tmp_path: object) -> None:
    sc = load_scenario(SMOKE)
    a = run(sc).metrics()
    b = run(sc).metrics()
    c = run(sc.with_seed(sc.seed + 1)).metrics()
    assert a == b

    def same(x: object, y: object) -> bool:
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))

    assert any(not same(a[0][k], c[0][k]) for k in a[0])


def test_a_configuration_that_starts_no_block_fails_its_tasks_within_seconds() -> None:
    # strategy "none" with init_blocks 0: nothing will ever run them, and block control says so (NoBlocks)
    # after its grace, rather than leave them waiting until max_time.
    sc = scenario(max_time=3600, executor={"strategy": "none", "init_blocks": 0})
    r, p = simulate(sc)
    assert r.metrics["failed"] == 20 and r.metrics["unfinished"] == 0
    assert "NoBlocks: 20 task(s) of executor x waited 5 s" in p.reasons[0] and "strategy='none'" in p.reasons[0]
    assert 5 <= p.finished_at - p.t0 <= 5 + 2 * 10  # the grace, and up to two status refreshes
    assert conservation_errors(p) == []


def test_a_block_that_never_starts_leaves_tasks_unfinished_at_max_time() -> None:
    # Another user's job holds every node for longer than the run: the block stays pending (it is coming,
    # so its tasks wait), and the run ends at max_time with them unfinished.
    sc = scenario(max_time=3600, executor={"strategy": "none", "init_blocks": 1},
                  background={"jobs": [{"submit": -1, "nodes": 4, "runtime": 10**6, "walltime": 2 * 10**6}]})
    r, p = simulate(sc)
    assert r.metrics["unfinished"] == 20 and "time limit (3600 s" in p.reasons[0]
    assert conservation_errors(p) == []


def test_linger_keeps_the_executor_up_until_the_strategy_scaled_in() -> None:
    # 20 tasks of 10 s on 2 blocks; then no work: rule 4 scales both in after max_idletime (60 s), at a
    # strategy pass (every 5 s), and the executor shuts down at the next wake, long before linger runs out.
    at_once, pa = simulate(scenario())
    lingered, pl = simulate(scenario(executor={"linger": 600}))
    assert pa.stopped_at == pa.finished_at and at_once.metrics["blocks_scaled_in"] == 0
    assert lingered.metrics["makespan"] == at_once.metrics["makespan"]
    assert lingered.metrics["blocks_scaled_in"] == 2 and not pl.shutdown_blocks
    assert 60 <= pl.stopped_at - pl.finished_at <= 60 + 2 * 5
    assert pl.samples[-1].blocks_pending + pl.samples[-1].blocks_running == 0
    extra = (lingered.metrics["node_hours_allocated"] - at_once.metrics["node_hours_allocated"]) * 3600
    assert 2 * 60 <= extra <= 2 * (60 + 2 * 5)
    assert conservation_errors(pl) == []


def test_linger_ends_at_its_time_when_blocks_stay() -> None:
    # min_blocks 1: one block is scaled in, the other stays until the executor shuts down after linger.
    r, p = simulate(scenario(executor={"linger": 120, "min_blocks": 1}))
    assert p.stopped_at - p.finished_at == pytest.approx(120)
    assert r.metrics["blocks_scaled_in"] == 1 and len(p.shutdown_blocks) == 1
    assert [block_state(p, b)[0] for b in sorted(p.blocks)].count("CANCELLED") == 1
