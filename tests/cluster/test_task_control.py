"""Task control on a real Slurm: a task's time limit stops it on a compute node, a task lost with a block
cancelled by ``scancel`` is retried on the other block, and a memory limit holds inside a Slurm job."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from clusters.info import ClusterInfo
from htex_ref import TaskMemoryExceeded, TaskTimeout
from htex_ref.protocol import Outcome
from tests.cluster.conftest import ClusterExecutors, record_timing, slurm, wait_for


def job_and_pid(marker: str | None = None, hold: float = 0.0) -> dict[str, Any]:
    if marker:
        Path(marker).write_text(f"{os.environ.get('SLURM_JOB_ID')} {os.getpid()}")
    time.sleep(hold)
    return {"job": os.environ.get("SLURM_JOB_ID"), "pid": os.getpid(), "host": socket.gethostname()}


def allocate(mib: int) -> int:
    return len(bytearray(mib * 2**20))


def test_a_task_time_limit_stops_it_on_a_compute_node(executors: ClusterExecutors, cluster: ClusterInfo) -> None:
    p = executors.provider()
    ex = executors(p, max_workers_per_node=1, task_kill_grace=1.0)
    before = ex.submit(job_and_pid).result(120)
    t0 = time.monotonic()
    fut = ex.submit(job_and_pid, None, 600, resource_specification={"walltime": 2})
    with pytest.raises(TaskTimeout) as info:
        fut.result(60)
    record_timing("submit -> TaskTimeout (walltime 2 s, Slurm node)", time.monotonic() - t0)
    assert info.value.hostname == before["host"]
    after = ex.submit(job_and_pid).result(60)
    # The same block, a new worker process.
    assert after["job"] == before["job"] and after["pid"] != before["pid"]


def test_a_task_lost_to_scancel_is_retried_on_the_other_block(executors: ClusterExecutors) -> None:
    p = executors.provider(init_blocks=2, min_blocks=2, max_blocks=2)
    ex = executors(p, max_workers_per_node=1, max_retries_on_system_failure=1, strategy="none")
    assert wait_for(lambda: len(ex.connected_managers()) == 2, 120), f"blocks did not register; see {p.script_dir}"
    marker = Path(ex.run_dir) / "first"
    fut = ex.submit(job_and_pid, str(marker), 20)
    assert wait_for(marker.exists, 90)
    victim = marker.read_text().split()[0]
    t0 = time.monotonic()
    slurm("scancel", victim)
    result = fut.result(120)
    record_timing("scancel -> retried task done (20 s task)", time.monotonic() - t0)
    assert result["job"] != victim and result["job"] in ex.blocks_to_job_id.values()
    [attempt] = fut.attempts
    assert attempt.outcome is Outcome.MANAGER_LOST


def test_a_memory_limit_holds_inside_a_slurm_job(executors: ClusterExecutors) -> None:
    p = executors.provider()
    ex = executors(p, max_workers_per_node=2, mem_per_worker=0.25, enforce_memory=True)
    with pytest.raises(TaskMemoryExceeded) as info:
        ex.submit(allocate, 1024).result(120)
    assert info.value.limit == int(0.25 * 2**30)
    assert ex.submit(allocate, 32).result(60) == 32 * 2**20
