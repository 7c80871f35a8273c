"""Every Config example of Parsl's HTEx guide (the seed documents) runs as written with htex_ref's imports:
a task runs, and its worker sees what the example asks for (one core each, its accelerators); the guide's
explicit 12-worker cpu_affinity list fails clearly, within seconds, on a machine too small for it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import htex_ref
from htex_ref import BadStateException, Config, HighThroughputExecutor, python_app
from htex_ref.providers import LocalProvider
from tests.conftest import processes_mentioning, wait_until
from tests.seed_examples import SEED_EXAMPLES, TWELVE_WORKER_LIST, SeedExample, make_worker_view

pytestmark = pytest.mark.e2e

IMPORTS = {"Config": Config, "HighThroughputExecutor": HighThroughputExecutor, "LocalProvider": LocalProvider}


def run_as_written(code: str) -> Config:
    namespace = dict(IMPORTS)
    exec(code, namespace)
    config = namespace["config"]
    assert isinstance(config, Config)
    return config


@pytest.mark.parametrize("example", SEED_EXAMPLES, ids=[e.name for e in SEED_EXAMPLES])
def test_seed_example_runs_with_htex_ref_imports(example: SeedExample, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the examples name no run_dir: runinfo/ lands here
    config = run_as_written(example.code)
    view = python_app(make_worker_view())
    with htex_ref.load(config) as session:
        seen = [f.result(timeout=60) for f in [view() for _ in range(6)]]
        (ex,) = session.executors.values()
        if ex.encrypted:
            assert ex.cert_dir is not None and Path(ex.cert_dir).is_relative_to(tmp_path / "runinfo")
    assert example.check(seen), seen
    assert {rank for rank, _, _ in seen} <= {"0", "1", "2", "3"}
    assert wait_until(lambda: not processes_mentioning(str(tmp_path)), 10)


def test_the_guides_twelve_worker_cpu_list_fails_clearly_on_a_small_machine(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = Config(executors=[HighThroughputExecutor(label="htex_Local", worker_debug=True,
                                                      cpu_affinity=TWELVE_WORKER_LIST,
                                                      provider=LocalProvider(init_blocks=1, max_blocks=1))],
                    strategy="none")
    view = python_app(make_worker_view())
    started = time.monotonic()
    with htex_ref.load(config), pytest.raises(BadStateException) as failed:
        view().result(timeout=60)
    assert time.monotonic() - started < 30
    message = str(failed.value)
    assert "cpu_affinity lists threads for 12 workers" in message and "max_workers_per_node=12" in message


def test_the_api_pages_parameters_are_accepted(tmp_path: Path) -> None:
    """The seed API page's signature, with its values (max_workers is the deprecated name)."""
    with pytest.warns(FutureWarning, match="max_workers_per_node"):
        ex = HighThroughputExecutor(
            label="HighThroughputExecutor",
            provider=LocalProvider(cmd_timeout=30, init_blocks=1, min_blocks=0, max_blocks=10, nodes_per_block=1,
                                   parallelism=1, walltime="00:15:00", worker_init=""),
            launch_cmd=None, address=None, worker_ports=None, worker_port_range=(54000, 55000),
            interchange_port_range=(55000, 56000), storage_access=None, working_dir=None, worker_debug=False,
            cores_per_worker=1.0, mem_per_worker=None, max_workers=float("inf"), prefetch_capacity=0,
            heartbeat_threshold=120, heartbeat_period=30, poll_period=10, address_probe_timeout=None, managed=True,
            worker_logdir_root=None, run_dir=str(tmp_path), encrypted=False)
    with ex:
        assert ex.submit(sum, [1, 2, 3]).result(timeout=60) == 6
    assert ex.max_workers_per_node is None  # inf: no limit but the node's cores (cores_per_worker=1.0)
    assert ex.workers_per_node == 1  # for scaling arithmetic: the provider knows no cores, so Parsl's guess
