"""The control thread as the one owner of block control, on real processes: the shutdown race, requests
from other threads, and priorities under the default settings."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from htex_ref import LocalProvider
from tests.conftest import wait_until
from tests.e2e.test_scaling import group_alive

pytestmark = pytest.mark.e2e


class HeldProvider(LocalProvider):
    """A LocalProvider whose ``submit`` waits for ``release`` once ``hold`` is set, after saying so."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.jobs: list[str] = []

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex_ref.auto") -> str:
        if self.hold.is_set():
            self.entered.set()
            assert self.release.wait(60), "the test never released submit"
        job = super().submit(command, tasks_per_node, job_name)
        self.jobs.append(job)
        return job


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_shutdown_while_a_scaling_pass_is_inside_submit_leaves_no_job_behind(make_executor: Any) -> None:
    provider = HeldProvider(init_blocks=0, min_blocks=0, max_blocks=2)
    provider.hold.set()
    ex = make_executor(strategy="simple", strategy_period=0.2, provider=provider)
    ex.submit(nap, 0)  # demand: the next scaling pass launches a block
    assert provider.entered.wait(30), "the strategy never scaled out"
    # The control thread is inside provider.submit now. shutdown() from another thread must not list the
    # blocks before that launch is done (it did, and the block was never cancelled).
    stopper = threading.Thread(target=ex.shutdown, kwargs={"wait": False})
    stopper.start()
    assert wait_until(lambda: ex._control._queue.qsize() > 0, 10), "shutdown never asked the control thread"
    assert stopper.is_alive()  # it waits for the control thread's answer
    provider.release.set()
    stopper.join(60)
    assert not stopper.is_alive()
    assert len(provider.jobs) == 1
    job = int(provider.jobs[0])
    assert ex.status()["0"].state.name == "SCALED_IN"
    assert wait_until(lambda: not group_alive(job), 10), "the block launched during shutdown outlived the executor"


def test_block_requests_from_many_threads_are_served_one_at_a_time(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1, provider=LocalProvider(init_blocks=0, max_blocks=8))
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def scale() -> None:
        try:
            results.append(ex.scale_out(2))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=scale) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    launched = sorted(b for r in results for b in r)
    assert launched == sorted(str(i) for i in range(8))  # every id once: no two requests interleaved
    assert set(ex.status()) == set(launched)
    assert sorted(ex.scale_in(8)) == launched


def record(priority: float, path: str) -> float:
    with open(path, "a") as f:
        f.write(f"{priority:g}\n")
    return priority


def blocker(started: str, go: str) -> None:
    """Run until ``go`` exists; ``started`` says so once it has run for 0.3 s (longer than a short task)."""
    time.sleep(0.3)
    Path(started).touch()
    while not os.path.exists(go):
        time.sleep(0.01)


def test_priorities_hold_under_default_settings(make_executor: Any, tmp_path: Path) -> None:
    # Defaults: automatic prefetch, and tasks handed to workers in advance while calls are short.
    ex = make_executor(max_workers_per_node=2)
    # Short calls so far: automatic prefetch hands a manager up to about 50 ms of work per worker ahead of
    # time, which here is room for all five tasks below. (A call slowed by a loaded machine raises the
    # average the room is sized by: run more until it is back under a millisecond.)
    for _ in range(30):
        assert sum(f.result(30) for f in [ex.submit(nap, 0) for _ in range(100)]) == 0
        if ex.connected_managers()[0]["avg_task_time"] < 0.001:
            break
    assert ex.connected_managers()[0]["avg_task_time"] < 0.001
    go = [str(tmp_path / f"go{i}") for i in range(2)]
    blocked = [ex.submit(blocker, str(tmp_path / f"started{i}"), go[i]) for i in range(2)]
    assert wait_until(lambda: all((tmp_path / f"started{i}").exists() for i in range(2)), 30)
    order = str(tmp_path / "order")
    dispatched = ex.interchange_stats()["dispatched"]
    futures = [ex.submit(record, p, order, resource_specification={"priority": p}) for p in (5, 1, 3, 2, 4)]
    # The interchange hands all five to the (busy) manager ahead of time.
    assert wait_until(lambda: ex.interchange_stats()["dispatched"] == dispatched + 5, 30)
    time.sleep(0.5)  # a wide margin for the one local TCP hop from the interchange to the manager
    # One worker frees up: it runs all five in turn, and must run them by priority. A task handed to the
    # other, still blocked, worker in advance would be missing here.
    Path(go[0]).touch()
    assert wait_until(lambda: os.path.exists(order) and len(Path(order).read_text().split()) == 5, 30), \
        f"ran: {Path(order).read_text().split() if os.path.exists(order) else []}"
    assert Path(order).read_text().split() == ["1", "2", "3", "4", "5"]
    Path(go[1]).touch()
    assert [f.result(30) for f in futures] == [5, 1, 3, 2, 4]
    for f in blocked:
        f.result(30)


