"""The simulated batch system on small cases worked out by hand: FCFS, EASY backfill, walltime, failures."""

from __future__ import annotations

import math

import simpy

from htex_ref.providers.base import JobState
from simcluster.scenario import Cluster, Partition
from simcluster.scheduler import Job, Scheduler


def cluster(nodes: int = 4, repair_time: float = 1000.0) -> tuple[simpy.Environment, Scheduler]:
    env = simpy.Environment()
    return env, Scheduler(env, Cluster(partitions=(Partition("p", nodes=nodes, repair_time=repair_time),)), seed=1)


def submit_at(env: simpy.Environment, sched: Scheduler, jobs: dict[str, Job], name: str, t: float, nodes: int,
              walltime: float, runtime: float | None = None) -> None:
    def go(_ev: simpy.Event) -> None:
        jobs[name] = sched.submit("p", nodes, walltime if runtime is None else runtime, walltime, owner=name)

    env.timeout(t).callbacks.append(go)


def starts(jobs: dict[str, Job]) -> dict[str, float]:
    return {name: job.start for name, job in sorted(jobs.items())}


def test_backfill_a_job_that_ends_before_the_heads_reservation() -> None:
    # 4 nodes. A (2 nodes, 100 s) runs. B (4 nodes) cannot start: its reservation is at 100 (A's walltime
    # end), with no extra node. C (2 nodes, 90 s) fits now and ends at 92 <= 100: backfilled at 2.
    # D (1 node, 200 s) submitted at 3: no free node. At 92 (C ends) D would end at 292 > 100 and there is
    # no extra node, so it waits. B starts at 100 and ends at 150; D starts at 150.
    env, sched = cluster()
    jobs: dict[str, Job] = {}
    submit_at(env, sched, jobs, "A", 0, 2, 100)
    submit_at(env, sched, jobs, "B", 1, 4, 50)
    submit_at(env, sched, jobs, "C", 2, 2, 90)
    submit_at(env, sched, jobs, "D", 3, 1, 200)
    env.run()
    assert starts(jobs) == {"A": 0, "B": 100, "C": 2, "D": 150}
    assert all(j.state == JobState.COMPLETED for j in jobs.values())


def test_backfill_a_long_job_on_the_extra_nodes() -> None:
    # 4 nodes. A (3 nodes, 100 s) runs. B (2 nodes) waits: at 100 there will be 4 free, so 2 extra.
    # C (1 node, 500 s) fits in the 1 free node; it ends after B's reservation but uses only an extra node,
    # so it starts at 2 and B still starts at 100.
    env, sched = cluster()
    jobs: dict[str, Job] = {}
    submit_at(env, sched, jobs, "A", 0, 3, 100)
    submit_at(env, sched, jobs, "B", 1, 2, 10)
    submit_at(env, sched, jobs, "C", 2, 1, 500)
    env.run()
    assert starts(jobs) == {"A": 0, "B": 100, "C": 2}


def test_no_backfill_that_would_delay_the_head() -> None:
    # 4 nodes. A (2 nodes, 100 s) runs; B (4 nodes, 50 s) reserved at 100 with no extra node. C (2 nodes,
    # 200 s) fits now but would still run at 100: it waits behind B (FCFS) and starts at 150.
    env, sched = cluster()
    jobs: dict[str, Job] = {}
    submit_at(env, sched, jobs, "A", 0, 2, 100)
    submit_at(env, sched, jobs, "B", 1, 4, 50)
    submit_at(env, sched, jobs, "C", 2, 2, 200)
    env.run()
    assert starts(jobs) == {"A": 0, "B": 100, "C": 150}


def test_reservation_uses_walltimes_but_jobs_end_at_their_runtime() -> None:
    # A asks 100 s but runs 30 s: B (4 nodes) starts when A really ends, at 30. C (2 nodes, 80 s),
    # submitted at 2, was backfilled then: 2 + 80 <= 100 (A's walltime end). B waits for C too: 82.
    env, sched = cluster()
    jobs: dict[str, Job] = {}
    submit_at(env, sched, jobs, "A", 0, 2, 100, runtime=30)
    submit_at(env, sched, jobs, "B", 1, 4, 50)
    submit_at(env, sched, jobs, "C", 2, 2, 80)
    env.run()
    assert starts(jobs) == {"A": 0, "B": 82, "C": 2}
    assert jobs["A"].end == 30


def test_walltime_kill_is_timeout_and_cancel_is_cancelled() -> None:
    env, sched = cluster()
    jobs: dict[str, Job] = {}
    submit_at(env, sched, jobs, "long", 0, 1, 100, runtime=500)
    submit_at(env, sched, jobs, "pilot", 0, 1, 60, runtime=math.inf)
    submit_at(env, sched, jobs, "queued", 0, 4, 60)

    def cancel(_ev: simpy.Event) -> None:
        assert jobs["queued"].state == JobState.PENDING
        assert sched.cancel(jobs["queued"].job_id)

    env.timeout(10).callbacks.append(cancel)
    env.run()
    assert (jobs["long"].state, jobs["long"].end) == (JobState.TIMEOUT, 100)
    assert (jobs["pilot"].state, jobs["pilot"].end) == (JobState.TIMEOUT, 60)
    assert (jobs["queued"].state, jobs["queued"].end) == (JobState.CANCELLED, 10)
    assert math.isnan(jobs["queued"].start)


def test_node_failure_fails_its_job_and_the_node_returns_after_repair() -> None:
    # 2 nodes. A (2 nodes) runs; node 1 fails at 10: A FAILED. B (2 nodes) must wait for the repair (10 + 50);
    # C (1 node, 20 s) runs at once on the surviving node.
    env, sched = cluster(nodes=2, repair_time=50)
    jobs: dict[str, Job] = {}
    submit_at(env, sched, jobs, "A", 0, 2, 1000)
    submit_at(env, sched, jobs, "B", 5, 2, 100)
    submit_at(env, sched, jobs, "C", 6, 1, 20)
    env.timeout(10).callbacks.append(lambda _ev: sched.fail_node("p", 1))
    env.run()
    assert jobs["A"].state == JobState.FAILED and jobs["A"].end == 10 and "p-1 failed" in jobs["A"].message
    assert jobs["C"].start == 10 and jobs["C"].alloc == [0]
    assert jobs["B"].start == 60
    assert sched.failures == [(10, "p", 1, jobs["A"].job_id)]
