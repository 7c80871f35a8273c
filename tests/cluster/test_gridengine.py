"""End-to-end on a real Grid Engine cluster (scripts/test-gridengine.sh starts it: clusters/gridengine.py, a
qmaster and execution hosts in network namespaces): GridEngineProvider blocks, worker pools on the
execution hosts, tasks; the same cases as the Slurm cluster tests, with Grid Engine's own commands
(qdel, h_rt, qacct).

Skipped unless ``HTEX_CLUSTER_INFO`` names a Grid Engine cluster's ClusterInfo, so the Slurm runs of
tests/cluster leave this module out and this cluster runs only it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from clusters.info import ClusterInfo
from htex_ref import BadStateException, HighThroughputExecutor, ManagerLost
from htex_ref.launchers import SimpleLauncher
from htex_ref.providers import GridEngineProvider
from htex_ref.providers.base import JobState
from htex_ref.providers.gridengine import parse_qstat_xml
from tests.cluster.conftest import ClusterExecutors, record_timing, wait_for

INFO = ClusterInfo.from_env()
pytestmark = pytest.mark.skipif(INFO is None or INFO.name != "gridengine",
                                reason="no Grid Engine cluster (scripts/test-gridengine.sh starts one)")


def ge(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """A Grid Engine command on the submit host, with the cluster's environment (set for the session)."""
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=check)


def queued(job_ids: list[str] | None = None) -> list[str]:
    """Every user's jobs still in the queue (any state), optionally only among ``job_ids``."""
    jobs = parse_qstat_xml(ge("qstat", "-u", "*", "-xml").stdout)
    return [j for j in jobs if job_ids is None or j in job_ids]


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterInfo]:
    assert INFO is not None
    saved = {k: os.environ.get(k) for k in INFO.env}
    os.environ.update(INFO.env)
    # Task functions defined here travel by value: the execution hosts need not import tests/.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    assert not queued(), f"jobs already in the queue before the cluster tests: {queued()}"
    yield INFO
    if not wait_for(lambda: not queued(), 60):
        left = queued()
        ge("qdel", *left, check=False)
        pytest.fail(f"jobs left in the queue after the cluster tests: {left} (deleted now)")
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class GridEngineExecutors(ClusterExecutors):
    """Started executors with a GridEngineProvider on the cluster; shut down after the test."""

    def ge_provider(self, **kwargs: Any) -> GridEngineProvider:
        kwargs.setdefault("queue", self.info.partition)
        kwargs.setdefault("walltime", "00:10:00")
        kwargs.setdefault("cmd_timeout", 30)
        kwargs.setdefault("status_polling_interval", 1)
        kwargs.setdefault("init_blocks", 1)
        kwargs.setdefault("max_blocks", max(1, kwargs["init_blocks"]))
        p = GridEngineProvider(**kwargs)
        self.providers.append(p)  # type: ignore[arg-type]  # close() cancels what is left of its jobs
        return p


@pytest.fixture
def executors(cluster: ClusterInfo, request: pytest.FixtureRequest) -> Iterator[GridEngineExecutors]:
    made = GridEngineExecutors(cluster, request.node.name.replace("/", "_").replace("[", "-").strip("]"))
    yield made
    made.close()
    ids = made.job_ids()
    assert wait_for(lambda: not queued(ids), 60), f"jobs of this test still queued 60 s after shutdown: {queued(ids)}"


def where(hold: float = 0.0, marker: str | None = None) -> dict[str, Any]:
    """Runs on a worker: which host and Grid Engine job it runs in."""
    if marker:
        Path(marker).write_text(socket.gethostname())
    time.sleep(hold)
    return {"host": socket.gethostname(), "job": os.environ.get("JOB_ID")}


def wait_registered(ex: HighThroughputExecutor, managers: int, timeout: float = 90) -> list[dict[str, Any]]:
    t0 = time.monotonic()
    assert wait_for(lambda: len(ex.connected_managers()) >= managers, timeout), \
        f"only {ex.connected_managers()} registered within {timeout} s; blocks: {ex.status()}"
    record_timing("executor start -> pools registered (Grid Engine)", time.monotonic() - t0)
    return ex.connected_managers()


def block_state(ex: HighThroughputExecutor, block: str) -> JobState:
    return ex.status()[block].state


# ------------------------------------------------------------------------------------------ placement


def test_tasks_run_on_every_execution_host(executors: GridEngineExecutors, cluster: ClusterInfo) -> None:
    n = len(cluster.nodes)
    ex = executors(executors.ge_provider(init_blocks=n, max_blocks=n))
    managers = wait_registered(ex, n)
    # The queue has one slot per host: each block has a host to itself.
    assert sorted(m["hostname"] for m in managers) == sorted(cluster.nodes)
    workers = sum(m["worker_count"] for m in managers)
    results = [f.result(60) for f in [ex.submit(where, 0.5) for _ in range(2 * workers)]]
    assert {r["host"] for r in results} == set(cluster.nodes)
    assert {r["job"] for r in results} == set(ex.blocks_to_job_id.values())


# -------------------------------------------------------------------------------------------- scaling


