"""simcluster runs htex_ref's own pool core (``ManagerState``): a worker killed by its task gives the same
``WorkerLost`` accounting in a simulated run as on real processes (the same tasks lost, with the same
reason; every other task done, on workers that replaced the dead ones)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from htex_ref import LocalProvider, WorkerLost
from simcluster.pilot import DONE, LOST
from simcluster.workload import build_tasks
from tests.sim.helpers import scenario, simulate

TASKS = 24


def crash_scenario() -> Any:
    return scenario(
        workload=[{"kind": "bag", "tasks": TASKS, "duration": {"dist": "fixed", "value": 0.2}, "crash_fraction": 0.25}],
        executor={"init_blocks": 1, "min_blocks": 1, "max_blocks": 1, "max_workers_per_node": 2,
                  "prefetch_capacity": 0, "strategy": "none"},
    )


def run_or_crash(crash: bool) -> str:
    if crash:
        os._exit(9)
    return "ok"


def test_the_scenario_has_crashes_and_survivors() -> None:
    plan = build_tasks(crash_scenario().workload, crash_scenario().seed)
    assert 0 < sum(plan.crash) < TASKS


@pytest.mark.e2e
def test_worker_loss_accounting_is_the_same_in_simulation_and_on_real_processes(make_executor: Any) -> None:
    sc = crash_scenario()
    plan = build_tasks(sc.workload, sc.seed)
    crashed = {i for i in range(TASKS) if plan.crash[i]}

    _, pilot = simulate(sc)
    sim_lost = {i for i in range(TASKS) if pilot.state[i] == LOST}
    sim_done = {i for i in range(TASKS) if pilot.state[i] == DONE}

    ex = make_executor(max_workers_per_node=2, prefetch_capacity=0, provider=LocalProvider(init_blocks=1))
    futures = [ex.submit(run_or_crash, bool(plan.crash[i])) for i in range(TASKS)]
    real_lost: dict[int, str] = {}
    real_done = set()
    for i, f in enumerate(futures):
        try:
            assert f.result(60) == "ok"
            real_done.add(i)
        except WorkerLost as e:
            real_lost[i] = e.detail

    assert sim_lost == set(real_lost) == crashed
    assert sim_done == real_done == set(range(TASKS)) - crashed
    # The reason is the pool core's, word for word, in both.
    for i in crashed:
        assert pilot.reasons[i] == real_lost[i] == "worker process exited with code 9 while running the task"
    # Each pool replaced its dead workers and kept both slots.
    assert all(m.state.workers[r].starts > 1 for m in pilot.managers for r in m.state.workers
               if any(pilot.t_worker[i] == r for i in crashed))
    managers = ex.connected_managers()
    assert len(managers) == 1 and managers[0]["worker_count"] == 2
