"""End-to-end on a real Slurm cluster: SlurmProvider blocks, worker pools on the compute nodes, tasks.

Every test uses only the ClusterInfo (tests/cluster/conftest.py), so it runs on the local namespace
cluster and on the compose cluster alike.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from clusters.info import ClusterInfo
from htex_ref import HighThroughputExecutor, ManagerLost
from htex_ref.core.affinity import plan_cpu_affinity
from htex_ref.launchers import SimpleLauncher, SingleNodeLauncher
from htex_ref.providers.base import JobState
from htex_ref.providers.slurm import SlurmProvider
from tests.cluster.conftest import ClusterExecutors, active_jobs, record_timing, slurm, wait_for
from tests.rendezvous import meet

# When Slurm ends a job (scancel, walltime) it sends SIGTERM to every process of the step, in no set
# order. The pool holds a worker killed by SIGTERM for a grace period, so its task is lost with the
# pool (ManagerLost naming the SIGTERM) even when the pool sees the worker die before its own signal.


def check_lost_with_block(fut: Any, timeout: float) -> None:
    with pytest.raises(ManagerLost) as info:
        fut.result(timeout)
    # Either the pool's goodbye after its SIGTERM, or (when the pool is killed outright) the executor
    # telling the interchange that the block's job ended.
    print(f"\nlost with its block: {info.value}")


def where(hold: float = 0.0, marker: str | None = None, rendezvous: str | None = None,
          count: int = 0) -> dict[str, Any]:
    """Runs on a worker: where it runs, as the node sees it. With ``rendezvous``, it first waits until
    ``count`` such tasks run together (each on its own worker)."""
    if marker:
        Path(marker).write_text(socket.gethostname())
    if rendezvous:
        meet(rendezvous, count)
    time.sleep(hold)
    return {
        "host": socket.gethostname(),
        "job": os.environ.get("SLURM_JOB_ID"),
        "rank": int(os.environ.get("PARSL_WORKER_RANK", "-1")),
        "cpus": sorted(os.sched_getaffinity(0)),
        # The worker pool started this worker: its CPUs are what the pool planned with.
        "pool_cpus": sorted(os.sched_getaffinity(os.getppid())),
    }


def managers_by_block(ex: HighThroughputExecutor) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for m in ex.connected_managers():
        found.setdefault(m["block_id"], []).append(m)
    return found


def wait_registered(ex: HighThroughputExecutor, provider: SlurmProvider, managers: int,
                    timeout: float = 90) -> dict[str, list[dict[str, Any]]]:
    """Wait until ``managers`` managers are connected; record for each block how long after its sbatch its
    first manager registered."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while True:
        by_block = managers_by_block(ex)
        now = time.monotonic()
        for block in by_block:
            if block not in seen:
                seen[block] = now
                job = provider.jobs[ex.blocks_to_job_id[block]]
                # submitted_at is taken on the provider's clock (monotonic) right after sbatch returned.
                record_timing("sbatch -> worker pool registered", now - job.submitted_at)
        if sum(len(v) for v in by_block.values()) >= managers:
            return by_block
        if now > deadline:
            raise AssertionError(f"only {by_block} registered within {timeout} s; blocks: {ex.status()}; "
                                 f"scripts and job output in {provider.script_dir}")
        time.sleep(0.05)


def block_state(ex: HighThroughputExecutor, block: str) -> JobState:
    return ex.status()[block].state


# ------------------------------------------------------------------------------------------- placement


def test_tasks_run_on_every_node(executors: ClusterExecutors, cluster: ClusterInfo) -> None:
    n = len(cluster.nodes)
    p = executors.provider(init_blocks=n, max_blocks=n)
    ex = executors(p)
    managers = wait_registered(ex, p, n)
    assert sorted(m["hostname"] for ms in managers.values() for m in ms) == sorted(cluster.nodes)
    workers = sum(m["worker_count"] for ms in managers.values() for m in ms)
    results = [f.result(60) for f in [ex.submit(where, 0.5) for _ in range(2 * workers)]]
    assert {r["host"] for r in results} == set(cluster.nodes)
    jobs = {ex.blocks_to_job_id[b] for b in managers}
    assert {r["job"] for r in results} == jobs


def test_a_block_spans_nodes(executors: ClusterExecutors, cluster: ClusterInfo) -> None:
    n = len(cluster.nodes)
    p = executors.provider(nodes_per_block=n)
    ex = executors(p)
    managers = wait_registered(ex, p, n)
    assert list(managers) == ["0"], f"one block expected, got managers of blocks {list(managers)}"
    assert sorted(m["hostname"] for m in managers["0"]) == sorted(cluster.nodes)
    workers = sum(m["worker_count"] for m in managers["0"])
    results = [f.result(60) for f in [ex.submit(where, 0.5) for _ in range(2 * workers)]]
    assert {r["host"] for r in results} == set(cluster.nodes)
    assert {r["job"] for r in results} == {ex.blocks_to_job_id["0"]}


