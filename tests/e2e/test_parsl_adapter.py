"""Parsl's own apps on htex_ref through ``htex_ref.parsl_adapter`` under Parsl's own ``Config`` (run by the
``parsl_adapter`` nox session): Parsl's strategy scales the blocks, Parsl's error handler judges them,
errors reach Parsl code as Parsl's classes, block and task states reach Parsl's monitoring.

Skipped where Parsl is not installed (the main test environment does not install it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from htex_ref.providers import LocalProvider
from tests.conftest import processes_mentioning, wait_until
from tests.seed_examples import SEED_EXAMPLES, SeedExample, make_worker_view

parsl = pytest.importorskip("parsl")

pytestmark = pytest.mark.e2e


@parsl.python_app
def add(x: int, y: int) -> int:
    return x + y


@parsl.python_app
def worker_pid() -> int:
    import os

    return os.getpid()


@parsl.python_app
def fail_until(counter: str, failures: int) -> int:
    with open(counter, "a+") as f:
        f.seek(0)
        seen = len(f.read())
        f.write("x")
    if seen < failures:
        raise RuntimeError(f"attempt {seen + 1} fails on purpose")
    return seen + 1


@parsl.bash_app
def echo(text: str, stdout: Any = None) -> str:
    return f"echo {text}"


@parsl.python_app
def exit_worker() -> None:
    import os

    os._exit(7)


@parsl.python_app
def sleep_for(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


@parsl.python_app
def sleep_limited(seconds: float, parsl_resource_specification: dict[str, Any] | None = None) -> float:
    import time

    time.sleep(seconds)
    return seconds


@parsl.python_app
def parsl_env(parsl_resource_specification: dict[str, Any] | None = None) -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k.startswith("PARSL_")}


@parsl.bash_app
def echo_mpi_prefix(parsl_resource_specification: dict[str, Any] | None = None, stdout: Any = None) -> str:
    return 'echo "$PARSL_MPI_PREFIX hostname"'


@parsl.join_app
def fib(n: int) -> Any:
    if n < 2:
        return add(n, 0)
    return add(fib(n - 1), fib(n - 2))


@pytest.fixture
def parsl_on_htex_ref(tmp_path: Path) -> Iterator[Any]:
    from htex_ref.parsl_adapter import HtexRefExecutor

    executor = HtexRefExecutor(label="htex_ref", provider=LocalProvider(), max_workers_per_node=2, encrypted=False,
                               address="127.0.0.1", heartbeat_period=2, heartbeat_threshold=10)
    config = parsl.Config(executors=[executor], run_dir=str(tmp_path / "runinfo"), retries=2)
    with parsl.load(config) as dfk:
        yield dfk
    parsl.clear()
    assert wait_until(lambda: not processes_mentioning(str(tmp_path)), 10), "processes left behind"


def test_parsl_apps_run_on_htex_ref(parsl_on_htex_ref: Any, tmp_path: Path) -> None:
    from htex_ref.parsl_adapter import HtexRefExecutor

    executor = parsl_on_htex_ref.executors["htex_ref"]
    assert isinstance(executor, HtexRefExecutor)
    # The run directory Parsl chose holds htex_ref's logs.
    assert Path(executor.executor.logdir).is_relative_to(tmp_path / "runinfo")

    chain = add(1, 2)
    for i in range(5):
        chain = add(chain, i)
    assert chain.result(timeout=60) == 3 + sum(range(5))

    pids = {worker_pid().result(timeout=60) for _ in range(4)}
    assert os.getpid() not in pids

    out = tmp_path / "echo.out"
    assert echo("from parsl", stdout=str(out)).result(timeout=60) == 0
    assert out.read_text() == "from parsl\n"

    # Parsl's retries (Config.retries=2) resubmit through the adapter.
    counter = tmp_path / "counter"
    assert fail_until(str(counter), 2).result(timeout=60) == 3

    assert fib(10).result(timeout=60) == 55
    assert executor.executor.run_dir.startswith(str(tmp_path))


def _config(tmp_path: Path, executor: Any, **kw: Any) -> Any:
    kw.setdefault("strategy_period", 0.5)
    return parsl.Config(executors=[executor], run_dir=str(tmp_path / "runinfo"), **kw)


@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[Any]:
    """``loaded(executor, **config)`` loads a Parsl Config with that executor; everything is cleaned up after."""
    dfks: list[Any] = []

    def load(executor: Any, **kw: Any) -> Any:
        dfk = parsl.load(_config(tmp_path, executor, **kw))
        dfks.append(dfk)
        return dfk

    yield load
    for dfk in dfks:
        if not dfk.cleanup_called:
            dfk.cleanup()
    parsl.clear()
    assert wait_until(lambda: not processes_mentioning(str(tmp_path)), 15), "processes left behind"


def adapter(provider: Any, **kw: Any) -> Any:
    from htex_ref.parsl_adapter import HtexRefExecutor

    kw.setdefault("max_workers_per_node", 1)
    return HtexRefExecutor(label="ad", provider=provider, encrypted=False, address="127.0.0.1", heartbeat_period=1,
                           heartbeat_threshold=5, **kw)


def block_states(ex: Any) -> dict[str, str]:
    return {b: st.state.name for b, st in ex.status_facade.items()}


@pytest.mark.parametrize("kind", ["parsl", "htex_ref"])
def test_parsl_strategy_scales_out_from_zero_and_in_after_max_idletime(loaded: Any, kind: str) -> None:
    from parsl.providers import LocalProvider as ParslLocalProvider

    from htex_ref.parsl_adapter import ParslProvider

    provider = (ParslLocalProvider if kind == "parsl" else LocalProvider)(init_blocks=0, max_blocks=1)
    dfk = loaded(adapter(provider), strategy="simple", max_idletime=1.0)
    ex = dfk.executors["ad"]
    assert isinstance(ex.executor.provider, ParslProvider) is (kind == "parsl")
    assert block_states(ex) == {}  # init_blocks=0: Parsl's strategy starts a block when a task comes
    assert add(1, 2).result(timeout=60) == 3
    assert list(ex.connected_blocks()) == ["0"]
    # No task for max_idletime (1 s): Parsl's strategy scales the block in, and its pool goes away.
    assert wait_until(lambda: block_states(ex) == {"0": "SCALED_IN"}, 30), block_states(ex)
    assert wait_until(lambda: ex.connected_managers() == [], 30)
    # A new task brings a new block.
    assert add(2, 2).result(timeout=60) == 4
    assert block_states(ex).get("1") in ("PENDING", "RUNNING")


def test_scale_in_with_max_idletime_takes_only_blocks_idle_that_long(loaded: Any) -> None:
    import parsl.executors

    dfk = loaded(adapter(LocalProvider(init_blocks=2, max_blocks=2)), strategy="none")
    ex = dfk.executors["ad"]
    assert isinstance(ex, parsl.executors.HighThroughputExecutor)  # so htex_auto_scale scales it in
    assert wait_until(lambda: len(ex.connected_managers()) == 2, 30)
    assert ex.scale_in_facade(2, max_idletime=3600) == []  # nobody has been idle for an hour
    assert wait_until(lambda: all(m["idle_duration"] > 0.2 for m in ex.connected_managers()), 10)
    gone = ex.scale_in_facade(1, max_idletime=0.1)
    assert len(gone) == 1 and block_states(ex)[gone[0]] == "SCALED_IN"
    assert wait_until(lambda: [m["block_id"] for m in ex.connected_managers()] == [str(1 - int(gone[0]))], 30)


def test_errors_that_cross_are_parsl_classes(loaded: Any) -> None:
    from parsl.executors.errors import InvalidResourceSpecification as ParslInvalidSpec
    from parsl.executors.high_throughput.errors import WorkerLost as ParslWorkerLost

    from htex_ref import errors

    dfk = loaded(adapter(LocalProvider(init_blocks=1, max_blocks=1)), strategy="none", retries=0)
    with pytest.raises(ParslInvalidSpec) as spec_error:
        add(1, 2, parsl_resource_specification={"num_nodes": 2}).result(timeout=60)
    assert isinstance(spec_error.value, errors.InvalidResourceSpecification)
    assert spec_error.value.invalid_keys == {"num_nodes"}

    with pytest.raises(ParslWorkerLost) as lost:
        exit_worker().result(timeout=60)
    assert isinstance(lost.value, errors.WorkerLost) and "loss of worker" in str(lost.value)
    assert add(2, 3).result(timeout=60) == 5  # the pool replaced its worker; the executor is fine
    assert not dfk.executors["ad"].bad_state_is_set


def test_task_control_under_parsl_config(loaded: Any) -> None:
    """A walltime in the resource specification stops the task (Parsl's AppTimeout and htex_ref's
    TaskTimeout at once); a lost worker's task is retried by the executor under Parsl's DFK."""
    from parsl.app.errors import AppTimeout

    from htex_ref import errors

    dfk = loaded(adapter(LocalProvider(init_blocks=1, max_blocks=1), task_kill_grace=0.5), strategy="none",
                 retries=0)
    with pytest.raises(AppTimeout) as info:
        sleep_limited(60, parsl_resource_specification={"walltime": 1}).result(timeout=60)
    assert isinstance(info.value, errors.TaskTimeout) and info.value.limit == 1
    assert sleep_limited(0.1, parsl_resource_specification={"walltime": 30}).result(timeout=60) == 0.1
    assert not dfk.executors["ad"].bad_state_is_set


def test_parsl_block_error_handler_fails_the_executor_with_parsl_bad_state(loaded: Any) -> None:
    from parsl.executors.errors import BadStateException as ParslBadState
    from parsl.providers import LocalProvider as ParslLocalProvider

    provider = ParslLocalProvider(init_blocks=1, max_blocks=1, worker_init="exit 3")
    dfk = loaded(adapter(provider), strategy="simple", retries=0)
    with pytest.raises(ParslBadState) as failed:
        add(1, 1).result(timeout=60)
    assert "EXIT CODE: 3" in str(failed.value)
    assert dfk.executors["ad"].bad_state_is_set


def test_strategy_none_with_no_block_fails_tasks_instead_of_waiting(loaded: Any) -> None:
    from parsl.executors.errors import ExecutorError

    from htex_ref.errors import NoBlocks

    loaded(adapter(LocalProvider(init_blocks=0, max_blocks=1)), strategy="none", retries=0)
    with pytest.raises(ExecutorError) as stuck:
        add(1, 1).result(timeout=60)
    assert isinstance(stuck.value, NoBlocks)
    assert "Config(strategy='simple')" in str(stuck.value)


def test_adapter_refuses_settings_that_belong_to_the_config() -> None:
    from htex_ref.parsl_adapter import HtexRefExecutor

    for name, value in (("strategy", "simple"), ("strategy_period", 1), ("max_idletime", 5)):
        with pytest.raises(TypeError, match=f"Config\\({name}="):
            HtexRefExecutor(**{name: value})
    from parsl.monitoring.radios.htex import HTEXRadio

    with pytest.raises(ValueError, match="FilesystemRadio"):
        HtexRefExecutor(remote_monitoring_radio=HTEXRadio())
    with pytest.raises(ValueError, match="block_error_handler"):
        HtexRefExecutor(block_error_handler="sometimes")


def test_monitoring_records_blocks_tasks_and_resources(loaded: Any, tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    import sqlite3

    from parsl.monitoring import MonitoringHub

    db = tmp_path / "monitoring.db"
    hub = MonitoringHub(logging_endpoint=f"sqlite:///{db}", resource_monitoring_interval=0.2)
    loaded(adapter(LocalProvider(init_blocks=1, max_blocks=1)), strategy="none", monitoring=hub)
    assert sleep_for(1.0).result(timeout=60) == 1.0
    assert add(1, 1).result(timeout=60) == 2
    parsl.dfk().cleanup()  # the database is written by the time cleanup returns
    with sqlite3.connect(db) as con:
        tasks = con.execute("SELECT task_func_name FROM task").fetchall()
        blocks = con.execute("SELECT DISTINCT status FROM block WHERE executor_label = 'ad'").fetchall()
        resources = con.execute("SELECT COUNT(*) FROM resource").fetchone()[0]
    assert sorted(t[0] for t in tasks) == ["add", "sleep_for"]
    assert ("PENDING",) in blocks
    assert resources > 0


@pytest.mark.parametrize("example", SEED_EXAMPLES, ids=[e.name for e in SEED_EXAMPLES])
def test_seed_example_runs_under_parsl_config_with_the_adapter(example: SeedExample, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from parsl.providers import LocalProvider as ParslLocalProvider

    from htex_ref.parsl_adapter import HtexRefExecutor

    monkeypatch.chdir(tmp_path)  # the examples name no run_dir: runinfo/ lands here
    namespace: dict[str, Any] = {"Config": parsl.Config, "HighThroughputExecutor": HtexRefExecutor,
                                 "LocalProvider": ParslLocalProvider}
    exec(example.code, namespace)
    view = parsl.python_app(make_worker_view())
    with parsl.load(namespace["config"]):
        seen = [f.result(timeout=60) for f in [view() for _ in range(6)]]
    parsl.clear()
    assert example.check(seen), seen
    assert wait_until(lambda: not processes_mentioning(str(tmp_path)), 15), "processes left behind"


def test_polaris_config_of_switching_from_parsl_builds_with_parsl_providers() -> None:
    """The door-1 example of docs/switching-from-parsl.md (PBS Pro cannot run here: it is built, not loaded)."""
    import re

    from htex_ref.parsl_adapter import ParslProvider

    page = (Path(__file__).resolve().parents[2] / "docs" / "switching-from-parsl.md").read_text()
    code = re.search(r"```python\n(import parsl\n.*?)\nwith parsl.load", page, re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)
    (ex,) = namespace["polaris_config"].executors
    assert isinstance(ex, parsl.executors.HighThroughputExecutor) and ex.label == "htex"
    assert isinstance(ex.executor.provider, ParslProvider)
    assert ex.executor.provider.walltime_seconds == 600 and ex.executor.provider.cores_per_node is None
    assert ex.workers_per_node == 4  # four GPUs bound the count
    assert list(ex.available_accelerators) == ["0", "1", "2", "3"]
    assert ex.cpu_affinity == "block-reverse"
    ex.max_workers_per_node = 2  # set after construction, as Parsl users do: the inner executor follows
    assert ex.executor.settings.max_workers_per_node == 2
    with pytest.raises(ValueError, match="max_workers_per_node"):
        ex.max_workers_per_node = -1


@pytest.mark.parametrize("nodes_from", ["PBS_NODEFILE", "mpi_nodes"])
def test_mpi_tasks_under_parsl_config_get_their_nodes_and_prefix(loaded: Any, tmp_path: Path,
                                                                 nodes_from: str) -> None:
    """Parsl's Config with the MPI adapter: the block's nodes come from a PBS node file set in worker_init
    (as Parsl's own MPI tests do) or from mpi_nodes; each MPI task gets its nodes and Parsl's variables."""
    from parsl.executors import MPIExecutor as ParslMPIExecutor
    from parsl.executors.errors import InvalidResourceSpecification as ParslInvalidSpec
    from parsl.launchers import SimpleLauncher
    from parsl.providers import LocalProvider as ParslLocalProvider

    from htex_ref.parsl_adapter import HtexRefMPIExecutor

    nodes = ["n1", "n2", "n3", "n4"]
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("".join(f"{n}\n" for n in nodes))
    # (Slurm's node list would come first, were these tests run inside a Slurm job.)
    worker_init = "unset SLURM_NODELIST SLURM_JOB_NODELIST; " + (
        f"export PBS_NODEFILE={nodefile}" if nodes_from == "PBS_NODEFILE" else "unset PBS_NODEFILE")
    provider = ParslLocalProvider(init_blocks=1, max_blocks=1, launcher=SimpleLauncher(), worker_init=worker_init)
    ex = HtexRefMPIExecutor(label="mpi", provider=provider, max_workers_per_block=2, mpi_launcher="srun",
                            address="127.0.0.1", heartbeat_period=1, heartbeat_threshold=5,
                            **({"mpi_nodes": nodes} if nodes_from == "mpi_nodes" else {}))
    assert isinstance(ex, ParslMPIExecutor) and isinstance(ex, parsl.executors.HighThroughputExecutor)
    loaded(ex, strategy="none", retries=0)

    env = parsl_env(parsl_resource_specification={"num_nodes": 3, "ranks_per_node": 5}).result(timeout=60)
    hosts = env["PARSL_MPI_NODELIST"].split(",")
    assert len(hosts) == 3 and set(hosts) <= set(nodes), env
    assert env["PARSL_NUM_RANKS"] == "15" and env["PARSL_NUM_NODES"] == "3" and env["PARSL_RANKS_PER_NODE"] == "5"
    assert env["PARSL_MPI_PREFIX"] == env["PARSL_SRUN_PREFIX"] == (
        f"srun --ntasks 15 --ntasks-per-node 5 --nodelist {','.join(hosts)} --nodes 3")
    assert env["PARSL_MPIEXEC_PREFIX"] == f"mpiexec -n 15 -ppn 5 -hosts {','.join(hosts)}"

    out = tmp_path / "prefix.out"
    spec = {"num_nodes": 2, "num_ranks": 4, "launcher_options": "--cpu-bind=none"}
    assert echo_mpi_prefix(parsl_resource_specification=spec, stdout=str(out)).result(timeout=60) == 0
    assert out.read_text().startswith("srun --ntasks 4 --ntasks-per-node 2 --nodelist ")
    assert out.read_text().endswith(" --nodes 2 --cpu-bind=none hostname\n")

    # Unlike Parsl's MPIExecutor, a task without MPI keys runs (on the pool's node, with no MPI variables).
    assert "PARSL_MPI_PREFIX" not in parsl_env().result(timeout=60)
    with pytest.raises(ParslInvalidSpec) as bad:
        parsl_env(parsl_resource_specification={"num_nodes": 2, "BAD_OPT": 1}).result(timeout=60)
    assert bad.value.invalid_keys == {"BAD_OPT"}
    with pytest.raises(ParslInvalidSpec, match="num_nodes=5"):  # more nodes than the block has
        parsl_env(parsl_resource_specification={"num_nodes": 5}).result(timeout=60)


def test_mpi_adapter_takes_parsl_mpiexecutor_parameters() -> None:
    from parsl.executors.errors import InvalidResourceSpecification as ParslInvalidSpec
    from parsl.launchers import SimpleLauncher, SrunLauncher
    from parsl.providers import LocalProvider as ParslLocalProvider
    from parsl.providers import SlurmProvider as ParslSlurmProvider

    from htex_ref.launchers import SimpleLauncher as HtexRefSimpleLauncher
    from htex_ref.parsl_adapter import HtexRefMPIExecutor

    with pytest.raises(TypeError, match="SimpleLauncher"):
        HtexRefMPIExecutor(provider=ParslSlurmProvider(launcher=SrunLauncher()))
    with pytest.raises(TypeError, match="SimpleLauncher"):
        HtexRefMPIExecutor()  # the default LocalProvider starts its pool with a SingleNodeLauncher
    with pytest.raises(ValueError, match="mpi_launcher"):
        HtexRefMPIExecutor(mpi_launcher="bad_launcher", provider=ParslLocalProvider(launcher=SimpleLauncher()))
    with pytest.raises(TypeError, match="max_workers_per_block"):
        HtexRefMPIExecutor(provider=ParslLocalProvider(launcher=SimpleLauncher()), max_workers_per_node=2)
    with pytest.raises(ValueError, match="max_workers_per_block"):
        HtexRefMPIExecutor(provider=ParslLocalProvider(launcher=SimpleLauncher()), max_workers_per_block=0)

    ex = HtexRefMPIExecutor(provider=LocalProvider(launcher=HtexRefSimpleLauncher()), mpi_policy="fifo")
    assert (ex.label, ex.encrypted, ex.max_workers_per_block, ex.mpi_launcher) == ("MPIExecutor", False, 1, "mpiexec")
    assert ex.enable_mpi_mode and ex.mpi_policy == "fifo" and not ex.monitor_resources()
    ex.max_workers_per_block = 3  # set after construction, as Parsl users do: the inner executor follows
    assert ex.executor.settings.max_workers_per_node == 3 and ex.executor.settings.enable_mpi_mode
    # Parsl's strategy counts nodes_per_block x workers_per_node slots: a block runs 4 tasks, not 8.
    wide = HtexRefMPIExecutor(provider=ParslLocalProvider(launcher=SimpleLauncher(), nodes_per_block=2),
                              max_workers_per_block=4)
    assert wide.workers_per_node * wide.provider.nodes_per_block == 4
    ex.validate_resource_spec({"num_nodes": 1, "ranks_per_node": 2, "launcher_options": "--debug"})
    ex.validate_resource_spec({})  # Parsl's MPIExecutor refuses this (its issue 3427); htex_ref runs such tasks
    with pytest.raises(ParslInvalidSpec):
        ex.validate_resource_spec({"num_nodes": 1, "BAD_OPT": 1})