def test_blocks_scale_out_and_in_and_leave_the_queue(executors: GridEngineExecutors) -> None:
    p = executors.ge_provider(init_blocks=0, max_blocks=2)
    ex = executors(p)
    blocks = ex.scale_out(2)
    assert len(blocks) == 2
    jobs = [ex.blocks_to_job_id[b] for b in blocks]
    assert sorted(queued(jobs)) == sorted(jobs)
    wait_registered(ex, 2)
    assert sorted(ex.scale_in(2)) == sorted(blocks)
    t0 = time.monotonic()
    assert wait_for(lambda: not queued(jobs), 30), f"jobs {queued(jobs)} still queued after scale_in"
    record_timing("scale_in -> jobs out of the queue (Grid Engine)", time.monotonic() - t0)
    assert all(ex.status()[b].state is JobState.SCALED_IN for b in blocks)
    assert [s.state for s in p.status(jobs)] == [JobState.CANCELLED, JobState.CANCELLED]
    assert wait_for(lambda: not ex.connected_managers(), 15), ex.connected_managers()
    (new,) = ex.scale_out(1)
    assert new not in blocks
    assert ex.submit(where).result(90)["job"] == ex.blocks_to_job_id[new]


def test_qdel_from_outside_is_noticed(executors: GridEngineExecutors) -> None:
    p = executors.ge_provider()
    ex = executors(p)
    marker = Path(ex.run_dir) / "started"
    fut = ex.submit(where, 600, str(marker))
    assert wait_for(marker.exists, 90), f"the task never started; see {p.script_dir}"
    job = ex.blocks_to_job_id["0"]
    t0 = time.monotonic()
    ge("qdel", job)
    with pytest.raises(ManagerLost):
        fut.result(30)
    record_timing("qdel -> ManagerLost", time.monotonic() - t0)
    # qacct's record (failed 100, exit_status 137: SIGKILL) says the job was deleted.
    assert wait_for(lambda: block_state(ex, "0") is JobState.CANCELLED, 30), ex.status()
    record_timing("qdel -> block CANCELLED (qacct)", time.monotonic() - t0)
    st = ex.status()["0"]
    assert st.stdout_path and Path(st.stdout_path).parent == Path(p.script_dir or "")


def test_walltime_ends_a_block_and_the_executor_carries_on(executors: GridEngineExecutors) -> None:
    """h_rt=20 s: Grid Engine kills the job (SIGKILL); its task fails with ManagerLost, qacct says failed 37
    (the limit), so the block is TIMEOUT, and the strategy starts a new block that runs the next task."""
    p = executors.ge_provider(walltime="00:00:20", init_blocks=1, min_blocks=1, max_blocks=1)
    ex = executors(p, strategy="simple", strategy_period=1)
    marker = Path(ex.run_dir) / "started"
    fut = ex.submit(where, 600, str(marker))
    assert wait_for(marker.exists, 90), f"the task never started; see {p.script_dir}"
    t0 = time.monotonic()
    with pytest.raises(ManagerLost):
        fut.result(90)
    record_timing("task start -> ManagerLost at h_rt 00:00:20", time.monotonic() - t0)
    assert wait_for(lambda: block_state(ex, "0") is JobState.TIMEOUT, 30), ex.status()
    after = ex.submit(where).result(90)
    assert after["job"] != ex.blocks_to_job_id["0"]
    assert ex.blocks_to_job_id["1"] == after["job"]


# ----------------------------------------------------------------------------------------- block errors


def test_a_block_that_fails_reports_its_exit_code(executors: GridEngineExecutors) -> None:
    """A job that ends before its pool registers fails the executor with the exit code from qacct and the
    tail of the job's output."""
    p = executors.ge_provider(worker_init="echo 'this node has no python' >&2; exit 7")
    ex = executors(p)
    fut = ex.submit(where)
    with pytest.raises(BadStateException, match="EXIT CODE: 7") as info:
        fut.result(90)
    assert "this node has no python" in str(info.value)
    assert block_state(ex, "0") is JobState.FAILED


# ------------------------------------------------------------------------------- provider on its own


def test_job_states_through_the_provider(executors: GridEngineExecutors) -> None:
    p = executors.ge_provider(launcher=SimpleLauncher(), init_blocks=0)
    p.script_dir = str(Path(executors.run_dir()) / "scripts")
    ok, bad, slow = p.submit("true", 1, "ok"), p.submit("exit 3", 1, "bad"), p.submit("sleep 300", 1, "slow")
    assert not any(s.terminal for s in p.status([ok, bad, slow]))
    assert wait_for(lambda: [s.state for s in p.status([ok, bad])] == [JobState.COMPLETED, JobState.FAILED], 60), \
        p.status([ok, bad])
    assert p.status([bad])[0].exit_code == 3
    assert wait_for(lambda: p.status([slow])[0].state is JobState.RUNNING, 60), p.status([slow])
    assert p.cancel([slow]) == [True]
    assert wait_for(lambda: not queued([slow]), 30)
    assert p.status([slow])[0].state is JobState.CANCELLED
    out = Path(p.jobs[bad].stdout_path)
    assert out.parent == Path(p.script_dir) and out.exists()


def test_scheduler_options_override_generated_directives(executors: GridEngineExecutors) -> None:
    p = executors.ge_provider(launcher=SimpleLauncher(), init_blocks=0,
                              scheduler_options="#$ -l h_rt=00:05:00\n#$ -N user-named")
    p.script_dir = str(Path(executors.run_dir()) / "scripts")
    job = p.submit("sleep 300", 1, "opts")
    try:
        shown = ge("qstat", "-j", job).stdout
        assert "h_rt=300" in shown.replace(" ", ""), shown
        assert "job_name:user-named" in shown.replace(" ", ""), shown
    finally:
        p.cancel([job])