def test_a_query_the_interchange_cannot_decode_is_answered_with_an_error(make_executor: Any) -> None:
    from concurrent.futures import Future

    from htex_ref.errors import InterchangeError
    from htex_ref.protocol import Kind, dump_json, pack_request_id

    ex = make_executor(max_workers_per_node=1)
    reply: Future[Any] = Future()
    ex._link._replies[10**9] = reply
    ex._link.send([Kind.CMD, pack_request_id(10**9), dump_json({"op": "reboot", "args": []})])
    with pytest.raises(InterchangeError, match="unknown query 'reboot'"):
        reply.result(10)
    assert ex.interchange_stats()["bad_frames"] == 1
    assert ex.submit(nap, 0).result(30) == 0


# ------------------------------------------------------------------------------------- no silent wait


def square(x: int) -> int:
    return x * x


def fails_with_no_blocks(fut: Any, t0: float) -> str:
    from htex_ref.errors import NoBlocks

    with pytest.raises(NoBlocks) as info:
        fut.result(30)
    assert time.monotonic() - t0 < 5 + 5  # the grace, and a status refresh or two
    return str(info.value)


def test_the_default_strategy_starts_a_block_for_waiting_tasks(make_executor: Any) -> None:
    # Parsl's Config defaults to strategy 'simple'; so does the bare executor: init_blocks=0 is not a hang.
    ex = make_executor(provider=LocalProvider(init_blocks=0, max_blocks=2), strategy_period=0.5)
    assert ex.settings.strategy == "simple"
    assert ex.submit(square, 4).result(60) == 16


def test_strategy_none_and_no_block_fails_tasks_within_seconds(make_executor: Any) -> None:
    ex = make_executor(strategy="none", provider=LocalProvider(init_blocks=0))
    t0 = time.monotonic()
    text = fails_with_no_blocks(ex.submit(square, 3), t0)
    assert "no block running or pending" in text and "strategy='none'" in text and "scale_out()" in text
    # The executor is not broken: start a block and go on.
    assert not ex.bad_state_is_set
    ex.scale_out(1)
    assert ex.submit(square, 5).result(60) == 25


def test_tasks_after_every_block_drained_fail_within_seconds(make_executor: Any) -> None:
    ex = make_executor(strategy="none", drain_period=1, max_workers_per_node=1)
    assert ex.submit(square, 2).result(60) == 4
    assert wait_until(lambda: all(s.terminal for s in ex.status().values()), 30), "the block did not drain"
    t0 = time.monotonic()
    assert "every block ended, drained or was scaled in" in fails_with_no_blocks(ex.submit(square, 3), t0)


def test_tasks_after_every_block_was_scaled_in_fail_within_seconds(make_executor: Any) -> None:
    ex = make_executor(strategy="none", max_workers_per_node=1)
    assert ex.submit(square, 2).result(60) == 4
    assert ex.scale_in(1) == ["0"]
    t0 = time.monotonic()
    fails_with_no_blocks(ex.submit(square, 3), t0)
    # shutdown() does not wait for ever on tasks nothing would run.
    ex.shutdown()


# ----------------------------------------------------------------------------- Parsl's parameters


class PreferBlockZero:
    """A selector of the user's own: block 0's manager whenever it can take work."""

    def choose(self, candidates: Any) -> bytes:
        for mid, candidate in sorted(candidates.items()):
            if candidate.block_id == "0":
                return mid  # type: ignore[no-any-return]
        return next(iter(candidates))  # type: ignore[no-any-return]


def block_of_worker() -> str:
    return os.environ["PARSL_WORKER_BLOCK_ID"]


def test_a_custom_manager_selector_is_used(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1, prefetch_capacity=0, manager_selector=PreferBlockZero(),
                       provider=LocalProvider(init_blocks=2, max_blocks=2))
    assert ex.settings.selector_name == "custom"
    assert wait_until(lambda: len(ex.connected_managers()) == 2, 30)
    # One at a time, both managers free: the random selector would send about half to block 1.
    assert {ex.submit(block_of_worker).result(30) for _ in range(12)} == {"0"}


