"""The executor's own scaling loop with LocalProvider blocks."""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import psutil
import pytest

from htex_ref import BadStateException, LocalProvider, windowed_error_handler
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def live_blocks(ex: Any) -> list[str]:
    return [b for b, s in ex.status().items() if not s.terminal]


@pytest.mark.parametrize("strategy", ["simple", "htex_auto_scale"])
def test_scale_out_to_max_then_in_to_min(make_executor: Any, strategy: str) -> None:
    ex = make_executor(strategy=strategy, strategy_period=0.2, max_idletime=1.0, max_workers_per_node=1,
                       prefetch_capacity=0,
                       provider=LocalProvider(init_blocks=0, min_blocks=1, max_blocks=3))
    # min_blocks applies at once, even with no work.
    assert wait_until(lambda: len(live_blocks(ex)) == 1, 15)
    futures = [ex.submit(nap, 0.4) for _ in range(18)]
    assert wait_until(lambda: len(ex.connected_managers()) == 3, 30), "did not scale out to max_blocks"
    assert [f.result(60) for f in futures] == [0.4] * 18
    assert len(ex.blocks_to_job_id) <= 3  # never more blocks launched than max_blocks
    # Idle for max_idletime: back to min_blocks, and it stays there.
    assert wait_until(lambda: len(live_blocks(ex)) == 1, 20), "did not scale in to min_blocks"
    assert wait_until(lambda: len(ex.connected_managers()) == 1, 10)
    time.sleep(1.5)
    assert len(live_blocks(ex)) == 1
    assert not ex.bad_state_is_set
    assert ex.submit(nap, 0).result(30) == 0


def test_block_that_never_registers_is_scaled_in_without_bad_state(make_executor: Any) -> None:
    ex = make_executor(strategy="htex_auto_scale", strategy_period=0.2, max_idletime=1.0,
                       launch_cmd="sleep 600 # {block_id}",
                       provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1))
    assert ex.status()["0"].state.name == "RUNNING"
    assert wait_until(lambda: ex.status()["0"].state.name == "SCALED_IN", 15)
    assert ex.connected_blocks() == []
    time.sleep(1.5)  # several more passes: neither a new block nor a block failure
    assert not ex.bad_state_is_set
    assert list(ex.status()) == ["0"]


def test_none_strategy_launches_init_blocks_only(make_executor: Any) -> None:
    ex = make_executor(strategy="none", strategy_period=0.2, max_workers_per_node=1,
                       provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=3))
    futures = [ex.submit(nap, 0.2) for _ in range(6)]
    assert [f.result(60) for f in futures] == [0.2] * 6
    assert list(ex.blocks_to_job_id) == ["0"]


def test_windowed_handler_fails_on_the_last_blocks_and_reports_their_exit_codes(make_executor: Any) -> None:
    # Block 0 works; blocks 1 and 2 exit 3 before starting a pool ($0 is the block's job script).
    only_block_0 = 'case "$0" in *block-0.sh) ;; *) echo "no scratch space on this node" >&2; exit 3;; esac'
    ex = make_executor(block_error_handler=functools.partial(windowed_error_handler, threshold=2),
                       max_workers_per_node=1,
                       provider=LocalProvider(init_blocks=3, max_blocks=3, worker_init=only_block_0))
    slow = ex.submit(nap, 60)
    # The simple handler would wait: block 0 is running. The last two blocks failed, so windowed does not.
    with pytest.raises(BadStateException) as info:
        slow.result(30)
    text = str(info.value)
    assert "the last 2 blocks of executor" in text
    assert "block 1: MISSING" in text and "block 2: MISSING" in text and "block 0:" not in text
    assert text.count("EXIT CODE: 3") == 2
    assert "no scratch space on this node" in text
    assert ex.status()["0"].state.name == "RUNNING"
    with pytest.raises(BadStateException):
        ex.submit(nap, 0)


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` (a LocalProvider job) is still running."""
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                return True
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    return False


def test_block_whose_pool_never_registers_times_out_and_fails_the_executor(make_executor: Any) -> None:
    t0 = time.monotonic()
    ex = make_executor(block_registration_timeout=3, strategy="simple", strategy_period=0.2,
                       provider=LocalProvider(init_blocks=1, max_blocks=1, worker_init="sleep 1000"))
    job = int(ex.blocks_to_job_id["0"])
    fut = ex.submit(nap, 0)
    with pytest.raises(BadStateException) as info:
        fut.result(30)
    assert time.monotonic() - t0 >= 3  # not before the time-out
    text = str(info.value)
    assert "block 0 has been running for" in text
    assert "no worker pool of it registered (block_registration_timeout=3 s)" in text
    assert "htex_ref.HighThroughputExecutor.block-0.err" in text  # where to look
    # The job was cancelled, not left to burn its allocation; the failure is what the handler saw.
    assert ex.status()["0"].state.name == "CANCELLED"
    assert ex.block_statuses()["0"].state.name == "MISSING"
    assert wait_until(lambda: not group_alive(job), 10), "the block's processes outlived the time-out"
    # Scaling stopped with the bad state: no replacement block, however many passes (block control
    # runs no pass once failed: tests/unit/test_control_pass.py).
    assert wait_until(lambda: ex._control.core.failed, 10)
    assert list(ex.blocks_to_job_id) == ["0"]
    with pytest.raises(BadStateException):
        ex.scale_out(1)
