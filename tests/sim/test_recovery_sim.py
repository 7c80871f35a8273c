"""Recovery in simcluster: the cores' acknowledgement, re-registration and drop rules without faults, and
the scenario's ``[[faults]]`` (an interchange restart, a network partition shorter or longer than
``heartbeat_threshold``) carried out with them: every task resolved exactly once, nothing delivered twice,
and scenario errors that name the key."""

from __future__ import annotations

from typing import Any

import pytest
import simpy

from simcluster import ScenarioError, load_scenario, parse_scenario, run_one
from simcluster.metrics import conservation_errors
from simcluster.pilot import DONE, LOST, Pilot
from simcluster.scenario import Cluster, Partition
from simcluster.scheduler import Scheduler
from tests.sim.helpers import BASE, ROOT, scenario, simulate

#: Two one-node blocks of 4 workers kept up all run, heartbeats every 10 s, expiry after 60 s.
EXECUTOR: dict[str, Any] = {"heartbeat_threshold": 60, "heartbeat_period": 10, "min_blocks": 2, "init_blocks": 2}
#: 200 tasks of 10 to 30 s: about 500 s on the 8 workers.
WORKLOAD = [{"kind": "bag", "tasks": 200, "duration": {"dist": "uniform", "low": 10, "high": 30}}]


def run(faults: list[dict[str, Any]], **executor: Any) -> tuple[dict[str, Any], Pilot]:
    r, p = simulate(scenario(executor={**EXECUTOR, **executor}, workload=WORKLOAD, faults=faults, max_time=20000))
    return r.metrics, p


def check_once(m: dict[str, Any], p: Pilot) -> None:
    """Every task resolved exactly once, none lost to the recovery, none resolved twice."""
    assert conservation_errors(p) == []
    assert m["delivered_twice"] == 0
    assert m["never_resolved"] == 0
    assert m["unfinished"] == 0


def test_results_are_acknowledged_so_pools_keep_nothing() -> None:
    m, p = run([])
    check_once(m, p)
    assert m["done"] == 200
    # Every result batch was acknowledged to its pool's core: none is kept (the leak this fixes).
    assert all(not pool.state.unacked for pool in p.managers)
    assert (m["interchange_restarts"], m["partitions"], m["late_results"], m["duplicate_runs"]) == (0, 0, 0, 0)


def test_restart_mid_run_loses_nothing_and_doubles_nothing() -> None:
    m, p = run([{"kind": "interchange_restart", "at": 60, "down": 2}])
    check_once(m, p)
    assert m["done"] == 200 and m["interchange_restarts"] == 1
    assert m["retries"] == 0  # recovery is not a retry
    # The new interchange was sent every outstanding task; the pools (back within their 10 s) claimed
    # what they held (8 workers, no prefetch), the rest, still queued when it died, was queued again.
    [(at, sent)] = p.recoveries
    assert at == pytest.approx(62.0)
    assert m["adopted_after_restart"] == 8
    assert m["requeued_after_restart"] == sent - 8 > 100
    # Each task queued again records an attempt, as its future would.
    assert sum(len(a) for a in p.attempts.values()) == m["requeued_after_restart"]
    assert m["late_results"] == 0 and m["duplicate_runs"] == 0


def test_restart_longer_than_the_pools_wait_runs_everything_again_on_new_blocks() -> None:
    # Down 30 s: each pool's connection stays refused past its 10 s grace, so it exits and its job ends.
    m, p = run([{"kind": "interchange_restart", "at": 60, "down": 30}])
    check_once(m, p)
    assert m["done"] == 200
    assert m["adopted_after_restart"] == 0 and m["requeued_after_restart"] == p.recoveries[0][1]
    assert m["blocks_submitted"] > 2  # the strategy replaced the blocks whose pools gave up


