"""End-to-end fault injection: real workers, managers and interchanges are killed, stopped and resumed
while they hold tasks. Nothing is mocked; every fault is a signal or an exit in a real process.

Run with ``-s`` to see the detection times each test measures.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from htex_ref import BadStateException, ExecutorShutdown, LocalProvider, ManagerLost, WorkerLost
from tests.conftest import processes_mentioning, wait_until
from tests.rendezvous import meet

pytestmark = pytest.mark.e2e

HOST = socket.gethostname()


# ------------------------------------------------------------------------------------ task functions


def square(x: int) -> int:
    return x * x


def stamp_death(path: str) -> None:
    Path(path).write_text(repr(time.time()))


def kill_self(sig: int, stamp: str) -> None:
    stamp_death(stamp)
    os.kill(os.getpid(), sig)
    time.sleep(30)  # not reached: the signal ends the process


def hard_exit(code: int, stamp: str) -> None:
    stamp_death(stamp)
    os._exit(code)


def exit_with(code: int, stamp: str) -> None:
    stamp_death(stamp)
    raise SystemExit(code)


def rank_and_pid_together(rendezvous: str, count: int) -> tuple[int, int]:
    """This worker's rank and pid, once ``count`` such tasks run together (on ``count`` workers)."""
    meet(rendezvous, count)
    return int(os.environ["PARSL_WORKER_RANK"]), os.getpid()


