"""Task control on real processes: time limits that stop C code and a bash app's children, cancels of
queued, prefetched and running tasks, retries after lost workers and pools, the crash limit, and memory
limits. Each test submits real tasks to a real executor (LocalProvider, ZeroMQ, worker processes)."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import htex_ref
from htex_ref import Config, LocalProvider, bash_app
from htex_ref.errors import CrashLimitExceeded, ManagerLost, TaskMemoryExceeded, TaskTimeout, WorkerLost
from htex_ref.protocol import Outcome
from tests.conftest import processes_mentioning, wait_until
from tests.e2e.test_faults import alive

pytestmark = pytest.mark.e2e

WAIT = 60


def c_sleep(seconds: float) -> str:
    """Sleep inside C (libc usleep through ctypes): no Python code runs until it returns."""
    import ctypes

    ctypes.CDLL(None).usleep(int(seconds * 1e6))
    return "woke"


def whoami(_: Any = None) -> tuple[int, int]:
    return os.getpid(), int(os.environ["PARSL_WORKER_RANK"])


def child_then_sleep(tag: str, pidfile: str, seconds: float) -> None:
    """Start a child process (``tag`` in its command line), record both pids, sleep."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)", tag])
    Path(pidfile).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(seconds)


def mark_and_sleep(marker: str, seconds: float) -> str:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(marker + ".done").touch()
    return marker


def record_pids(path: str) -> int:
    """Write this worker's and pool's pids, then wait for the file to be removed (or 60 s)."""
    Path(path).write_text(f"{os.getpid()} {os.getppid()}")
    deadline = time.time() + 60
    while Path(path).exists() and time.time() < deadline:
        time.sleep(0.05)
    return os.getppid()


def pids_in(path: Path) -> list[int]:
    assert wait_until(lambda: path.exists() and len(path.read_text().split()) == 2, WAIT)
    return [int(x) for x in path.read_text().split()]


# ------------------------------------------------------------------------------------- walltime


def test_a_c_level_sleep_is_stopped_at_its_walltime_and_the_worker_replaced(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1, task_kill_grace=1.0)
    first_pid, rank = ex.submit(whoami).result(WAIT)
    t0 = time.monotonic()
    fut = ex.submit(c_sleep, 60, resource_specification={"walltime": 1})
    with pytest.raises(TaskTimeout) as info:
        fut.result(WAIT)
    took = time.monotonic() - t0
    err = info.value
    assert err.limit == 1 and err.worker_id == rank and "walltime of 1 s" in str(err)
    assert took < 20, f"the time limit took {took:.1f} s"
    assert not alive(first_pid)
    new_pid, new_rank = ex.submit(whoami).result(WAIT)
    assert new_rank == rank and new_pid != first_pid
    # A task that ends in time is not touched.
    assert ex.submit(c_sleep, 0.1, resource_specification={"walltime": 30}).result(WAIT) == "woke"
    assert ex.outstanding == 0
    print(f"\nC-level sleep stopped {took:.2f} s after submit (walltime 1 s)")


def test_a_bash_app_and_its_child_sleep_are_stopped_at_their_walltime(tmp_path: Path) -> None:
    run = tmp_path / "run"
    pidfile = tmp_path / "pids"

    @bash_app
    def sleeper(pidfile: str, seconds: float = 300, walltime: float = 1.0) -> str:
        return f"echo $$ > {pidfile}; sleep {seconds} & echo $! >> {pidfile}; wait"

    ex = htex_ref.HighThroughputExecutor(max_workers_per_node=1, run_dir=str(run), encrypted=False,
                                         address="127.0.0.1", task_kill_grace=1.0)
    with htex_ref.load(Config(executors=[ex])):
        fut = sleeper(str(pidfile))
        with pytest.raises(TaskTimeout):
            fut.result(WAIT)
        shell, sleep = (int(x) for x in pidfile.read_text().split())
        assert wait_until(lambda: not alive(shell) and not alive(sleep), 10), "the bash app's processes live on"
        pidfile.unlink()
        # The call's walltime overrides the default; a short command in time succeeds.
        assert sleeper(str(pidfile), seconds=0.1, walltime=30).result(WAIT) == 0
        assert ex.submit(whoami).result(WAIT)
    assert wait_until(lambda: not processes_mentioning(str(run)), 10)


