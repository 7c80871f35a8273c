"""Shared fixtures: executors on the local machine and a check that nothing they started survives."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import settings

from htex_ref import HighThroughputExecutor

# Property tests judge behaviour, not speed: on a loaded 2-core CI machine an example may take longer
# than hypothesis' default 200 ms deadline without anything being wrong.
settings.register_profile("htex_ref", deadline=None)
settings.load_profile("htex_ref")


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Live processes whose command line mentions ``text`` (a run directory is unique per test)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(text in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@pytest.fixture
def make_executor(tmp_path: Path) -> Iterator[Any]:
    """Build started executors in this test's own run directory; shut down and check for leftovers."""
    made: list[HighThroughputExecutor] = []

    def make(**kwargs: Any) -> HighThroughputExecutor:
        kwargs.setdefault("run_dir", str(tmp_path / f"run{len(made)}"))
        kwargs.setdefault("encrypted", False)
        kwargs.setdefault("address", "127.0.0.1")
        kwargs.setdefault("heartbeat_period", 2)
        kwargs.setdefault("heartbeat_threshold", 10)
        start = kwargs.pop("start", True)
        ex = HighThroughputExecutor(**kwargs)
        made.append(ex)
        if start:
            ex.start()
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=False)
    for ex in made:
        if ex.interchange_process is not None:
            assert ex.interchange_process.poll() is not None, "interchange still running after shutdown"
    assert wait_until(lambda: not processes_mentioning(str(tmp_path)), 10), (
        f"processes left behind: {[p.info['cmdline'] for p in processes_mentioning(str(tmp_path))]}"
    )
