"""Parsl's own apps on htex_ref through ``htex_ref.parsl_adapter`` (run by the ``parsl_adapter`` nox session).

Skipped where Parsl is not installed (the main test environment does not install it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from htex_ref.providers import LocalProvider
from tests.conftest import processes_mentioning, wait_until

parsl = pytest.importorskip("parsl")

pytestmark = pytest.mark.e2e


@parsl.python_app
def add(x: int, y: int) -> int:
    return x + y


@parsl.python_app
def worker_pid() -> int:
    import os

    return os.getpid()


@parsl.python_app
def fail_until(counter: str, failures: int) -> int:
    with open(counter, "a+") as f:
        f.seek(0)
        seen = len(f.read())
        f.write("x")
    if seen < failures:
        raise RuntimeError(f"attempt {seen + 1} fails on purpose")
    return seen + 1


@parsl.bash_app
def echo(text: str, stdout: Any = None) -> str:
    return f"echo {text}"


@parsl.join_app
def fib(n: int) -> Any:
    if n < 2:
        return add(n, 0)
    return add(fib(n - 1), fib(n - 2))


@pytest.fixture
def parsl_on_htex_ref(tmp_path: Path) -> Iterator[Any]:
    from htex_ref.parsl_adapter import HtexRefExecutor

    executor = HtexRefExecutor(label="htex_ref", provider=LocalProvider(), max_workers_per_node=2, encrypted=False,
                               address="127.0.0.1", heartbeat_period=2, heartbeat_threshold=10)
    config = parsl.Config(executors=[executor], run_dir=str(tmp_path / "runinfo"), retries=2)
    with parsl.load(config) as dfk:
        yield dfk
    parsl.clear()
    assert wait_until(lambda: not processes_mentioning(str(tmp_path)), 10), "processes left behind"


def test_parsl_apps_run_on_htex_ref(parsl_on_htex_ref: Any, tmp_path: Path) -> None:
    from htex_ref.parsl_adapter import HtexRefExecutor

    executor = parsl_on_htex_ref.executors["htex_ref"]
    assert isinstance(executor, HtexRefExecutor)
    # The run directory Parsl chose holds htex_ref's logs.
    assert Path(executor.executor.logdir).is_relative_to(tmp_path / "runinfo")

    chain = add(1, 2)
    for i in range(5):
        chain = add(chain, i)
    assert chain.result(timeout=60) == 3 + sum(range(5))

    pids = {worker_pid().result(timeout=60) for _ in range(4)}
    assert os.getpid() not in pids

    out = tmp_path / "echo.out"
    assert echo("from parsl", stdout=str(out)).result(timeout=60) == 0
    assert out.read_text() == "from parsl\n"

    # Parsl's retries (Config.retries=2) resubmit through the adapter.
    counter = tmp_path / "counter"
    assert fail_until(str(counter), 2).result(timeout=60) == 3

    assert fib(10).result(timeout=60) == 55
    assert executor.executor.run_dir.startswith(str(tmp_path))
