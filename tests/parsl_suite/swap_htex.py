"""A pytest plugin that runs Parsl's own ``local`` tests (each with its own HighThroughputExecutor config) on
htex_ref: before any test module is imported, Parsl's ``HighThroughputExecutor`` name is pointed at a
subclass of ``htex_ref.parsl_adapter.HtexRefExecutor``, so every config those tests build gets the adapter
with the same arguments. Use: ``pytest -p tests.parsl_suite.swap_htex --pyargs parsl.tests... --config local``.

Parsl's own code keeps its class (its modules bound the name when ``parsl`` was imported); the adapter is
registered as a virtual subclass of it, so Parsl's ``isinstance`` checks (``htex_auto_scale``) hold.
"""

from __future__ import annotations

from typing import Any

import parsl
import parsl.executors
import parsl.executors.high_throughput.executor as parsl_htex_module

from htex_ref.parsl_adapter import HtexRefExecutor


class HighThroughputExecutor(HtexRefExecutor):
    """Parsl's name for htex_ref's executor in the swapped test configs."""


def pytest_configure(config: Any) -> None:
    for module in (parsl, parsl.executors, parsl_htex_module):
        module.HighThroughputExecutor = HighThroughputExecutor  # type: ignore[attr-defined,misc]