def test_a_python_task_s_child_processes_die_with_it(make_executor: Any, tmp_path: Path) -> None:
    ex = make_executor(max_workers_per_node=1)
    pidfile = tmp_path / "pids"
    fut = ex.submit(child_then_sleep, str(tmp_path / "child-tag"), str(pidfile), 60,
                    resource_specification={"walltime": 2})
    worker, child = pids_in(pidfile)
    with pytest.raises(TaskTimeout):
        fut.result(WAIT)
    assert wait_until(lambda: not alive(worker) and not alive(child), 10)


# --------------------------------------------------------------------------------------- cancel


def test_cancel_of_a_queued_task_drops_it_and_nothing_hangs(make_executor: Any, tmp_path: Path) -> None:
    """The issue's scenario: cancel a queued task, then lose a worker; the count drops and shutdown returns."""
    ex = make_executor(max_workers_per_node=2)
    busy = [ex.submit(mark_and_sleep, str(tmp_path / f"busy{i}"), 2) for i in range(2)]
    assert wait_until(lambda: all((tmp_path / f"busy{i}").exists() for i in range(2)), WAIT)
    queued = ex.submit(mark_and_sleep, str(tmp_path / "queued"), 0)
    assert queued.cancel() and queued.cancelled()
    assert ex.outstanding == 2
    assert [f.result(WAIT) for f in busy]
    with pytest.raises(WorkerLost):
        ex.submit(os._exit, 9).result(WAIT)
    assert ex.submit(whoami).result(WAIT)
    assert ex.outstanding == 0
    assert not (tmp_path / "queued").exists(), "the cancelled task ran"
    t0 = time.monotonic()
    ex.shutdown()
    assert time.monotonic() - t0 < 15


def test_cancel_of_a_task_prefetched_by_a_pool_drops_it_there(make_executor: Any, tmp_path: Path) -> None:
    ex = make_executor(max_workers_per_node=1, prefetch_capacity=2)
    running = ex.submit(mark_and_sleep, str(tmp_path / "running"), 2)
    assert wait_until(lambda: (tmp_path / "running").exists(), WAIT)
    prefetched = ex.submit(mark_and_sleep, str(tmp_path / "prefetched"), 0)
    # The pool holds it (capacity 1 worker + 2 prefetch) before it is cancelled.
    assert wait_until(lambda: ex.connected_managers()[0]["tasks"] == 2, WAIT)
    assert prefetched.cancel()
    assert running.result(WAIT)
    assert ex.submit(whoami).result(WAIT)
    assert not (tmp_path / "prefetched").exists(), "the cancelled task ran"
    assert wait_until(lambda: ex.connected_managers()[0]["tasks"] == 0, WAIT)
    log = next(Path(ex.logdir).rglob("manager.log")).read_text()
    assert "Stopping worker" not in log


@pytest.mark.parametrize("cancel_running", [True, False])
def test_cancel_of_a_running_task(make_executor: Any, tmp_path: Path, cancel_running: bool) -> None:
    ex = make_executor(max_workers_per_node=2, cancel_running=cancel_running, task_kill_grace=1.0)
    marker = tmp_path / "victim"
    victim = ex.submit(mark_and_sleep, str(marker), 5)
    neighbour = ex.submit(mark_and_sleep, str(tmp_path / "neighbour"), 3)
    assert wait_until(lambda: marker.exists() and (tmp_path / "neighbour").exists(), WAIT)
    worker = int(marker.read_text())
    assert victim.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        victim.result(0)
    assert ex.outstanding == 1
    if cancel_running:
        assert wait_until(lambda: not alive(worker), 10), "the cancelled task's worker lives on"
    else:
        assert wait_until(lambda: Path(str(marker) + ".done").exists(), WAIT), "the task did not finish"
        assert alive(worker)
    # The neighbour on the same pool was not disturbed, and the slot works again.
    assert neighbour.result(WAIT) == str(tmp_path / "neighbour")
    assert [ex.submit(whoami).result(WAIT) for _ in range(2)]
    assert ex.outstanding == 0


