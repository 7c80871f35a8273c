"""A pool's plans as pure functions: how many workers a node runs, and when the pool stops taking tasks.

``plan_workers`` serves the manager (real cores and memory of the node it runs on) and the executor
(the provider's declared ``cores_per_node`` / ``mem_per_node``, for scaling arithmetic). ``drain_delay``
serves the worker pool (real clock, its job's recorded start) and simcluster (simulated clock).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    count: int
    #: The bound each resource puts on the count (inf where it puts none), in the order checked.
    limits: dict[str, float]

    def explain(self) -> str:
        parts = [f"{name} allows {'no limit' if math.isinf(v) else int(v)}" for name, v in self.limits.items()]
        return f"{self.count} workers ({'; '.join(parts)})"


def plan_workers(
    *,
    max_workers_per_node: float | None,
    cores_per_worker: float,
    mem_per_worker: float | None,
    cores: float | None,
    mem_gb: float | None,
    accelerators: Sequence[str] = (),
    default_when_unbounded: int = 1,
) -> WorkerPlan:
    """min(max_workers_per_node, cores/cores_per_worker, mem/mem_per_worker, len(accelerators)).

    ``None`` for ``cores`` or ``mem_gb`` means unknown: that resource puts no bound. A
    ``max_workers_per_node`` of None or 0 means no bound (Parsl's convention). When nothing bounds the
    count (no resources known, no accelerators), the count is ``default_when_unbounded``.
    """
    inf = math.inf
    limits: dict[str, float] = {
        "max_workers_per_node": float(max_workers_per_node) if max_workers_per_node else inf,
        "cores": math.floor(cores / cores_per_worker) if cores is not None and cores_per_worker > 0 else inf,
        "memory": math.floor(mem_gb / mem_per_worker) if mem_gb is not None and mem_per_worker else inf,
        "accelerators": float(len(accelerators)) if accelerators else inf,
    }
    bound = min(limits.values())
    count = default_when_unbounded if math.isinf(bound) else max(0, int(bound))
    return WorkerPlan(count=count, limits=limits)


def drain_delay(
    *,
    now: float,
    pool_started: float,
    drain_period: float | None = None,
    walltime: float | None = None,
    drain_before_walltime: float | None = None,
    job_started: float | None = None,
) -> float | None:
    """Seconds from ``now`` (the pool's registration) until it stops taking tasks (0: at once), or None
    for never.

    Two rules, the earlier wins: ``drain_period`` seconds after registration, and
    ``drain_before_walltime`` seconds before the job's walltime ends. The walltime counts from
    ``job_started`` when the job script recorded it, else from the pool's own start (a little later
    than the job's, which the margin must cover). All times are on one clock.
    """
    delays: list[float] = []
    if drain_period is not None:
        delays.append(drain_period)
    if walltime is not None and drain_before_walltime is not None:
        anchor = pool_started if job_started is None else min(job_started, pool_started)
        delays.append(anchor + walltime - drain_before_walltime - now)
    return max(0.0, min(delays)) if delays else None