def test_single_node_launcher_runs_for_real(executors: ClusterExecutors, cluster: ClusterInfo) -> None:
    p = executors.provider(launcher=SingleNodeLauncher())
    ex = executors(p, max_workers_per_node=2)
    wait_registered(ex, p, 1)
    results = [f.result(60) for f in [ex.submit(where, 0.2) for _ in range(4)]]
    assert len({r["host"] for r in results}) == 1 and results[0]["host"] in cluster.nodes
    assert {r["job"] for r in results} == {ex.blocks_to_job_id["0"]}


def test_cpu_affinity_plan_is_applied_on_the_nodes(executors: ClusterExecutors, cluster: ClusterInfo) -> None:
    n = len(cluster.nodes)
    w = min(2, cluster.cores_per_node)
    p = executors.provider(init_blocks=n, max_blocks=n)
    ex = executors(p, cpu_affinity="block", max_workers_per_node=w, prefetch_capacity=0)
    wait_registered(ex, p, n)
    # Tasks that wait for each other: each of the w * n workers takes exactly one.
    meeting = str(Path(ex.run_dir) / "meet")
    results = [f.result(90) for f in [ex.submit(where, 0.0, None, meeting, w * n) for _ in range(w * n)]]
    assert sorted((r["host"], r["rank"]) for r in results) == sorted((h, r) for h in cluster.nodes for r in range(w))
    for r in results:
        plan = plan_cpu_affinity("block", r["pool_cpus"], w)
        assert plan is not None
        assert r["cpus"] == list(plan[r["rank"]]), f"worker {r['rank']} on {r['host']}: {r['cpus']} vs {plan}"
        assert r["cpus"] != r["pool_cpus"] or w == 1, "the worker was not pinned"
    for host in cluster.nodes:
        mine = [set(r["cpus"]) for r in results if r["host"] == host]
        assert all(not a & b for i, a in enumerate(mine) for b in mine[i + 1:]), f"workers on {host} share CPUs"


# -------------------------------------------------------------------------------------------- scaling


def test_blocks_scale_out_and_in_and_leave_the_queue(executors: ClusterExecutors) -> None:
    p = executors.provider(init_blocks=0, max_blocks=2)
    ex = executors(p)
    blocks = ex.scale_out(2)
    assert len(blocks) == 2
    jobs = [ex.blocks_to_job_id[b] for b in blocks]
    assert sorted(active_jobs(jobs)) == sorted(jobs)
    wait_registered(ex, p, 2)
    assert sorted(ex.scale_in(2)) == sorted(blocks)
    t0 = time.monotonic()
    assert wait_for(lambda: not active_jobs(jobs), 30), f"jobs {active_jobs(jobs)} still queued after scale_in"
    record_timing("scale_in -> jobs out of the queue", time.monotonic() - t0)
    assert all(ex.status()[b].state is JobState.SCALED_IN for b in blocks)
    assert [s.state for s in p.status(jobs)] == [JobState.CANCELLED, JobState.CANCELLED]
    assert wait_for(lambda: not ex.connected_managers(), 15), ex.connected_managers()
    # The executor carries on with a new block.
    (new,) = ex.scale_out(1)
    assert new not in blocks
    assert ex.submit(where).result(90)["job"] == ex.blocks_to_job_id[new]


@pytest.mark.parametrize("source", ["auto", "squeue"])
def test_scancel_from_outside_is_noticed(executors: ClusterExecutors, source: str) -> None:
    p = executors.provider(status_source=source)
    ex = executors(p)
    marker = Path(ex.run_dir) / "started"
    fut = ex.submit(where, 600, str(marker))
    assert wait_for(marker.exists, 90), f"the task never started; see {p.script_dir}"
    job = ex.blocks_to_job_id["0"]
    t0 = time.monotonic()
    slurm("scancel", job)
    check_lost_with_block(fut, 30)
    record_timing("scancel -> ManagerLost", time.monotonic() - t0)
    assert wait_for(lambda: block_state(ex, "0") is JobState.CANCELLED, 15), ex.status()
    record_timing(f"scancel -> block CANCELLED ({source})", time.monotonic() - t0)
    st = ex.status()["0"]
    assert st.stdout_path and Path(st.stdout_path).parent == Path(p.script_dir or "")