def test_shutdown_with_cancel_futures_cancels_everything_outstanding(make_executor: Any, tmp_path: Path) -> None:
    ex = make_executor(max_workers_per_node=1)
    futures = [ex.submit(mark_and_sleep, str(tmp_path / f"t{i}"), 30) for i in range(5)]
    assert wait_until(lambda: (tmp_path / "t0").exists(), WAIT)
    t0 = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - t0 < 15
    assert all(f.cancelled() for f in futures)
    assert not any((tmp_path / f"t{i}").exists() for i in range(1, 5))


# -------------------------------------------------------------------------------------- retries


def test_a_task_whose_worker_is_killed_is_retried_and_the_attempt_recorded(make_executor: Any,
                                                                          tmp_path: Path) -> None:
    ex = make_executor(max_workers_per_node=1, max_retries_on_system_failure=2)
    path = tmp_path / "pids"
    fut = ex.submit(record_pids, str(path))
    worker, pool = pids_in(path)
    path.unlink()
    os.kill(worker, signal.SIGKILL)
    # The second run finds the file it wrote again: remove it so that it returns.
    assert wait_until(lambda: path.exists(), WAIT)
    path.unlink()
    assert fut.result(WAIT) == pool
    [attempt] = fut.attempts
    assert attempt.number == 1 and attempt.outcome is Outcome.WORKER_LOST and attempt.where == "worker 0"
    assert "-9" in attempt.detail


def test_a_task_whose_pool_is_killed_is_retried_on_the_other_block(make_executor: Any, tmp_path: Path) -> None:
    ex = make_executor(max_workers_per_node=1, max_retries_on_system_failure=1, heartbeat_period=1,
                       heartbeat_threshold=3, provider=LocalProvider(init_blocks=2, min_blocks=2, max_blocks=2))
    assert wait_until(lambda: len(ex.connected_managers()) == 2, WAIT)
    path = tmp_path / "pids"
    fut = ex.submit(record_pids, str(path))
    _, pool = pids_in(path)
    path.unlink()
    os.kill(pool, signal.SIGKILL)
    assert wait_until(lambda: path.exists(), WAIT)
    _, second_pool = pids_in(path)
    path.unlink()
    assert fut.result(WAIT) == second_pool != pool
    [attempt] = fut.attempts
    assert attempt.outcome is Outcome.MANAGER_LOST and attempt.where.startswith("manager ")


def test_retries_run_out_and_the_error_carries_every_attempt(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1, max_retries_on_system_failure=1, crash_limit=0)
    fut = ex.submit(os._exit, 3)
    with pytest.raises(WorkerLost) as info:
        fut.result(WAIT)
    assert not isinstance(info.value, CrashLimitExceeded)
    assert [a.number for a in info.value.attempts] == [1, 2] and "after 2 attempts" in str(info.value)


def test_the_crash_limit_stops_a_task_that_kills_its_workers(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=2, max_retries_on_system_failure=5, crash_limit=2)
    fut = ex.submit(os._exit, 9)
    with pytest.raises(CrashLimitExceeded) as info:
        fut.result(WAIT)
    assert len(info.value.attempts) == 2 and "likely cause" in str(info.value)
    # A task that raises is never retried.
    boom = ex.submit(int, "x")
    with pytest.raises(ValueError):
        boom.result(WAIT)
    assert boom.attempts == ()
    assert ex.submit(whoami).result(WAIT)


def test_without_retries_a_lost_task_fails_at_once(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1)
    fut = ex.submit(os._exit, 9)
    with pytest.raises(WorkerLost) as info:
        fut.result(WAIT)
    assert not isinstance(info.value, ManagerLost | CrashLimitExceeded) and fut.attempts == ()


