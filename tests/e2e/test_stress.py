"""Many threads at once: every future resolves with the right outcome, nothing is left behind."""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import pytest

from htex_ref import WorkerLost

pytestmark = pytest.mark.e2e


def work(i: int, mode: str) -> int:
    if mode == "raise":
        raise ArithmeticError(i)
    if mode == "die":
        os._exit(9)
    if mode == "sleep":
        time.sleep(random.random() / 200)
    return i * 3


def test_threads_submitting_and_querying_while_workers_die(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=2)
    rng = random.Random(1234)
    plans = [[(i, rng.choice(["ok"] * 12 + ["sleep"] * 6 + ["raise"] * 2 + ["die"] * (1 if i % 50 == 0 else 0)))
              for i in range(t * 1000, t * 1000 + 400)] for t in range(4)]
    submitted: list[list[tuple[int, str, Any]]] = [[] for _ in plans]
    errors: list[BaseException] = []
    stop = threading.Event()

    def submitter(n: int) -> None:
        try:
            for i, mode in plans[n]:
                submitted[n].append((i, mode, ex.submit(work, i, mode)))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def querier() -> None:
        try:
            while not stop.is_set():
                ex.connected_managers()
                ex.interchange_stats()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(len(plans))]
    q = threading.Thread(target=querier)
    q.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        for batch in submitted:
            for i, mode, fut in batch:
                if mode in ("ok", "sleep"):
                    assert fut.result(120) == i * 3
                elif mode == "raise":
                    with pytest.raises(ArithmeticError):
                        fut.result(120)
                else:
                    with pytest.raises(WorkerLost):
                        fut.result(120)
    finally:
        stop.set()
        q.join(30)
    assert not errors, errors
    assert sum(len(b) for b in submitted) == 1600
    assert ex.outstanding == 0
    stats = ex.interchange_stats()
    assert stats["pending"] == 0 and stats["in_flight"] == 0