def test_partition_shorter_than_heartbeat_threshold_loses_nothing() -> None:
    m, p = run([{"kind": "partition", "at": 60, "duration": 20, "block": "0"}], max_retries_on_system_failure=2)
    check_once(m, p)
    assert m["partitions"] == 1 and m["done"] == 200
    # No ManagerLost: nothing failed, nothing retried, nothing dropped or run twice.
    assert m["retries"] == 0 and m["lost_other"] == 0 and not p.reasons
    assert (m["dropped_on_pools"], m["duplicate_runs"], m["late_results"]) == (0, 0, 0)


def test_partition_longer_than_heartbeat_threshold_fails_the_pools_tasks_and_it_drops_them() -> None:
    m, p = run([{"kind": "partition", "at": 60, "duration": 90, "block": "0"}])
    check_once(m, p)
    lost = [ti for ti in range(200) if p.state[ti] == LOST]
    # Block 0's pool held 4 tasks (4 workers, no prefetch) when it went silent: they failed as ManagerLost.
    assert len(lost) == 4 and m["lost_other"] == 4
    assert all("no heartbeat for" in p.reasons[ti] for ti in lost)
    # It came back within its reconnect_timeout (120 s), was asked to register again, and was told to
    # drop them: their results never reached the executor.
    pool = next(pool for pool in p.managers if pool.block == "0")
    assert pool.alive or pool.died_at > 60 + 90
    assert m["dropped_on_pools"] == 4 and m["late_results"] == 0
    assert m["done"] == 196


def test_partition_longer_than_heartbeat_threshold_with_retries_runs_them_again_once() -> None:
    m, p = run([{"kind": "partition", "at": 60, "duration": 90, "block": "0"}], max_retries_on_system_failure=2)
    check_once(m, p)
    assert m["done"] == 200 and m["retries"] == 4 and m["dropped_on_pools"] == 4
    assert all(p.state[ti] == DONE for ti in range(200))


def test_partition_of_running_tasks_runs_them_twice_but_delivers_once() -> None:
    # Tasks of 100 s: the 4 that block 0 runs are still running when it is declared lost, so they run on
    # both sides of the partition; the silent pool is told to drop its runs when it comes back.
    long = [{"kind": "bag", "tasks": 40, "duration": {"dist": "fixed", "value": 100}}]
    sc = scenario(executor={**EXECUTOR, "max_retries_on_system_failure": 2}, workload=long, max_time=20000,
                  faults=[{"kind": "partition", "at": 30, "duration": 80, "nodes": 1}])
    r, p = simulate(sc)
    m = r.metrics
    check_once(m, p)
    assert m["done"] == 40 and m["retries"] == 4
    assert m["duplicate_runs"] == 4 and m["dropped_on_pools"] == 4 and m["late_results"] == 0


def test_faults_together_keep_every_task_resolved_once() -> None:
    m, p = run([{"kind": "partition", "at": 50, "duration": 90, "block": "0"},
                {"kind": "interchange_restart", "at": 70, "down": 3}], max_retries_on_system_failure=2)
    check_once(m, p)
    assert m["done"] == 200 and m["interchange_restarts"] == 1 and m["partitions"] == 1


def test_faults_are_reproducible() -> None:
    faults = [{"kind": "partition", "at": 50, "duration": 90, "nodes": 1},
              {"kind": "interchange_restart", "at": 70, "down": 3}]
    assert run(faults)[0] == run(faults)[0]


def parse(faults: Any) -> None:
    parse_scenario({**BASE, "faults": faults})