def test_walltime_ends_a_block_and_the_executor_carries_on(executors: ClusterExecutors) -> None:
    """A block whose job reaches its walltime (1 minute, Slurm's smallest; Slurm checks limits every 30 s,
    so the job ends 60 to 90 s after it started): its task fails with ManagerLost, the block is TIMEOUT,
    and the strategy starts a new block that runs the next task."""
    p = executors.provider(walltime="00:01:00", init_blocks=1, min_blocks=1, max_blocks=1)
    ex = executors(p, strategy="simple", strategy_period=1)
    marker = Path(ex.run_dir) / "started"
    fut = ex.submit(where, 600, str(marker))
    assert wait_for(marker.exists, 90), f"the task never started; see {p.script_dir}"
    t0 = time.monotonic()
    check_lost_with_block(fut, 150)
    record_timing("task start -> ManagerLost at walltime 00:01:00", time.monotonic() - t0)
    assert wait_for(lambda: block_state(ex, "0") is JobState.TIMEOUT, 15), ex.status()
    after = ex.submit(where).result(90)
    assert after["job"] != ex.blocks_to_job_id["0"]
    assert "1" in ex.status() and ex.blocks_to_job_id["1"] == after["job"]


def test_drain_before_walltime_ends_a_block_before_slurm_does(executors: ClusterExecutors) -> None:
    """With a 1-minute walltime and drain_before_walltime=45, a block stops taking tasks 15 s after its
    job script started, finishes its task, and ends COMPLETED rather than killed at the walltime; the
    next task runs on a new block."""
    p = executors.provider(walltime="00:01:00", init_blocks=1, min_blocks=1, max_blocks=1)
    ex = executors(p, strategy="simple", strategy_period=1, drain_before_walltime=45)
    first = ex.submit(where, 3).result(90)
    assert first["job"] == ex.blocks_to_job_id["0"]
    t0 = time.monotonic()
    assert wait_for(lambda: block_state(ex, "0") is JobState.COMPLETED, 45), ex.status()
    record_timing("first task done -> drained block COMPLETED (drain 15 s after job start)", time.monotonic() - t0)
    after = ex.submit(where).result(90)
    assert after["job"] != ex.blocks_to_job_id["0"]
    assert not ex.bad_state_is_set


# ------------------------------------------------------------------------------- provider on its own


@pytest.mark.parametrize("source", ["squeue", "sacct", "auto"])
def test_job_states_through_the_provider(executors: ClusterExecutors, cluster: ClusterInfo, source: str) -> None:
    if source == "sacct" and not cluster.accounting:
        pytest.skip("this cluster has no Slurm accounting (sacct)")
    p = executors.provider(status_source=source, launcher=SimpleLauncher(), init_blocks=0)
    p.script_dir = str(Path(executors.run_dir()) / "scripts")
    ok, bad, slow = p.submit("true", 1, "ok"), p.submit("exit 3", 1, "bad"), p.submit("sleep 300", 1, "slow")
    # Just after sbatch (sacct may not list the jobs yet): never an ended or missing job.
    assert not any(s.terminal for s in p.status([ok, bad, slow]))
    assert wait_for(lambda: p.status([slow])[0].state is JobState.RUNNING, 30), p.status([slow])
    assert p.cancel([slow]) == [True]
    assert wait_for(lambda: [s.state for s in p.status([ok, bad])] == [JobState.COMPLETED, JobState.FAILED], 30), \
        p.status([ok, bad])
    assert p.accounting is (source == "sacct" or (source == "auto" and cluster.accounting))
    if p.accounting:
        assert p.status([bad])[0].exit_code == 3
    assert wait_for(lambda: not active_jobs([slow]), 30)
    # Slurm has ended it by now; it was cancelled, and stays so.
    assert p.status([slow])[0].state is JobState.CANCELLED
    out = Path(p.jobs[bad].stdout_path)
    assert out.parent == Path(p.script_dir) and out.exists()


def test_scheduler_options_override_generated_directives(executors: ClusterExecutors) -> None:
    p = executors.provider(launcher=SimpleLauncher(), init_blocks=0, walltime="00:10:00",
                           scheduler_options="#SBATCH --time=00:05:00\n#SBATCH --job-name=user-named")
    p.script_dir = str(Path(executors.run_dir()) / "scripts")
    job = p.submit("sleep 300", 1, "opts")
    try:
        shown = slurm("scontrol", "show", "job", "-o", job).stdout
        assert "TimeLimit=00:05:00" in shown and "JobName=user-named" in shown, shown
    finally:
        p.cancel([job])


def test_slurm_commands_see_the_cluster(cluster: ClusterInfo) -> None:
    nodes = slurm("sinfo", "--noheader", "--Node", "--format=%N").stdout.split()
    assert set(cluster.nodes) <= set(nodes)
    with pytest.raises(subprocess.CalledProcessError):
        slurm("scontrol", "show", "job", "999999999")
