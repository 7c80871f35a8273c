"""Cluster tests: a real Slurm cluster started by the test run (scripts/test-slurm-local.sh, the compose
cluster's script), described by the ClusterInfo file that ``HTEX_CLUSTER_INFO`` names.

Without that variable every test here is skipped. Slurm commands run with the cluster's environment
(``info.env``: SLURM_CONF and the like) set for the whole session. Executors are built from the
ClusterInfo alone, so the same tests run on the local namespace cluster and on the compose cluster.
After each test its jobs must leave the queue, and at the end of the session no job may be left.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from clusters.info import ClusterInfo
from htex_ref import HighThroughputExecutor
from htex_ref.launch import DEFAULT_LAUNCH_CMD
from htex_ref.launchers import SrunLauncher
from htex_ref.providers.slurm import SlurmProvider
from tests.conftest import wait_until as wait_for

INFO = ClusterInfo.from_env()
#: Timings measured by the tests, printed at the end of the session.
TIMINGS: dict[str, list[float]] = {}
_run_ids = itertools.count()


def record_timing(name: str, seconds: float) -> None:
    TIMINGS.setdefault(name, []).append(seconds)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="no cluster: set HTEX_CLUSTER_INFO to a ClusterInfo file "
                                   "(scripts/test-slurm-local.sh does)")
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)
            if INFO is None:
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TIMINGS:
        return
    terminalreporter.section("cluster timings (seconds)")
    for name, values in sorted(TIMINGS.items()):
        vals = ", ".join(f"{v:.2f}" for v in values)
        terminalreporter.write_line(f"{name}: min {min(values):.2f} max {max(values):.2f} ({vals})")


def slurm(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a Slurm command on the submit host with the cluster's environment."""
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=check)


def active_jobs(job_ids: list[str] | None = None) -> list[str]:
    """Jobs in the queue that have not ended (squeue's default states), optionally only among ``job_ids``."""
    out = slurm("squeue", "--noheader", "--format=%i").stdout.split()
    return [j for j in out if job_ids is None or j in job_ids]


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterInfo]:
    assert INFO is not None
    saved = {k: os.environ.get(k) for k in INFO.env}
    os.environ.update(INFO.env)
    # Task functions defined in the test modules (and the rendezvous they use) travel by value: the
    # nodes need not have tests/ at all.
    for name, module in list(sys.modules.items()):
        if name.startswith("tests.cluster.") or name == "tests.rendezvous":
            cloudpickle.register_pickle_by_value(module)
    left_before = active_jobs()
    assert not left_before, f"jobs already in the queue before the cluster tests: {left_before}"
    yield INFO
    if not wait_for(lambda: not active_jobs(), 60):
        left = active_jobs()
        slurm("scancel", *left, check=False)
        pytest.fail(f"jobs left in the queue after the cluster tests: {left} (cancelled now)")
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class ClusterExecutors:
    """Builds started executors with SlurmProvider on the cluster; shuts them down after the test."""

    def __init__(self, info: ClusterInfo, name: str) -> None:
        self.info = info
        self.name = name
        self.made: list[HighThroughputExecutor] = []
        self.providers: list[SlurmProvider] = []

    def provider(self, **kwargs: Any) -> SlurmProvider:
        kwargs.setdefault("partition", self.info.partition)
        kwargs.setdefault("launcher", SrunLauncher())
        kwargs.setdefault("walltime", "00:10:00")
        kwargs.setdefault("cmd_timeout", 30)
        kwargs.setdefault("status_polling_interval", 1)
        kwargs.setdefault("init_blocks", 1)
        kwargs.setdefault("max_blocks", max(1, kwargs["init_blocks"]))
        if self.info.worker_init:
            kwargs["worker_init"] = self.info.worker_init + "\n" + kwargs.get("worker_init", "")
        p = SlurmProvider(**kwargs)
        self.providers.append(p)
        return p

    def run_dir(self) -> str:
        path = Path(self.info.shared_dir) / "runs" / f"{self.name}-{os.getpid()}-{next(_run_ids)}"
        return str(path)

    def __call__(self, provider: SlurmProvider | None = None, start: bool = True,
                 executor_class: type[HighThroughputExecutor] = HighThroughputExecutor,
                 **kwargs: Any) -> HighThroughputExecutor:
        """An executor of ``executor_class`` (e.g. ``MPIExecutor``) set up to reach this cluster, started
        unless ``start=False``."""
        kwargs.setdefault("address", self.info.address)
        kwargs.setdefault("run_dir", self.run_dir())
        kwargs.setdefault("heartbeat_period", 2)
        kwargs.setdefault("heartbeat_threshold", 10)
        kwargs.setdefault("block_registration_timeout", 120)
        if self.info.worker_pool_cmd:
            kwargs.setdefault("launch_cmd", DEFAULT_LAUNCH_CMD.replace("{worker_pool}", self.info.worker_pool_cmd))
        ex = executor_class(provider=provider or self.provider(), **kwargs)
        self.made.append(ex)
        if start:
            ex.start()
        return ex

    def job_ids(self) -> list[str]:
        return [j for p in self.providers for j in p.jobs]

    def close(self) -> None:
        for ex in self.made:
            ex.shutdown(wait=False)
        for p in self.providers:
            # Jobs submitted straight through a provider, not through an executor.
            live = [j for j, job in p.jobs.items() if not job.status.terminal]
            if live:
                p.cancel(live)


@pytest.fixture
def executors(cluster: ClusterInfo, request: pytest.FixtureRequest) -> Iterator[ClusterExecutors]:
    made = ClusterExecutors(cluster, request.node.name.replace("/", "_").replace("[", "-").strip("]"))
    yield made
    made.close()
    ids = made.job_ids()
    assert wait_for(lambda: not active_jobs(ids), 60), \
        f"jobs of this test still in the queue 60 s after shutdown: {active_jobs(ids)}"
