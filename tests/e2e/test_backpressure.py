"""Backpressure: ``max_outstanding`` holds submitters, never the link thread; ``map(buffersize=)``
reads its input lazily."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from htex_ref import BadStateException, ExecutorShutdown
from tests.conftest import wait_until
from tests.e2e.test_faults import held

pytestmark = pytest.mark.e2e


def square(x: int) -> int:
    return x * x


def nap(x: int) -> int:
    time.sleep(0.01)
    return x


def test_submit_waits_while_max_outstanding_tasks_are_out(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=2, max_outstanding=5)
    futures = []
    most = 0
    for i in range(80):
        futures.append(ex.submit(nap, i))
        most = max(most, ex.outstanding)
    assert most == 5  # reached, never passed
    assert [f.result(30) for f in futures] == list(range(80))
    assert ex.outstanding == 0


def test_several_producers_never_overshoot_the_limit_together(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=2, max_outstanding=4)
    seen: list[int] = []
    futures: list[Any] = []
    lock = threading.Lock()

    def producer(base: int) -> None:
        for i in range(base, base + 40):
            f = ex.submit(nap, i)
            n = ex.outstanding
            with lock:
                futures.append(f)
                seen.append(n)

    threads = [threading.Thread(target=producer, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert max(seen) <= 4, f"{max(seen)} outstanding with a limit of 4"
    assert sorted(f.result(30) for f in futures) == sorted(k * 100 + i for k in range(4) for i in range(40))


def test_a_done_callback_may_submit_beyond_the_limit(make_executor: Any, tmp_path: Path) -> None:
    """Callbacks run on the link thread; if a submit there waited for room, no result could arrive to
    make room. A is held, so the limit of 2 stays reached while B's callback submits two more."""
    ex = make_executor(max_workers_per_node=2, max_outstanding=2)
    release = tmp_path / "release"
    a = ex.submit(held, str(tmp_path / "a"), str(release), "a")
    assert wait_until((tmp_path / "a").exists, 30)
    from_callback: list[Any] = []
    b = ex.submit(square, 3)
    b.add_done_callback(lambda f: from_callback.extend([ex.submit(square, 4), ex.submit(square, 5)]))
    assert b.result(30) == 9
    assert wait_until(lambda: len(from_callback) == 2, 10)
    assert [f.result(30) for f in from_callback] == [16, 25]
    assert not a.done()
    release.touch()
    assert a.result(30) == "a"


@pytest.mark.parametrize("ending", ["bad state", "shutdown"])
def test_a_waiting_submit_fails_when_the_executor_does(make_executor: Any, tmp_path: Path, ending: str) -> None:
    ex = make_executor(max_workers_per_node=1, max_outstanding=1)
    release = tmp_path / "release"
    ex.submit(held, str(tmp_path / "a"), str(release), "a")
    outcome: list[BaseException | Any] = []

    def producer() -> None:
        try:
            outcome.append(ex.submit(square, 2))
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=producer)
    t.start()
    # It is waiting for room (it has not returned) ...
    assert wait_until(lambda: ex.table._room_waiters == 1, 10)
    assert not outcome
    # ... until the executor fails or shuts down: then it raises at once.
    t0 = time.monotonic()
    if ending == "bad state":
        ex.set_bad_state_and_fail_all(RuntimeError("operator says stop"))
    else:
        ex.shutdown(wait=False)
    t.join(30)
    assert not t.is_alive()
    print(f"\n{ending}: waiting submit raised after {time.monotonic() - t0:.3f} s")
    assert isinstance(outcome[0], BadStateException if ending == "bad state" else ExecutorShutdown)


def test_map_with_buffersize_reads_its_input_lazily(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=2)
    taken: list[int] = []

    def numbers() -> Any:
        for i in range(50):
            taken.append(i)
            yield i

    results = ex.map(square, numbers(), buffersize=3)
    assert len(taken) == 3  # submitted up front: the buffer, nothing more
    assert next(results) == 0
    assert len(taken) == 4  # one more for the one yielded
    assert list(results) == [i * i for i in range(1, 50)]
    assert len(taken) == 50
    # Without a buffer size everything is submitted at once, as concurrent.futures does.
    taken.clear()
    assert list(ex.map(square, numbers())) == [i * i for i in range(50)] and len(taken) == 50
    with pytest.raises(ValueError, match="buffersize must be None or an int >= 1"):
        ex.map(square, [1], buffersize=0)