# --------------------------------------------------------------------------------------- memory


def allocate(mib: int, hold: float = 0.0) -> int:
    block = bytearray(mib * 2**20)
    time.sleep(hold)
    return len(block)


def allocate_shared(mib: int) -> int:
    """Touch ``mib`` MiB of shared anonymous memory (not counted by RLIMIT_DATA) and hold it."""
    import mmap

    buf = mmap.mmap(-1, mib * 2**20)
    for offset in range(0, len(buf), 4096):
        buf[offset] = 1
    time.sleep(30)
    return len(buf)


def test_a_task_over_its_memory_limit_fails_while_its_neighbour_finishes(make_executor: Any,
                                                                        tmp_path: Path) -> None:
    ex = make_executor(max_workers_per_node=2, mem_per_worker=0.25, enforce_memory=True)
    neighbour = ex.submit(mark_and_sleep, str(tmp_path / "neighbour"), 2)
    hog = ex.submit(allocate, 1024)
    with pytest.raises(TaskMemoryExceeded) as info:
        hog.result(WAIT)
    err = info.value
    assert err.limit == int(0.25 * 2**30) and err.peak_rss is not None and "MemoryError" in str(err)
    assert neighbour.result(WAIT) == str(tmp_path / "neighbour")
    # Within the limit is fine, and the replaced worker runs tasks.
    assert ex.submit(allocate, 50).result(WAIT) == 50 * 2**20
    assert len({ex.submit(whoami, i).result(WAIT)[1] for i in range(4)}) >= 1


def test_memory_the_data_limit_misses_is_caught_by_sampling(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1, mem_per_worker=0.25, enforce_memory=True, task_kill_grace=0.5)
    with pytest.raises(TaskMemoryExceeded) as info:
        ex.submit(allocate_shared, 600).result(WAIT)
    assert info.value.peak_rss is not None and info.value.peak_rss > 0.25 * 2**30
    assert ex.submit(whoami).result(WAIT)


# ------------------------------------------------------------------------------------ OOM killer


def _memory_cgroup(name: str) -> tuple[Path, str] | None:
    """Create a memory cgroup this test may limit: (its directory, the limit file); None where none can be."""
    for base, limit in ((Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"),
                        (Path("/sys/fs/cgroup"), "memory.max")):
        if not (base / "cgroup.procs").exists():
            continue
        if limit == "memory.max" and "memory" not in (base / "cgroup.subtree_control").read_text():
            continue
        try:
            path = base / name
            path.mkdir()
        except OSError:
            continue
        if (path / limit).exists():
            return path, limit
        path.rmdir()
    return None


def test_a_worker_the_oom_killer_ends_is_reported_as_out_of_memory(make_executor: Any, tmp_path: Path) -> None:
    cgroup = _memory_cgroup(f"htex-test-oom-{os.getpid()}")
    if cgroup is None:
        pytest.skip("no memory cgroup can be created here (needs root and a writable cgroup file system)")
    path, limit = cgroup
    try:
        (path / limit).write_text(str(200 * 2**20))
        if (path / "memory.memsw.limit_in_bytes").exists():
            (path / "memory.memsw.limit_in_bytes").write_text(str(200 * 2**20))  # no swapping out of it
        if (path / "memory.swap.max").exists():
            (path / "memory.swap.max").write_text("0")
        # The block's script joins the cgroup first: the pool and its workers start inside it.
        ex = make_executor(max_workers_per_node=1,
                           provider=LocalProvider(worker_init=f"echo $$ > {path}/cgroup.procs"))
        assert ex.submit(allocate, 20).result(WAIT) == 20 * 2**20
        with pytest.raises(TaskMemoryExceeded) as info:
            ex.submit(allocate, 600).result(WAIT)
        assert "OOM killer" in str(info.value)
        assert ex.submit(allocate, 20).result(WAIT) == 20 * 2**20
        ex.shutdown()
    finally:
        wait_until(lambda: not (path / "cgroup.procs").read_text().strip(), 10)
        path.rmdir()
