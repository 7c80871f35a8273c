"""Task control in simcluster, by the same rules as the executor: a task's time limit stops it in the
pool's core (``ManagerState``) and its worker is replaced; runs lost with their worker or node are
retried by ``htex_ref.core.retry`` (the executor's rule), up to the crash limit."""

from __future__ import annotations

import time
from typing import Any

import pytest

from htex_ref import LocalProvider, TaskTimeout
from simcluster.metrics import compute, conservation_errors
from simcluster.pilot import DONE, LOST
from simcluster.states import TIMED_OUT
from simcluster.workload import build_tasks
from tests.sim.helpers import scenario, simulate

LIMIT = 10.0


def limited(**executor: Any) -> Any:
    return scenario(
        workload=[{"kind": "bag", "tasks": 40, "duration": {"dist": "uniform", "low": 1, "high": 20},
                   "walltime": LIMIT}],
        executor={"max_blocks": 1, "init_blocks": 1, "min_blocks": 1, **executor})


def test_tasks_longer_than_their_walltime_are_stopped_at_it_and_the_rest_finish() -> None:
    sc = limited()
    plan = build_tasks(sc.workload, sc.seed)
    _, p = simulate(sc)
    assert conservation_errors(p) == []
    long = {i for i in range(len(plan)) if plan.duration[i] > LIMIT}
    assert 0 < len(long) < len(plan)
    assert {i for i in range(len(plan)) if p.state[i] == TIMED_OUT} == long
    assert {i for i in range(len(plan)) if p.state[i] == DONE} == set(range(len(plan))) - long
    for i in long:
        assert p.t_end[i] - p.t_start[i] == pytest.approx(LIMIT)
        assert "TaskTimeout" in p.reasons[i]
    assert compute(p)["timed_out"] == len(long)
    # Workers were replaced: tasks kept starting after the first stops.
    first_stop = min(p.t_end[i] for i in long)
    assert any(p.t_start[i] >= first_stop for i in range(len(plan)))


def test_crashing_tasks_are_retried_up_to_the_crash_limit() -> None:
    sc = scenario(
        workload=[{"kind": "bag", "tasks": 30, "duration": {"dist": "fixed", "value": 2}, "crash_fraction": 0.2}],
        executor={"max_blocks": 1, "init_blocks": 1, "min_blocks": 1, "max_retries_on_system_failure": 3,
                  "crash_limit": 2})
    plan = build_tasks(sc.workload, sc.seed)
    crashed = {i for i in range(len(plan)) if plan.crash[i]}
    _, p = simulate(sc)
    assert conservation_errors(p) == []
    assert {i for i in range(len(plan)) if p.state[i] == LOST} == crashed
    for i in crashed:
        assert p.reasons[i].startswith("CrashLimitExceeded") and len(p.attempts[i]) == 2
    assert p.retries == len(crashed)  # each ran twice: one retry each


def test_tasks_on_a_failed_node_are_retried_elsewhere() -> None:
    def run(retries: int) -> Any:
        sc = scenario(
            workload=[{"kind": "bag", "tasks": 16, "duration": {"dist": "fixed", "value": 100}}],
            executor={"max_blocks": 2, "init_blocks": 2, "min_blocks": 2, "max_retries_on_system_failure": retries,
                      "heartbeat_period": 5, "heartbeat_threshold": 20},
            cluster={"failures": [{"time": 50, "node": 0}]})
        return simulate(sc)[1]

    without = run(0)
    lost = {i for i in range(16) if without.state[i] == LOST}
    assert lost, "the failure lost no task: the scenario does not test anything"
    with_retries = run(1)
    assert conservation_errors(with_retries) == []
    assert all(with_retries.state[i] == DONE for i in range(16))
    assert {i for i, a in with_retries.attempts.items() if a} == lost
    assert with_retries.retries == len(lost)


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.mark.e2e
def test_the_same_tasks_time_out_in_simulation_and_on_real_processes(make_executor: Any) -> None:
    sc = scenario(
        workload=[{"kind": "bag", "tasks": 3, "duration": {"dist": "fixed", "value": 0.1}, "walltime": 1.0},
                  {"kind": "bag", "tasks": 3, "duration": {"dist": "fixed", "value": 3.0}, "walltime": 1.0},
                  {"kind": "bag", "tasks": 2, "duration": {"dist": "fixed", "value": 0.2}}],
        executor={"max_blocks": 1, "init_blocks": 1, "min_blocks": 1, "max_workers_per_node": 4})
    plan = build_tasks(sc.workload, sc.seed)
    _, p = simulate(sc)
    sim = {i for i in range(len(plan)) if p.state[i] == TIMED_OUT}
    ex = make_executor(max_workers_per_node=4, task_kill_grace=0.5, provider=LocalProvider(init_blocks=1))
    futures = [ex.submit(sleep_for, plan.duration[i],
                         resource_specification={"walltime": plan.walltime[i]} if plan.walltime[i] else None)
               for i in range(len(plan))]
    real = set()
    for i, f in enumerate(futures):
        try:
            f.result(60)
        except TaskTimeout:
            real.add(i)
    assert 0 < len(sim) < len(plan)
    assert sim == real
