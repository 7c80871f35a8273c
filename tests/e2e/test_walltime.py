"""Walltime on one machine: a LocalProvider with a walltime ends its jobs as a batch system would, and
``drain_before_walltime`` keeps tasks off a block about to end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from htex_ref import LocalProvider, ManagerLost
from htex_ref.providers.base import JobState
from tests.conftest import wait_until
from tests.e2e.test_faults import held

pytestmark = pytest.mark.e2e


def block_of_task(seconds: float = 0.0) -> str:
    import os

    time.sleep(seconds)
    return os.environ["PARSL_WORKER_BLOCK_ID"]


def state(ex: Any, block: str) -> JobState | None:
    st = ex.status().get(block)
    return None if st is None else st.state


def test_a_block_past_its_walltime_is_ended_and_replaced(make_executor: Any, tmp_path: Path) -> None:
    ex = make_executor(provider=LocalProvider(walltime="00:00:04", min_blocks=1), max_workers_per_node=1,
                       strategy="simple", strategy_period=0.5)
    running = ex.submit(held, str(tmp_path / "started"), str(tmp_path / "never"), None)
    assert wait_until((tmp_path / "started").exists, 30)
    t0 = time.monotonic()
    with pytest.raises(ManagerLost, match="received SIGTERM"):
        running.result(30)
    print(f"\nheld task lost {time.monotonic() - t0:.2f} s after it started (walltime 4 s)")
    assert wait_until(lambda: state(ex, "0") is JobState.TIMEOUT, 10), ex.status()
    assert "reached its walltime (00:00:04)" in (ex.status()["0"].message or "")
    assert ex.submit(block_of_task).result(30) != "0"
    assert not ex.bad_state_is_set


def test_drain_before_walltime_ends_the_block_first(make_executor: Any) -> None:
    """A 12 s walltime and an 8 s margin: the block stops taking tasks 4 s after its job started, ends
    COMPLETED (never TIMEOUT), and the next task runs on a new block. Nothing is lost."""
    ex = make_executor(provider=LocalProvider(walltime="00:00:12", min_blocks=1), max_workers_per_node=1,
                       strategy="simple", strategy_period=0.5, drain_before_walltime=8)
    first = ex.submit(block_of_task, 1.0)
    first_block = first.result(30)
    assert wait_until(lambda: state(ex, first_block) is JobState.COMPLETED, 20), ex.status()
    later = ex.submit(block_of_task).result(30)
    assert later != first_block
    assert all(st.state is not JobState.TIMEOUT for st in ex.status().values()), ex.status()
    assert not ex.bad_state_is_set