def test_interchange_launch_cmd_runs_the_interchange_behind_a_wrapper(make_executor: Any) -> None:
    import sys

    ex = make_executor(interchange_launch_cmd=["nice", "-n", "1", sys.executable, "-m", "htex_ref.interchange"])
    assert ex.submit(square, 6).result(30) == 36
    assert os.getpriority(os.PRIO_PROCESS, ex.interchange_process.pid) >= 1


def test_deprecated_parsl_names_warn_and_apply() -> None:
    from htex_ref import HighThroughputExecutor

    with pytest.warns(FutureWarning, match="max_workers is deprecated: use max_workers_per_node"):
        ex = HighThroughputExecutor(max_workers=3)
    assert ex.max_workers_per_node == 3
    with pytest.warns(FutureWarning, match="max_workers is deprecated"):
        assert HighThroughputExecutor(max_workers=float("inf")).max_workers_per_node is None
    with pytest.warns(FutureWarning, match="worker_ports is deprecated: .* using worker_port=50100"):
        assert HighThroughputExecutor(worker_ports=(50100, 50101)).worker_port == 50100
    for kwargs, match in [({"managed": False}, "strategy='none'"), ({"storage_access": ["x"]}, "parsl_adapter"),
                          ({"working_dir": "/tmp"}, "parsl_adapter"), ({"remote_monitoring_radio": object()}, "None")]:
        with pytest.raises(ValueError, match=match):
            HighThroughputExecutor(**kwargs)


#: The launch command of Parsl 2026.10's HighThroughputExecutor, as its users copy and wrap it.
PARSL_LAUNCH_CMD = (
    "process_worker_pool.py {debug} {max_workers_per_node} -a {addresses} -p {prefetch_capacity} "
    "-c {cores_per_worker} -m {mem_per_worker} --poll {poll_period} --port={worker_port} --cert_dir {cert_dir} "
    "--logdir={logdir} --logconf={logconf} --block_id={{block_id}} --hb_period={heartbeat_period} "
    "{address_probe_timeout_string} --hb_threshold={heartbeat_threshold} --drain_period={drain_period} "
    "--cpu-affinity {cpu_affinity} {enable_mpi_mode} --mpi-launcher={mpi_launcher} "
    "--available-accelerators {accelerators}"
)
#: Parsl 1.x's form (the seed API page's example), with the task and result URLs.
PARSL1_LAUNCH_CMD = ("process_worker_pool.py {debug} -c {cores_per_worker} --task_url={task_url} "
                     "--result_url={result_url} --cert_dir {cert_dir} --logdir={logdir} --block_id={{block_id}}")


def environment() -> dict[str, str]:
    return {"rank": os.environ["PARSL_WORKER_RANK"], "count": os.environ["PARSL_WORKER_COUNT"],
            "devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "wrapped": os.environ.get("IN_CONTAINER", "")}


@pytest.mark.parametrize("template", [PARSL_LAUNCH_CMD, PARSL1_LAUNCH_CMD], ids=["parsl-2026", "parsl-1"])
@pytest.mark.parametrize("encrypted", [False, True])
def test_a_parsl_launch_cmd_wrapped_in_a_container_command_starts_a_pool(make_executor: Any, tmp_path: Path,
                                                                       template: str, encrypted: bool) -> None:
    import sys

    container = tmp_path / "fake-container"
    # "fake-container run IMAGE -- COMMAND...": runs the command, marking its environment as a container's.
    container.write_text('#!/bin/bash\nshift 2; [ "$1" = "--" ] && shift\nexport IN_CONTAINER=yes\nexec "$@"\n')
    container.chmod(0o755)
    venv_bin = os.path.dirname(sys.executable)
    ex = make_executor(launch_cmd=f"{container} run pool.sif -- {template}", encrypted=encrypted,
                       max_workers_per_node=2, available_accelerators=2,
                       provider=LocalProvider(worker_init=f"export PATH={venv_bin}:$PATH"))
    assert "htex-worker-pool" in ex._launch_command("0") and "process_worker_pool.py" not in ex._launch_command("0")
    seen = [ex.submit(environment).result(60) for _ in range(4)]
    assert {s["wrapped"] for s in seen} == {"yes"}
    if template is PARSL_LAUNCH_CMD:
        # {max_workers_per_node} and --available-accelerators {accelerators} reached the pool.
        assert {s["count"] for s in seen} == {"2"} and {s["devices"] for s in seen} <= {"0", "1"}
    else:
        assert {s["devices"] for s in seen} == {""}  # Parsl 1.x's command passes no accelerators
