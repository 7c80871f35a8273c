"""A pytest plugin that runs Parsl's own ``local`` tests (each with its own HighThroughputExecutor or
MPIExecutor config) on htex_ref: before any test module is imported, Parsl's ``HighThroughputExecutor`` name
is pointed at a subclass of ``htex_ref.parsl_adapter.HtexRefExecutor``, and Parsl's ``MPIExecutor`` name at a
subclass of ``htex_ref.parsl_adapter.HtexRefMPIExecutor``, so every config those tests build gets the adapter
with the same arguments. Use: ``pytest -p tests.parsl_suite.swap_htex --pyargs parsl.tests... --config local``.

Parsl's own code keeps its classes (its modules bound the names when ``parsl`` was imported); the adapters
are registered as virtual subclasses of them, so Parsl's ``isinstance`` checks (``htex_auto_scale``) hold.
"""

from __future__ import annotations

from typing import Any

import parsl
import parsl.executors
import parsl.executors.high_throughput.executor as parsl_htex_module
import parsl.executors.high_throughput.mpi_executor as parsl_mpi_module

from htex_ref.parsl_adapter import HtexRefExecutor, HtexRefMPIExecutor


class HighThroughputExecutor(HtexRefExecutor):
    # Parsl's name for htex_ref's executor in the swapped test configs; the adapter's docstring (Parsl's
    # tests read it).
    __doc__ = HtexRefExecutor.__doc__


class MPIExecutor(HtexRefMPIExecutor):
    # Parsl's name for htex_ref's MPI executor in the swapped test configs.
    __doc__ = HtexRefMPIExecutor.__doc__


def pytest_configure(config: Any) -> None:
    for module in (parsl, parsl.executors, parsl_htex_module):
        module.HighThroughputExecutor = HighThroughputExecutor  # type: ignore[attr-defined,misc]
    for module in (parsl, parsl.executors, parsl_mpi_module):
        if hasattr(module, "MPIExecutor"):  # Parsl 2026.10 exports it from parsl.executors, not from parsl
            module.MPIExecutor = MPIExecutor  # type: ignore[attr-defined,misc]