@pytest.mark.parametrize(("faults", "message"), [
    ({"kind": "partition"}, "faults must be an array of tables"),
    ([{"at": 5}], "faults[0].kind is required"),
    ([{"kind": "crash", "at": 5}], "faults[0].kind must be one of ['interchange_restart', 'partition']"),
    ([{"kind": "interchange_restart", "down": 5}], "faults[0].at is required"),
    ([{"kind": "interchange_restart", "at": -1, "down": 5}], "faults[0].at must be a finite number >= 0"),
    ([{"kind": "interchange_restart", "at": 5}], "faults[0].down is required"),
    ([{"kind": "interchange_restart", "at": 5, "down": 0}], "faults[0].down must be a finite number > 0"),
    ([{"kind": "interchange_restart", "at": 5, "down": 1, "duration": 3}],
     "faults[0].duration only goes with kind = 'partition'"),
    ([{"kind": "partition", "at": 5, "block": "0"}], "faults[0].duration is required"),
    ([{"kind": "partition", "at": 5, "duration": 9, "down": 3, "block": "0"}],
     "faults[0].down only goes with kind = 'interchange_restart'"),
    ([{"kind": "partition", "at": 5, "duration": 9}], "faults[0]: a partition needs exactly one of block"),
    ([{"kind": "partition", "at": 5, "duration": 9, "block": "0", "nodes": 1}],
     "faults[0]: a partition needs exactly one of block"),
    ([{"kind": "partition", "at": 5, "duration": 9, "nodes": 0}], "faults[0].nodes must be an int >= 1"),
    ([{"kind": "partition", "at": 5, "duration": 9, "block": ""}], "faults[0].block must be a block id"),
    ([{}, {"kind": "partition", "at": 5, "duration": 9, "block": "0", "when": 3}], "faults[0].kind is required"),
    ([{"kind": "partition", "at": 5, "duration": 9, "block": "0", "when": 3}], "faults[0] has unknown keys ['when']"),
])
def test_bad_faults_are_refused_naming_the_key(faults: Any, message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse(faults)
    assert message in str(e.value)


def test_faults_parse_in_time_order() -> None:
    sc = parse_scenario({**BASE, "faults": [
        {"kind": "partition", "at": 50, "duration": 9, "block": 1},
        {"kind": "interchange_restart", "at": 10, "down": 2}]})
    assert [(f.kind, f.at) for f in sc.faults] == [("interchange_restart", 10.0), ("partition", 50.0)]
    assert sc.faults[1].block == "1"  # an int block id is read as the id it names


def test_the_example_scenario_recovers_every_task_once() -> None:
    sc = load_scenario(ROOT / "examples" / "scenarios" / "faults.toml")
    for cfg in sc.executors:
        r = run_one(sc, cfg, keep=True)
        assert r.pilot is not None
        m = r.metrics
        check_once(m, r.pilot)
        assert (m["interchange_restarts"], m["partitions"]) == (2, 2)
        # The two nodes cut off past heartbeat_threshold held 16 tasks: each failed (or ran again) and was
        # dropped by its pool when it came back, including those sent to it while it was cut off.
        assert m["dropped_on_pools"] == 16
        assert (m["lost_other"], m["retries"]) == ((16, 0) if cfg.max_retries_on_system_failure == 0 else (0, 16))


def test_a_node_repaired_after_failing_while_free_is_never_given_twice_to_one_job() -> None:
    # Found by the recovery counts: a block's job held a node twice, so two pools with one manager id
    # registered, and one of them was asked to register again and drop what the other ran.
    env = simpy.Environment()
    sched = Scheduler(env, Cluster(partitions=(Partition("p", nodes=4, repair_time=10.0),)), seed=1)
    sched.fail_node("p", 0)  # free when it fails: its heap entry stays, and the repair adds another
    env.run(until=20)
    job = sched.submit("p", 4, 100.0, 200.0, owner="x")
    env.run(until=30)
    assert sorted(job.alloc) == [0, 1, 2, 3]


def test_tasks_running_counts_workers_busy_with_tasks_handed_over_in_advance() -> None:
    # Short tasks are handed to busy workers in advance; each one that starts as the one before ends must
    # leave the count of running tasks as it was (it used to grow by one each time).
    short = [{"kind": "bag", "tasks": 400, "duration": {"dist": "exponential", "mean": 0.05}}]
    r, p = simulate(scenario(executor={**EXECUTOR, "prefetch_capacity": "auto"}, workload=short))
    assert r.metrics["done"] == 400
    assert p.running == 0
    assert max(s.tasks_running for s in p.samples) <= p.workers_per_node * 2
