"""End-to-end: real interchange, worker pool and worker processes on this machine."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from htex_ref import (
    BadStateException,
    ExecutorShutdown,
    InvalidResourceSpecification,
    LocalProvider,
    SerializationError,
    WorkerLost,
)
from htex_ref.errors import RemoteTraceback
from htex_ref.protocol import Query

pytestmark = pytest.mark.e2e


def square(x: int) -> int:
    return x * x


def fail_with(exc: BaseException) -> None:
    raise exc


def whoami() -> dict[str, str]:
    keys = ("PARSL_WORKER_RANK", "PARSL_WORKER_COUNT", "PARSL_WORKER_POOL_ID", "PARSL_WORKER_BLOCK_ID")
    return {k: os.environ[k] for k in keys} | {"pid": str(os.getpid())}


def stamp(label: str) -> tuple[int, str]:
    return time.monotonic_ns(), label


def sleep_then(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle this")


def echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def test_results_both_submit_forms_map_and_closures(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=2)
    assert ex.submit(square, 7).result(30) == 49
    assert ex.parsl_submit(square, {}, 8).result(30) == 64  # Parsl's form
    assert ex.parsl_submit(square, None, 9).result(30) == 81
    assert ex.parsl_submit(square, {"priority": 1}, 10).result(30) == 100
    assert ex.submit(square, 3, resource_specification={"priority": 1}).result(30) == 9
    offset = 100
    assert ex.submit(lambda y: y + offset, 1).result(30) == 101
    assert ex.submit(len, {"a": 1, "b": 2}).result(30) == 2  # a dict that is not a resource spec


@pytest.mark.parametrize("argument", [None, {}, {"priority": 1}, {"num_nodes": 2}])
def test_submit_passes_every_positional_argument_to_the_function(make_executor: Any, argument: Any) -> None:
    # concurrent.futures' meaning, exactly: None, {} and dicts that look like resource specifications are
    # arguments like any other, never taken for a setting.
    ex = make_executor(max_workers_per_node=1)
    assert ex.submit(echo, argument, 2, k=3).result(30) == ((argument, 2), {"k": 3})
    assert ex.submit(echo, argument).result(30) == ((argument,), {})
    assert list(ex.map(square, range(20))) == [i * i for i in range(20)]
    assert ex.outstanding == 0


def test_remote_exception_keeps_type_and_traceback(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1)
    fut = ex.submit(fail_with, KeyError("missing-key"))
    with pytest.raises(KeyError, match="missing-key") as info:
        fut.result(30)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_with" in cause.tb and "KeyError" in cause.tb


def test_serialization_error_at_submit(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1)
    with pytest.raises(SerializationError, match="arguments of square"):
        ex.submit(square, Unpicklable())
    with pytest.raises(SerializationError):
        ex.submit(square, (i for i in range(3)))
    assert ex.outstanding == 0
    assert ex.submit(square, 2).result(30) == 4  # nothing else suffered


def test_invalid_resource_specification(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1)
    with pytest.raises(InvalidResourceSpecification, match="num_nodes"):
        ex.submit(square, 3, resource_specification={"num_nodes": 2})
    with pytest.raises(InvalidResourceSpecification, match="priority"):
        ex.parsl_submit(square, {"priority": "high"}, 3)
    assert ex.outstanding == 0


def test_priorities_lowest_first_fifo_within(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1, provider=LocalProvider(init_blocks=0), prefetch_capacity=0)
    plan = [("p5-a", 5), ("none-a", None), ("p1-a", 1), ("p5-b", 5), ("p1-b", 1), ("none-b", None), ("p-3", -3)]
    futures = [
        ex.parsl_submit(stamp, None if prio is None else {"priority": prio}, label) for label, prio in plan
    ]
    # Queued before any worker exists; the order they run in is the queue's order.
    assert ex.interchange_stats()["pending"] == len(plan)
    ex.scale_out(1)
    order = [label for _, label in sorted(f.result(60) for f in futures)]
    assert order == ["p-3", "p1-a", "p1-b", "p5-a", "p5-b", "none-a", "none-b"]


def test_ten_thousand_tasks_nothing_lost(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=2)
    futures = [ex.submit(square, i) if i % 97 else ex.submit(fail_with, ValueError(i)) for i in range(10_000)]
    for i, f in enumerate(futures):
        if i % 97:
            assert f.result(120) == i * i
        else:
            with pytest.raises(ValueError):
                f.result(120)
    assert ex.outstanding == 0
    assert ex.interchange_stats()["in_flight"] == 0


def test_worker_environment_and_managers(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=2, prefetch_capacity=0)
    barrier_futures = [ex.submit(sleep_then, 0.5, None) for _ in range(2)]
    infos = [ex.submit(whoami).result(30) for _ in range(6)]
    [f.result(30) for f in barrier_futures]
    assert {i["PARSL_WORKER_COUNT"] for i in infos} == {"2"}
    assert {i["PARSL_WORKER_BLOCK_ID"] for i in infos} == {"0"}
    assert len({i["PARSL_WORKER_POOL_ID"] for i in infos}) == 1
    assert {i["PARSL_WORKER_RANK"] for i in infos} <= {"0", "1"}
    managers = ex.connected_managers()
    assert len(managers) == 1
    m = managers[0]
    assert m["manager"] == infos[0]["PARSL_WORKER_POOL_ID"]
    assert m["worker_count"] == 2 and m["block_id"] == "0" and m["active"] is True
    assert ex.connected_blocks() == ["0"]
    assert ex.workers_per_node == 2


def test_worker_killed_mid_task_is_reported_and_replaced(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1)
    for _ in range(2):
        with pytest.raises(WorkerLost, match="exited with code 3"):
            ex.submit(os._exit, 3).result(30)
    assert ex.submit(square, 5).result(30) == 25


def test_hold_block_and_scale_in(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1, provider=LocalProvider(init_blocks=2, max_blocks=2))
    futures = [ex.submit(square, i) for i in range(20)]
    assert [f.result(60) for f in futures] == [i * i for i in range(20)]
    assert wait_until_managers(ex, 2)
    held = ex.hold_block("0")
    assert len(held) == 1
    assert [m["active"] for m in ex.connected_managers() if m["block_id"] == "0"] == [False]
    assert ex.scale_in(0) == []
    cancelled = ex.scale_in(1)
    assert len(cancelled) == 1
    assert ex.status()[cancelled[0]].state.name == "SCALED_IN"
    assert ex.submit(square, 6).result(30) == 36


def wait_until_managers(ex: Any, n: int) -> bool:
    from tests.conftest import wait_until

    return wait_until(lambda: len(ex.connected_managers()) == n, 30)


def test_interchange_death_fails_everything_fast(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=2)
    slow = ex.submit(sleep_then, 60, None)
    assert ex.submit(square, 2).result(30) == 4
    t0 = time.monotonic()
    os.kill(ex.interchange_process.pid, signal.SIGKILL)
    with pytest.raises(BadStateException, match=r"interchange process .* exited unexpectedly"):
        slow.result(30)
    assert time.monotonic() - t0 < 10
    assert ex.bad_state_is_set
    with pytest.raises(BadStateException):
        ex.submit(square, 3)
    with pytest.raises(BadStateException, match="exited unexpectedly"):
        ex.connected_managers()  # the interchange is gone: no query waits for it


def test_bad_launch_command_fails_loudly(make_executor: Any) -> None:
    ex = make_executor(launch_cmd="/nonexistent/htex-worker-pool {block_id}")
    fut = ex.submit(square, 2)
    with pytest.raises(BadStateException, match="EXIT CODE: 127") as info:
        fut.result(60)
    assert "No such file or directory" in str(info.value)
    assert ex.block_statuses()["0"].state.name == "MISSING"


def test_shutdown_fails_outstanding_and_is_bounded(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1)
    assert ex.submit(square, 1).result(30) == 1
    futures = [ex.submit(sleep_then, 60, i) for i in range(3)]
    t0 = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - t0 < 10
    for f in futures:
        with pytest.raises(ExecutorShutdown):
            f.result(5)
    with pytest.raises(ExecutorShutdown):
        ex.submit(square, 1)


def test_context_manager_waits_for_results(tmp_path: Any) -> None:
    from htex_ref import HighThroughputExecutor
    from tests.conftest import processes_mentioning, wait_until

    with HighThroughputExecutor(max_workers_per_node=2, encrypted=False, run_dir=str(tmp_path / "r")) as ex:
        futures = [ex.submit(sleep_then, 0.2, i) for i in range(4)]
    assert [f.result(0) for f in futures] == [0, 1, 2, 3]
    assert wait_until(lambda: not processes_mentioning(str(tmp_path)), 10)


def test_encrypted_round_trip(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1, encrypted=True)
    assert ex.submit(square, 12).result(30) == 144
    assert ex.cert_dir is not None
    assert os.stat(ex.cert_dir).st_mode & 0o777 == 0o700


def test_done_callback_may_submit(make_executor: Any) -> None:
    """A callback runs on the link thread; submitting from it must not deadlock."""
    ex = make_executor(max_workers_per_node=2)
    done = threading.Event()
    chained: list[Any] = []

    def then(fut: Any) -> None:
        chained.append(ex.submit(square, fut.result()))
        if len(chained) == 50:
            done.set()

    for i in range(50):
        ex.submit(square, i).add_done_callback(then)
    assert done.wait(60)
    assert sorted(f.result(30) for f in chained) == sorted(i**4 for i in range(50))


def block_of_worker() -> str:
    return os.environ["PARSL_WORKER_BLOCK_ID"]


def test_block_id_selector_fills_the_highest_numbered_block(make_executor: Any) -> None:
    from htex_ref import BlockIdManagerSelector
    from tests.conftest import wait_until

    ex = make_executor(max_workers_per_node=1, manager_selector=BlockIdManagerSelector(),
                       provider=LocalProvider(init_blocks=0, max_blocks=11), prefetch_capacity=0)
    # Keep blocks "2" and "10": as strings "2" sorts last, as numbers 10 is the highest.
    ex.scale_out(11)
    ex.scale_in(block_ids=[b for b in ex.status() if b not in ("2", "10")])
    assert wait_until(lambda: len(ex.connected_managers()) == 2, 60)
    assert {ex.submit(block_of_worker).result(30) for _ in range(10)} == {"10"}


def test_command_times_out_when_the_interchange_is_frozen(make_executor: Any) -> None:
    from htex_ref import CommandTimeout

    ex = make_executor(max_workers_per_node=1)
    assert ex.submit(square, 3).result(30) == 9  # the pool has registered
    pid = ex.interchange_process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(CommandTimeout, match=r"'managers' within 0\.5 s"):
            ex._link.query(Query.MANAGERS, timeout=0.5)
        assert time.monotonic() - t0 < 5
    finally:
        os.kill(pid, signal.SIGCONT)
    assert ex.connected_managers()[0]["worker_count"] == 1


def test_node_resource_overrides(make_executor: Any) -> None:
    ex = make_executor(provider=LocalProvider(worker_init="export PARSL_CORES=3"))
    assert ex.submit(whoami).result(30)["PARSL_WORKER_COUNT"] == "3"
    ex2 = make_executor(mem_per_worker=2, provider=LocalProvider(worker_init="export PARSL_MEMORY_GB=5"))
    assert ex2.submit(whoami).result(30)["PARSL_WORKER_COUNT"] == "2"


def test_pool_that_cannot_plan_a_worker_fails_the_executor(make_executor: Any) -> None:
    ex = make_executor(mem_per_worker=4, provider=LocalProvider(worker_init="export PARSL_MEMORY_GB=1"))
    with pytest.raises(BadStateException, match="cannot start any worker") as info:
        ex.submit(square, 2).result(60)
    assert "memory allows 0" in str(info.value)


def test_pools_exit_when_the_interchange_dies(make_executor: Any, tmp_path: Any) -> None:
    from tests.conftest import processes_mentioning, wait_until

    # The pools' reconnect grace is min(10 s, heartbeat_threshold).
    ex = make_executor(max_workers_per_node=1, provider=LocalProvider(init_blocks=2, max_blocks=2),
                       heartbeat_period=1, heartbeat_threshold=3)
    assert wait_until(lambda: len(ex.connected_managers()) == 2, 30)
    os.kill(ex.interchange_process.pid, signal.SIGKILL)

    def pools() -> list[Any]:
        # The command line read by processes_mentioning: calling p.cmdline() again races the pool's exit
        # (a zombie by then raises ZombieProcess), which made this test flaky.
        return [p for p in processes_mentioning(str(tmp_path))
                if "worker_pool" in " ".join(p.info["cmdline"]) or "htex-worker-pool" in " ".join(p.info["cmdline"])]

    assert wait_until(lambda: not pools(), 30), "worker pools outlived their interchange"


def test_drain_period_retires_the_manager_after_its_work(make_executor: Any) -> None:
    from tests.conftest import wait_until

    ex = make_executor(max_workers_per_node=1, drain_period=2)
    running = ex.submit(sleep_then, 3, "finished")
    assert wait_until(lambda: bool(ex.connected_managers()), 30)
    assert wait_until(lambda: all(m["draining"] for m in ex.connected_managers()), 10)
    assert running.result(30) == "finished"  # the task it had runs to the end
    assert wait_until(lambda: ex.connected_managers() == [], 10)


def test_set_bad_state_fails_everything(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1)
    slow = ex.submit(sleep_then, 30, None)
    ex.set_bad_state_and_fail_all(RuntimeError("operator says stop"))
    with pytest.raises(BadStateException, match="operator says stop"):
        slow.result(5)
    assert isinstance(ex.executor_exception, RuntimeError)
    with pytest.raises(BadStateException):
        ex.submit(square, 1)


@pytest.mark.parametrize("loopback", ["127.0.0.1", "::1"])
def test_local_blocks_probe_only_loopback(make_executor: Any, loopback: str) -> None:
    ex = make_executor(address=None, loopback_address=loopback, encrypted=loopback == "::1")
    assert f"--addresses={loopback} " in ex._launch_command("7")
    assert ex.submit(square, 4).result(30) == 16


def long_then(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def test_large_arguments_with_short_tasks_do_not_stall_the_pool(make_executor: Any) -> None:
    """Tasks go to busy workers in advance when calls are short; a big one must not block the manager
    (a blocked manager stops heartbeating and is declared lost while its workers run long calls)."""
    ex = make_executor(max_workers_per_node=2, heartbeat_period=0.5, heartbeat_threshold=2)
    assert [ex.submit(square, i).result(30) for i in range(20)] == [i * i for i in range(20)]  # calls are short
    big = b"x" * (8 << 20)
    futures = [ex.submit(long_then, 4.0, "slow") for _ in range(2)] + [ex.submit(len, big) for _ in range(6)]
    results = [f.result(60) for f in futures]
    assert results == ["slow", "slow"] + [8 << 20] * 6
    assert ex.connected_managers()[0]["active"]


def test_executor_started_from_a_thread_that_ends(make_executor: Any) -> None:
    """Linux's parent-death signal follows the forking thread; the interchange must outlive it."""
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(make_executor(max_workers_per_node=1)))
    t.start()
    t.join()
    ex = box[0]
    time.sleep(0.5)  # give a wrongly delivered death signal time to land
    assert ex.interchange_process.poll() is None
    assert ex.submit(square, 11).result(30) == 121


