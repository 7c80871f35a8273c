"""An adapter that puts htex_ref's executor into a Parsl ``Config``, so Parsl's own apps run on htex_ref.

Import it only where Parsl is installed (it imports ``parsl``)::

    import parsl
    from parsl import python_app
    from htex_ref.parsl_adapter import HtexRefExecutor
    from htex_ref.providers import LocalProvider

    config = parsl.Config(executors=[HtexRefExecutor(label="htex_ref", provider=LocalProvider(),
                                                     max_workers_per_node=4)])
    with parsl.load(config):
        ...

Parsl keeps its DataFlowKernel (dependencies, retries, join apps, monitoring of task states); htex_ref
runs the tasks. The adapter is a plain ``ParslExecutor``: htex_ref scales its own blocks (its
``strategy`` setting), so Parsl's job-status poller leaves it alone. The executor is built from the
keyword arguments at construction (so bad values fail there) and built again in ``start`` with the
run directory Parsl chose, unless ``run_dir`` was given.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from parsl.executors.base import ParslExecutor

from htex_ref.executor import HighThroughputExecutor


class HtexRefExecutor(ParslExecutor):
    """A Parsl executor backed by ``htex_ref.HighThroughputExecutor``; takes that executor's parameters."""

    def __init__(self, label: str = "htex_ref", **options: Any) -> None:
        super().__init__()
        self.label = label
        self._options = options
        self.executor: HighThroughputExecutor = HighThroughputExecutor(label=label, **options)
        self._started = False

    def __repr__(self) -> str:
        return f"HtexRefExecutor({self.executor!r})"

    def start(self) -> None:
        if "run_dir" not in self._options:
            # Parsl sets run_dir (runinfo/NNN) after construction; logs then land where Parsl users look.
            self.executor = HighThroughputExecutor(label=self.label, run_dir=self.run_dir, **self._options)
        self.executor.start()
        self._started = True

    def submit(self, func: Callable[..., Any], resource_specification: dict[str, Any] | None, *args: Any,
               **kwargs: Any) -> Future[Any]:
        return self.executor.parsl_submit(func, resource_specification or None, *args, **kwargs)

    def shutdown(self) -> None:
        if self._started:
            self.executor.shutdown(wait=False)
        super().shutdown()

    @property
    def outstanding(self) -> int:
        return self.executor.outstanding

    @property
    def workers_per_node(self) -> int:
        return self.executor.workers_per_node
