"""Benchmark workloads and measurements, identical for every executor measured.

Standard library only: the same file runs under Parsl's environment for side-by-side comparisons.
Each measurement is defined in docs/benchmarks.md; ``measure`` takes a started executor whose Parsl-form
submit (``parsl_submit`` on htex_ref, ``submit`` on Parsl's) returns a ``concurrent.futures.Future`` for
``submit(fn, {}, *args)``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import wait
from typing import Any

_MIB = b"x" * (1 << 20)


def noop(x: Any) -> Any:
    return x


def sleep10ms(x: Any) -> Any:
    time.sleep(0.01)
    return x


def one_mib(x: Any) -> bytes:
    return _MIB


def _submit(ex: Any) -> Callable[..., Any]:
    """The executor's submit in Parsl's form: ``(fn, resource_specification, *args)``."""
    submit: Callable[..., Any] = getattr(ex, "parsl_submit", None) or ex.submit
    return submit


def _all(ex: Any, fn: Callable[[Any], Any], n: int) -> float:
    submit = _submit(ex)
    t0 = time.perf_counter()
    futures = [submit(fn, {}, i) for i in range(n)]
    _done, not_done = wait(futures, timeout=600)
    elapsed = time.perf_counter() - t0
    if not_done:
        raise RuntimeError(f"{len(not_done)} of {n} tasks did not finish in 600 s")
    for f in futures:
        f.result()
    return elapsed


def measure(ex: Any, started_at: float, workers: int, tasks: int = 10000) -> dict[str, float]:
    out: dict[str, float] = {}
    submit = _submit(ex)
    submit(noop, {}, 0).result(timeout=120)
    out["start_to_first_s"] = time.perf_counter() - started_at
    _all(ex, noop, 200)  # warm-up
    out["noop_tasks_per_s"] = tasks / _all(ex, noop, tasks)
    rtts = []
    for i in range(200):
        t0 = time.perf_counter()
        submit(noop, {}, i).result(timeout=60)
        rtts.append((time.perf_counter() - t0) * 1000)
    rtts.sort()
    out["rtt_median_ms"] = statistics.median(rtts)
    out["rtt_p99_ms"] = rtts[int(len(rtts) * 0.99) - 1]
    makespan = _all(ex, sleep10ms, 400)
    out["sleep10ms_makespan_s"] = makespan
    out["sleep10ms_efficiency"] = (400 * 0.01 / workers) / makespan
    out["mib_per_s"] = 200 / _all(ex, one_mib, 200)
    return out