def test_interchange_exits_when_the_executor_process_dies(tmp_path: Any) -> None:
    import subprocess
    import sys

    from tests.conftest import processes_mentioning, wait_until

    script = f"""
import os, sys
from htex_ref import HighThroughputExecutor
ex = HighThroughputExecutor(max_workers_per_node=1, encrypted=False, run_dir={str(tmp_path / "r")!r},
                            heartbeat_period=1, heartbeat_threshold=4)
ex.start()
assert ex.submit(pow, 2, 3).result(30) == 8
print(ex.interchange_process.pid, flush=True)
os._exit(0)  # no shutdown, no atexit: as if killed
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    ix_pid = int(out.stdout.split()[0])
    import psutil

    def ix_gone() -> bool:
        try:
            return psutil.Process(ix_pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    assert wait_until(ix_gone, 10), "the interchange outlived its executor"
    # Its pools follow once the connection to it is gone.
    assert wait_until(lambda: not processes_mentioning(str(tmp_path)), 30)


class RefusingProvider(LocalProvider):
    def submit(self, command: str, tasks_per_node: int, job_name: str = "x") -> str:
        raise RuntimeError("queue is closed for maintenance")


def test_provider_submit_failure_fails_the_executor_with_its_message(make_executor: Any) -> None:
    ex = make_executor(provider=RefusingProvider())
    with pytest.raises(BadStateException, match="queue is closed for maintenance"):
        ex.submit(square, 2).result(30)
    assert ex.block_statuses()["0"].state.name == "MISSING"


def test_link_thread_failure_fails_outstanding_futures(make_executor: Any, monkeypatch: Any) -> None:
    import htex_ref.link as link_module

    ex = make_executor(max_workers_per_node=1)
    assert ex.submit(square, 2).result(30) == 4
    slow = ex.submit(sleep_then, 1.0, "late")

    def broken(frames: Any, start: int = 1) -> Any:
        raise SystemExit("simulated internal failure")  # escapes the per-message handler

    monkeypatch.setattr(link_module, "split_results", broken)
    with pytest.raises(BadStateException, match="link thread failed"):
        slow.result(30)


def test_a_popped_future_always_resolves(make_executor: Any, monkeypatch: Any) -> None:
    import htex_ref.tasks as tasks_module
    from htex_ref import DeserializationError

    ex = make_executor(max_workers_per_node=1)
    assert ex.submit(square, 2).result(30) == 4

    def broken(outcome: Any, payload: Any) -> Any:
        raise SystemExit("simulated failure while decoding")

    monkeypatch.setattr(tasks_module, "decode_outcome", broken)
    with pytest.raises(DeserializationError, match="SystemExit"):
        ex.submit(square, 3).result(30)