def start_child(tag: str) -> tuple[int, int]:
    """Start a process that would run for 1000 s (``tag`` in its command line) and return at once."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)", tag])
    return child.pid, os.getppid()


def environment() -> tuple[int, dict[str, str]]:
    return os.getpid(), dict(os.environ)


def held(marker: str, release: str, value: Any, timeout: float = 1000.0) -> Any:
    """Write where this task runs to ``marker``, then wait until ``release`` exists; return ``value``."""
    where = {"worker_pid": os.getpid(), "manager_pid": os.getppid(), "pool_id": os.environ["PARSL_WORKER_POOL_ID"]}
    Path(marker + ".tmp").write_text(json.dumps(where))
    os.rename(marker + ".tmp", marker)
    deadline = time.monotonic() + timeout
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} did not appear within {timeout} s")
        time.sleep(0.02)
    Path(marker + ".done").touch()
    return value


# ---------------------------------------------------------------------------------------- helpers


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def where_tasks_run(markers: list[Path], timeout: float = 30) -> list[dict[str, Any]]:
    """Wait until every held task has written its marker; return what each wrote."""
    assert wait_until(lambda: all(m.exists() for m in markers), timeout), "held tasks did not all start"
    return [json.loads(m.read_text()) for m in markers]


def manager_ids(ex: Any) -> list[str]:
    return sorted(m["manager"] for m in ex.connected_managers())


def two_single_worker_blocks(make_executor: Any, **kwargs: Any) -> Any:
    """Two blocks of one worker each, no prefetch: two held tasks run one on each manager."""
    ex = make_executor(max_workers_per_node=1, provider=LocalProvider(init_blocks=2, max_blocks=2),
                       prefetch_capacity=0, **kwargs)
    assert wait_until(lambda: len(ex.connected_managers()) == 2, 30)
    return ex


def one_held_task_per_manager(make_executor: Any, tmp_path: Path, threshold: float) -> tuple[Any, ...]:
    """Two single-worker blocks, each running one held task (released by touching ``release``).

    Returns (executor, release path, the two futures, where the first runs, where the second runs).
    """
    ex = two_single_worker_blocks(make_executor, heartbeat_period=1, heartbeat_threshold=threshold)
    release = tmp_path / "release"
    markers = [tmp_path / f"task{i}" for i in range(2)]
    futures = [ex.submit(held, str(m), str(release), i) for i, m in enumerate(markers)]
    victim, survivor = where_tasks_run(markers)
    return ex, release, futures, victim, survivor


# ------------------------------------------------------------------------------------ worker deaths


@pytest.mark.parametrize(
    ("fn", "arg", "code"),
    [(kill_self, signal.SIGKILL, -signal.SIGKILL), (kill_self, signal.SIGTERM, -signal.SIGTERM),
     (hard_exit, 3, 3), (exit_with, 4, 4)],
    ids=["SIGKILL", "SIGTERM", "os._exit", "SystemExit"],
)
def test_worker_death_fails_only_its_task_and_the_worker_is_replaced(
    make_executor: Any, tmp_path: Path, fn: Any, arg: int, code: int
) -> None:
    ex = make_executor(max_workers_per_node=2)
    first = [ex.submit(rank_and_pid_together, str(tmp_path / "before"), 2) for _ in range(2)]
    pids_before = dict(f.result(30) for f in first)
    assert sorted(pids_before) == [0, 1]
    managers_before = manager_ids(ex)
    # Short tasks around the fatal ones, so some wait on a worker (handed over in advance) when it dies.
    futures: list[Any] = []
    fatal: list[tuple[Path, Any]] = []
    for i in range(60):
        futures.append(ex.submit(square, i))
        if i % 20 == 10:
            stamp = tmp_path / f"death{i}"
            fut = ex.submit(fn, arg, str(stamp))
            fut.add_done_callback(lambda f: setattr(f, "resolved_at", time.time()))
            fatal.append((stamp, fut))
    lost_ranks = set()
    for stamp, fut in fatal:
        with pytest.raises(WorkerLost) as info:
            fut.result(30)
        took = fut.resolved_at - float(stamp.read_text())
        print(f"\n{fn.__name__}({arg}): death -> WorkerLost in {took * 1000:.1f} ms")
        err = info.value
        assert err.hostname == HOST
        assert err.worker_id in (0, 1)
        assert f"loss of worker {err.worker_id} on host {HOST}" in str(err)
        assert f"exited with code {code} while running the task" in str(err)
        lost_ranks.add(err.worker_id)
    assert [f.result(30) for f in futures] == [i * i for i in range(60)]
    # Same manager, same worker count; each slot that lost its worker runs a new process.
    assert manager_ids(ex) == managers_before
    assert [m["worker_count"] for m in ex.connected_managers()] == [2]
    after = [ex.submit(rank_and_pid_together, str(tmp_path / "after"), 2) for _ in range(2)]
    pids_after = dict(f.result(30) for f in after)
    assert sorted(pids_after) == [0, 1]
    for rank in lost_ranks:
        assert pids_after[rank] != pids_before[rank]
        assert not alive(pids_before[rank])
    assert ex.outstanding == 0 and not ex.bad_state_is_set


def test_sigterm_to_workers_before_their_pool_loses_the_tasks_with_the_pool(
    make_executor: Any, tmp_path: Path
) -> None:
    """A batch system ending a job signals the pool and its workers in no set order. Here the workers get
    SIGTERM first and their pool sees them die before its own SIGTERM comes: the tasks still fail with
    ManagerLost naming the SIGTERM, not with a WorkerLost of their own."""
    ex = make_executor(max_workers_per_node=2)
    release = tmp_path / "release"
    markers = [tmp_path / f"task{i}" for i in range(2)]
    futures = [ex.submit(held, str(m), str(release), i) for i, m in enumerate(markers)]
    assert wait_until(lambda: all(m.exists() for m in markers), 30)
    where = [json.loads(m.read_text()) for m in markers]
    pool_pid = where[0]["manager_pid"]
    for w in where:
        os.kill(w["worker_pid"], signal.SIGTERM)
    # The pool reaps its workers (their pids are gone) before it gets its own signal.
    assert wait_until(lambda: not any(alive(w["worker_pid"]) for w in where), 10)
    os.kill(pool_pid, signal.SIGTERM)
    for f in futures:
        with pytest.raises(ManagerLost, match="received SIGTERM"):
            f.result(30)
    assert not ex.bad_state_is_set


# ----------------------------------------------------------------------------------- manager lost


def test_killed_manager_fails_its_tasks_with_manager_lost(make_executor: Any, tmp_path: Path) -> None:
    threshold = 3.0
    ex, release, futures, victim, survivor = one_held_task_per_manager(make_executor, tmp_path, threshold)
    assert victim["manager_pid"] != survivor["manager_pid"]

    t0 = time.monotonic()
    os.kill(victim["manager_pid"], signal.SIGKILL)
    # Its worker dies with it (parent-death signal), not only when the block is cleaned up.
    assert wait_until(lambda: not alive(victim["worker_pid"]), 10), "worker outlived its SIGKILLed manager"
    with pytest.raises(ManagerLost) as info:
        futures[0].result(threshold + 10)
    took = time.monotonic() - t0
    print(f"\nmanager SIGKILL -> ManagerLost: {took:.2f} s (heartbeat_threshold {threshold} s)")
    assert took < threshold + 5
    err = info.value
    assert err.manager_id == victim["pool_id"] and err.hostname == HOST
    # Usually the executor sees the block's job end first (about a second) and tells the interchange;
    # heartbeat expiry is the fallback.
    assert ("ended (FAILED" in str(err) or "no heartbeat" in str(err)), str(err)
    assert f"loss of manager {victim['pool_id']} on host {HOST}" in str(err)
    assert manager_ids(ex) == [survivor["pool_id"]]

    # The other manager's task was never disturbed, and the executor keeps serving.
    assert not futures[1].done()
    release.touch()
    assert futures[1].result(30) == 1
    assert ex.submit(square, 9).result(30) == 81
    assert not ex.bad_state_is_set and ex.outstanding == 0


def test_stopped_manager_is_lost_and_drops_its_task_when_it_resumes(make_executor: Any, tmp_path: Path) -> None:
    threshold = 3.0
    ex, release, futures, victim, survivor = one_held_task_per_manager(make_executor, tmp_path, threshold)
    calls = [0, 0]
    for i, f in enumerate(futures):
        f.add_done_callback(lambda _f, i=i: calls.__setitem__(i, calls[i] + 1))

    t0 = time.monotonic()
    os.kill(victim["manager_pid"], signal.SIGSTOP)
    try:
        with pytest.raises(ManagerLost, match="no heartbeat"):
            futures[0].result(threshold + 10)
        took = time.monotonic() - t0
        print(f"\nmanager SIGSTOP -> ManagerLost: {took:.2f} s (heartbeat_threshold {threshold} s)")
        assert took < threshold + 5
        assert manager_ids(ex) == [survivor["pool_id"]]
        # Its worker finishes while the manager is stopped: the result waits in the manager's socket.
        release.touch()
        assert futures[1].result(30) == 1
        assert wait_until(lambda: (tmp_path / "task0.done").exists(), 10)
    finally:
        os.kill(victim["manager_pid"], signal.SIGCONT)
        resumed = time.monotonic()
    # Resumed within its reconnect_timeout (twice the threshold), the pool sends its result; the
    # interchange, which declared it lost, neither delivers nor acknowledges that result and asks it to
    # register again; it does, naming the task, and is told to drop it. It serves on as a new pool.
    log = Path(ex.logdir, "interchange.log")
    assert wait_until(lambda: "holds 1 tasks that ended elsewhere" in log.read_text(), 15), log.read_text()[-3000:]
    print(f"resumed manager registered again {time.monotonic() - resumed:.2f} s after SIGCONT")
    assert wait_until(lambda: sorted(manager_ids(ex)) == sorted([survivor["pool_id"], victim["pool_id"]]), 10)
    assert isinstance(futures[0].exception(0), ManagerLost)
    assert calls == [1, 1]
    assert sorted(ex.submit(square, i).result(30) for i in range(6)) == [0, 1, 4, 9, 16, 25]
    assert calls == [1, 1]
    assert not ex.bad_state_is_set and ex.outstanding == 0


@pytest.mark.parametrize("ending", ["manager SIGKILLed", "manager drained"])
def test_processes_a_task_started_end_with_their_block(make_executor: Any, tmp_path: Path, ending: str) -> None:
    """A block's job ends when its pool exits, for whatever reason; like a batch system at the end of a
    job, the provider ends what the job left in its process group (here, a task's child process)."""
    tag = str(tmp_path / "task-child")
    if ending == "manager drained":
        ex = make_executor(max_workers_per_node=1, drain_period=2)
    else:
        ex = make_executor(max_workers_per_node=1)
    child, manager_pid = ex.submit(start_child, tag).result(30)
    assert alive(child)
    t0 = time.monotonic()
    if ending == "manager SIGKILLed":
        os.kill(manager_pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(manager_pid), 15)
    # The executor is still up (drained) or failed (its only block died): either way it has not shut down.
    assert wait_until(lambda: not alive(child), 10), f"a task's child outlived its block ({ending})"
    print(f"\n{ending}: task's child ended {time.monotonic() - t0:.2f} s later")


# ------------------------------------------------------------------------------ blocks never start


@pytest.mark.parametrize(
    ("case", "code", "tails"),
    [
        ("worker_init", 7, ["init-stdout-marker", "init-stderr-marker"]),
        ("missing_command", 127, ["htex-ref-no-such-program", "command not found"]),
    ],
)
def test_block_that_never_starts_fails_the_executor(
    make_executor: Any, case: str, code: int, tails: list[str]
) -> None:
    if case == "worker_init":
        init = "echo init-stdout-marker; echo init-stderr-marker >&2; exit 7"
        kwargs: dict[str, Any] = {"provider": LocalProvider(worker_init=init)}
    else:
        kwargs = {"launch_cmd": "htex-ref-no-such-program --block-id={block_id}"}
    t0 = time.monotonic()
    ex = make_executor(**kwargs)
    futures = [ex.submit(square, i) for i in range(3)]
    for f in futures:
        with pytest.raises(BadStateException, match=f"EXIT CODE: {code}") as info:
            f.result(30)
    took = time.monotonic() - t0
    print(f"\n{case}: executor failed {took:.2f} s after start")
    assert took < 15  # the block watcher polls every second; a wide margin for a loaded machine
    for tail in tails:
        assert tail in str(info.value)
    assert ex.bad_state_is_set and ex.outstanding == 0
    t1 = time.monotonic()
    with pytest.raises(BadStateException, match=f"EXIT CODE: {code}"):
        ex.submit(square, 1)
    assert time.monotonic() - t1 < 1
    assert ex.block_statuses()["0"].state.name == "MISSING"
    # The interchange still runs: what connected (nothing) stays visible for the diagnosis.
    assert ex.connected_blocks() == [] and ex.connected_managers() == []


# ----------------------------------------------------------------------------- no leaks between tasks


def test_resource_specification_sets_no_environment(make_executor: Any) -> None:
    """Nothing is set per task (docs/differences-from-parsl.md): a task with a resource specification
    sees exactly the worker's environment, and so does the next task on the same worker."""
    ex = make_executor(max_workers_per_node=1)
    pid0, before = ex.submit(environment).result(30)
    pid1, with_spec = ex.submit(environment, resource_specification={"priority": 5}).result(30)
    pid2, after = ex.submit(environment).result(30)
    assert pid0 == pid1 == pid2
    assert with_spec == before and after == before
    assert {k for k in before if k.startswith("PARSL_WORKER_")} == {
        "PARSL_WORKER_RANK", "PARSL_WORKER_COUNT", "PARSL_WORKER_POOL_ID", "PARSL_WORKER_BLOCK_ID"}


# -------------------------------------------------------------------------------- bounded shutdown


@pytest.mark.parametrize("frozen", ["nothing", "interchange", "manager", "manager_and_workers"])
def test_shutdown_is_bounded_whatever_is_stopped(make_executor: Any, tmp_path: Path, frozen: str) -> None:
    ex = make_executor(max_workers_per_node=2, prefetch_capacity=0)
    markers = [tmp_path / f"task{i}" for i in range(2)]
    running = [ex.submit(held, str(m), str(tmp_path / "never"), i) for i, m in enumerate(markers)]
    queued = [ex.submit(square, i) for i in range(3)]  # no free worker: they wait in the interchange
    where = where_tasks_run(markers)
    manager_pid = where[0]["manager_pid"]
    assert ex.interchange_process is not None
    stopped = {
        "nothing": [],
        "interchange": [ex.interchange_process.pid],
        "manager": [manager_pid],
        "manager_and_workers": [manager_pid] + [w["worker_pid"] for w in where],
    }[frozen]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    ex.shutdown(wait=True, timeout=1.0)  # the held tasks would run 1000 s
    took = time.monotonic() - t0
    print(f"\nshutdown with {frozen} stopped: {took:.2f} s")
    assert took < 30
    for f in running + queued:
        with pytest.raises(ExecutorShutdown):
            f.result(0)
    assert ex.interchange_process.poll() is not None
    for pid in [ex.interchange_process.pid, manager_pid] + [w["worker_pid"] for w in where]:
        assert wait_until(lambda pid=pid: not alive(pid), 10), f"pid {pid} survived shutdown"
    assert wait_until(lambda: not processes_mentioning(str(tmp_path)), 10)


def test_stopped_interchange_fails_everything_and_shutdown_returns(make_executor: Any, tmp_path: Path) -> None:
    """A SIGSTOPped interchange still exists, so its pidfd says nothing: the executor's pings go
    unanswered, and after heartbeat_threshold every future fails with an error naming the interchange.
    ``shutdown()`` with no timeout then returns, because nothing is outstanding any more."""
    ex = make_executor(max_workers_per_node=1, heartbeat_period=1, heartbeat_threshold=3)
    assert ex.submit(square, 3).result(30) == 9
    marker = tmp_path / "running"
    running = ex.submit(held, str(marker), str(tmp_path / "never"), 1)
    assert wait_until(marker.exists, 30)
    assert ex.interchange_process is not None
    os.kill(ex.interchange_process.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    queued = ex.submit(square, 4)
    with pytest.raises(BadStateException, match=r"interchange process .* has not answered .*stopped or stuck"):
        running.result(30)
    took = time.monotonic() - t0
    print(f"\nstopped interchange detected after {took:.2f} s")
    assert 2.5 < took < 15
    with pytest.raises(BadStateException):
        queued.result(0)
    with pytest.raises(BadStateException):
        ex.submit(square, 5)
    t0 = time.monotonic()
    ex.shutdown()
    assert time.monotonic() - t0 < 30
    assert wait_until(lambda: ex.interchange_process is not None and ex.interchange_process.poll() is not None, 10)
