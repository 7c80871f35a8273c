"""simcluster's provider model: a scenario's submit latency and reported state sequences
(``[executor.provider]``), parsed and checked, applied by SimProvider on the virtual clock, and felt by a
whole simulated run."""

from __future__ import annotations

import math

import pytest
import simpy

from htex_ref.providers.base import JobState
from simcluster.provider import SimProvider, reported
from simcluster.scenario import Cluster, Partition, ProviderModel, ScenarioError, StateStep
from simcluster.scheduler import Scheduler
from tests.sim.helpers import scenario, simulate

TORQUE_LIKE = {
    "submit_latency": 2,
    "queued": [{"state": "PENDING"}, {"after": 600, "state": "HELD", "message": "held by the scheduler"}],
    "running": [{"state": "PENDING", "message": "ContainerCreating"}, {"after": 20, "state": "RUNNING"}],
    "ended": [{"state": "RUNNING", "message": "exiting"}, {"after": 5, "state": "final"}],
    "final": {"TIMEOUT": "COMPLETED"},
}


def model(**table: object) -> ProviderModel:
    return scenario(executor={"provider": table}).executors[0].provider


# ---------------------------------------------------------------------------------------- parsing


def test_the_default_is_the_batch_systems_own_states_at_once() -> None:
    assert scenario().executors[0].provider == ProviderModel()
    assert model() == ProviderModel()


def test_a_full_model_is_read() -> None:
    m = model(**TORQUE_LIKE)
    assert (m.submit_latency.dist, m.submit_latency.value) == ("fixed", 2.0)
    assert m.queued == (StateStep(0.0, "PENDING"), StateStep(600.0, "HELD", "held by the scheduler"))
    assert m.running[1] == StateStep(20.0, "RUNNING")
    assert m.ended == (StateStep(0.0, "RUNNING", "exiting"), StateStep(5.0, "final"))
    assert m.final == (("TIMEOUT", "COMPLETED"),)
    drawn = model(submit_latency={"dist": "uniform", "low": 1, "high": 5}).submit_latency
    assert (drawn.dist, drawn.low, drawn.high) == ("uniform", 1.0, 5.0)


@pytest.mark.parametrize(("table", "where"), [
    ({"queued": [{"state": "COMPLETED"}]}, "executor[0].provider.queued[0].state"),
    ({"running": [{"state": "final"}]}, "executor[0].provider.running[0].state"),
    ({"ended": [{"state": "DONE"}]}, "executor[0].provider.ended[0].state"),
    ({"ended": [{"state": "RUNNING", "after": 5}, {"state": "final", "after": 5}]}, "ended[1].after"),
    ({"queued": []}, "executor[0].provider.queued"),
    ({"queued": [{"state": "PENDING", "when": 3}]}, "unknown keys ['when']"),
    ({"final": {"MISSING": "COMPLETED"}}, "executor[0].provider.final has unknown keys"),
    ({"final": {"FAILED": "RUNNING"}}, "executor[0].provider.final.FAILED"),
    ({"submit_latency": -1}, "submit_latency"),
    ({"latency": 1}, "unknown keys ['latency']"),
])
def test_bad_models_are_refused_naming_the_field(table: dict[str, object], where: str) -> None:
    with pytest.raises(ScenarioError, match=where.replace("[", r"\[").replace("]", r"\]")):
        model(**table)


# ------------------------------------------------------------------------------------ the provider


def _cluster(env: simpy.Environment) -> Scheduler:
    return Scheduler(env, Cluster(partitions=(Partition(name="p", nodes=2, cores=4),)), seed=1)


def _sequence(p: SimProvider, env: simpy.Environment, job: str, times: list[float]) -> list[tuple[float, str, str]]:
    seen = []
    for t in times:
        env.run(until=t)
        st = p.status([job])[0]
        seen.append((t, st.state.name, st.message or ""))
    return seen


