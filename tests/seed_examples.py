"""The Config examples of Parsl's HTEx guide (the project's seed documents), as code that names no imports:
each test runs them with htex_ref's imports (``htex_ref.Config``) or under Parsl's Config with the adapter
(``tests/e2e/test_parsl_adapter.py``). Each binds ``config``; ``check`` is what its workers must show
(the rank, CUDA_VISIBLE_DEVICES and CPU affinity of the worker that ran a task).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SeedExample:
    name: str
    code: str
    #: Checks the (rank, CUDA_VISIBLE_DEVICES, affinity) seen by a few tasks.
    check: Callable[[list[tuple[Any, Any, list[int]]]], bool]


def _one_core_each(seen: list[tuple[Any, Any, list[int]]]) -> bool:
    return all(len(cpus) == 1 for _, _, cpus in seen)


def _gpus(*allowed: str) -> Callable[[list[tuple[Any, Any, list[int]]]], bool]:
    return lambda seen: all(gpu in allowed for _, gpu, _ in seen)


SEED_EXAMPLES = [
    SeedExample("cpu_affinity alternating", """
config = Config(
    executors=[HighThroughputExecutor(label="htex_Local", worker_debug=True, cpu_affinity='alternating',
                                      provider=LocalProvider(init_blocks=1, max_blocks=1))],
    strategy='none',
)
""", _one_core_each),
    SeedExample("available_accelerators=2", """
config = Config(
    executors=[HighThroughputExecutor(label="htex_Local", worker_debug=True, available_accelerators=2,
                                      provider=LocalProvider(init_blocks=1, max_blocks=1))],
    strategy='none',
)
""", _gpus("0", "1")),
    SeedExample("two accelerators per worker", """
config = Config(
    executors=[HighThroughputExecutor(available_accelerators=["0,1", "2,3"])],
)
""", _gpus("0,1", "2,3")),
    SeedExample("encrypted", """
config = Config(
    executors=[HighThroughputExecutor(encrypted=True)]
)
""", lambda seen: bool(seen)),
]

#: The guide's explicit cpu_affinity list: 12 workers on a node with 208 threads. On a smaller machine the
#: pool must refuse it clearly (a bad cpu_affinity is an error within seconds, never a silent wait).
TWELVE_WORKER_LIST = ("list:0-7,104-111:8-15,112-119:16-23,120-127:24-31,128-135:32-39,136-143:40-47,144-151:"
                      "52-59,156-163:60-67,164-171:68-75,172-179:76-83,180-187:84-91,188-195:92-99,196-203")


def make_worker_view() -> Callable[[], tuple[Any, Any, list[int]]]:
    """A task that returns what its worker sees: its rank, its accelerators, its CPUs. Made here, not
    defined at module level, so that it travels by value (workers need not import ``tests``)."""

    def worker_view() -> tuple[Any, Any, list[int]]:
        import os

        return (os.environ.get("PARSL_WORKER_RANK"), os.environ.get("CUDA_VISIBLE_DEVICES"),
                sorted(os.sched_getaffinity(0)))

    return worker_view