def test_states_follow_the_model_through_a_jobs_life() -> None:
    env = simpy.Environment()
    sched = _cluster(env)
    # Two nodes: the first job takes both, so the second waits (queued) until the first one ends.
    p = SimProvider(sched, "p", nodes_per_block=2, max_blocks=2, walltime=100.0,
                    model=model(**TORQUE_LIKE), seed=1)
    first = p.submit("pool", 1, "a")
    second = p.submit("pool", 1, "b")
    assert [s.state for s in p.status([first, second])] == [JobState.PENDING, JobState.PENDING]
    # The first reaches the queue after the 2 s submit latency and starts; 20 s of "ContainerCreating".
    assert _sequence(p, env, first, [1, 3, 21, 23, 101, 104, 107]) == [
        (1, "PENDING", ""),
        (3, "PENDING", "ContainerCreating"),
        (21, "PENDING", "ContainerCreating"),
        (23, "RUNNING", ""),
        (101, "RUNNING", ""),                  # still running: killed at its 100 s walltime at t=102
        (104, "RUNNING", "exiting"),
        (107, "COMPLETED", "walltime reached"),  # TIMEOUT, renamed by final
    ]
    assert sched.jobs[first].state is JobState.TIMEOUT
    # The second waited in the queue for the first's nodes, then started as its own "ContainerCreating".
    assert sched.jobs[second].start == 102
    assert (p.status([second])[0].state, p.status([second])[0].message) == (JobState.PENDING, "ContainerCreating")


def test_a_job_queued_long_enough_is_reported_held() -> None:
    env = simpy.Environment()
    sched = _cluster(env)
    p = SimProvider(sched, "p", nodes_per_block=2, max_blocks=2, walltime=1000.0, model=model(**TORQUE_LIKE))
    p.submit("pool", 1, "a")
    waiting = p.submit("pool", 1, "b")
    assert _sequence(p, env, waiting, [599, 601]) == [(599, "PENDING", ""), (601, "HELD", "held by the scheduler")]


def test_reported_is_pure_and_final_keeps_states_it_does_not_rename() -> None:
    env = simpy.Environment()
    sched = _cluster(env)
    job = sched.submit("p", 1, math.inf, 50.0, owner="x")
    m = model(ended=[{"state": "final"}], final={"TIMEOUT": "FAILED"})
    sched.cancel(job.job_id)
    assert reported(m, job, env.now) == (JobState.CANCELLED, "cancelled")
    assert reported(ProviderModel(), job, env.now) == (JobState.CANCELLED, "cancelled")


def test_the_submit_latency_is_drawn_with_the_seed() -> None:
    starts = []
    for seed in (1, 1, 2):
        env = simpy.Environment()
        sched = _cluster(env)
        p = SimProvider(sched, "p", model=model(submit_latency={"dist": "uniform", "low": 1, "high": 50}), seed=seed)
        job = p.submit("pool", 1, "a")
        env.run(until=60)
        starts.append(sched.jobs[job].start)
    assert starts[0] == starts[1] != starts[2] and all(1 <= s <= 50 for s in starts)


# ---------------------------------------------------------------------------------- a whole run


def test_a_slow_submitting_batch_system_delays_every_block() -> None:
    fast, _ = simulate(scenario())
    slow, pilot = simulate(scenario(executor={"provider": {"submit_latency": 300}}))
    assert slow.metrics["done"] == fast.metrics["done"] == 20
    for rec in pilot.blocks.values():
        assert rec.start - rec.submit >= 300
    assert slow.metrics["makespan"] >= fast.metrics["makespan"] + 300 - 1


def test_a_provider_that_reports_pending_while_pools_start_still_runs_the_workload() -> None:
    r, pilot = simulate(scenario(executor={"provider": {"running": [{"state": "PENDING"},
                                                                    {"after": 60, "state": "RUNNING"}]}}))
    assert r.metrics["done"] == 20
    assert all(rec.state in ("CANCELLED", "COMPLETED", "TIMEOUT") for rec in pilot.blocks.values())
