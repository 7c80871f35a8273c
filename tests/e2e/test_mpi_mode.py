"""MPI mode on one machine, with a fake node list: real executor, interchange, pool and workers; the
MPI tasks report the variables they were given (nothing here runs MPI: tests/cluster/test_mpi.py does)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import htex_ref
from htex_ref import (
    BadStateException,
    Config,
    HighThroughputExecutor,
    InvalidResourceSpecification,
    LocalProvider,
    MPIExecutor,
    SimpleLauncher,
    SingleNodeLauncher,
    WorkerLost,
    bash_app,
)
from htex_ref.core.mpi import MPI_ENV_NAMES
from tests.conftest import processes_mentioning, wait_until
from tests.rendezvous import meet

pytestmark = pytest.mark.e2e


@pytest.fixture
def make_mpi(tmp_path: Path) -> Iterator[Any]:
    made: list[HighThroughputExecutor] = []

    def make(cls: type[HighThroughputExecutor] = MPIExecutor, **kwargs: Any) -> HighThroughputExecutor:
        kwargs.setdefault("run_dir", str(tmp_path / f"run{len(made)}"))
        kwargs.setdefault("address", "127.0.0.1")
        kwargs.setdefault("heartbeat_period", 2)
        kwargs.setdefault("heartbeat_threshold", 10)
        kwargs.setdefault("provider", LocalProvider(launcher=SimpleLauncher()))
        ex = cls(**kwargs)
        made.append(ex)
        ex.start()
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=False)
    assert wait_until(lambda: not processes_mentioning(str(tmp_path)), 10)


def mpi_env(rendezvous: str | None = None, count: int = 0) -> dict[str, Any]:
    if rendezvous:
        meet(rendezvous, count)
    env = {k: os.environ.get(k) for k in MPI_ENV_NAMES}
    return {**env, "rank": os.environ["PARSL_WORKER_RANK"], "start": time.time(), "end": time.time(),
            "sentinel": os.environ.get("PARSL_NUM_RANKS_SENTINEL")}


def held(seconds: float) -> dict[str, Any]:
    start = time.time()
    time.sleep(seconds)
    return {"nodes": os.environ["PARSL_MPI_NODELIST"], "start": start, "end": time.time()}


def test_an_mpi_task_gets_its_nodes_and_prefixes(make_mpi: Any) -> None:
    ex = make_mpi(max_workers_per_block=2, mpi_nodes=["n1", "n2", "n3"], mpi_launcher="srun")
    r = ex.submit(mpi_env, resource_specification={"num_nodes": 2, "ranks_per_node": 3,
                                                   "launcher_options": "--mpi=pmi2"}).result(60)
    assert r["PARSL_MPI_PREFIX"] == r["PARSL_SRUN_PREFIX"] == (
        "srun --ntasks 6 --ntasks-per-node 3 --nodelist n1,n2 --nodes 2 --mpi=pmi2")
    assert r["PARSL_MPIEXEC_PREFIX"] == "mpiexec -n 6 -ppn 3 -hosts n1,n2 --mpi=pmi2"
    assert (r["PARSL_MPI_NODELIST"], r["PARSL_NUM_NODES"], r["PARSL_RANKS_PER_NODE"], r["PARSL_NUM_RANKS"]) == (
        "n1,n2", "2", "3", "6")


def test_nothing_leaks_into_the_next_task(make_mpi: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A variable the pool inherited is put back after the task that overrode it.
    monkeypatch.setenv("PARSL_NUM_NODES", "inherited")
    ex = make_mpi(max_workers_per_block=1, mpi_nodes=["n1"])
    first = ex.submit(mpi_env, resource_specification={"num_nodes": 1}).result(60)
    second = ex.submit(mpi_env).result(60)  # no MPI keys: still runs in MPI mode, on the same worker
    assert first["rank"] == second["rank"] == "0"
    assert first["PARSL_NUM_NODES"] == "1" and first["PARSL_MPI_PREFIX"].startswith("mpiexec -n 1 -ppn 1")
    assert second["PARSL_NUM_NODES"] == "inherited"
    assert all(second[k] is None for k in MPI_ENV_NAMES if k != "PARSL_NUM_NODES")


def test_disjoint_nodes_at_once_and_a_large_task_waits(make_mpi: Any) -> None:
    ex = make_mpi(max_workers_per_block=3, mpi_nodes=["n1", "n2", "n3"])
    rendezvous = tempfile.mkdtemp(prefix="meet-", dir=ex.run_dir)
    small = [ex.submit(mpi_env, rendezvous, 2, resource_specification={"num_nodes": 1}) for _ in range(2)]
    large = ex.submit(mpi_env, resource_specification={"num_nodes": 3})
    a, b = (f.result(60) for f in small)  # they met: both ran at once
    assert {a["PARSL_MPI_NODELIST"], b["PARSL_MPI_NODELIST"]} == {"n1", "n2"}
    big = large.result(60)
    assert big["PARSL_MPI_NODELIST"] == "n1,n2,n3"
    assert big["start"] >= max(a["end"], b["end"])


def test_a_bash_app_writes_the_prefix(tmp_path: Path) -> None:
    @bash_app
    def launch(stdout: str = "", parsl_resource_specification: dict[str, Any] | None = None) -> str:
        return 'echo "$PARSL_MPI_PREFIX ./hello"'

    ex = MPIExecutor(max_workers_per_block=1, mpi_nodes=["n1", "n2"], run_dir=str(tmp_path / "run"),
                     address="127.0.0.1", provider=LocalProvider(launcher=SimpleLauncher()))
    out = tmp_path / "out.txt"
    with htex_ref.load(Config(executors=[ex])):
        spec = {"num_nodes": 2, "num_ranks": 4}
        assert launch(stdout=str(out), parsl_resource_specification=spec).result(60) == 0
    assert out.read_text().strip() == "mpiexec -n 4 -ppn 2 -hosts n1,n2 ./hello"
    assert wait_until(lambda: not processes_mentioning(str(tmp_path)), 10)


def test_nodes_come_back_when_the_worker_dies(make_mpi: Any) -> None:
    ex = make_mpi(max_workers_per_block=1, mpi_nodes=["n1", "n2"])
    with pytest.raises(WorkerLost):
        ex.submit(os._exit, 3, resource_specification={"num_nodes": 2}).result(60)
    assert ex.submit(mpi_env, resource_specification={"num_nodes": 2}).result(60)["PARSL_MPI_NODELIST"] == "n1,n2"


def test_shared_nodes_by_slots(make_mpi: Any) -> None:
    ex = make_mpi(max_workers_per_block=2, mpi_nodes=["a:2", "b:2"], mpi_share_nodes=True)
    rendezvous = tempfile.mkdtemp(prefix="meet-", dir=ex.run_dir)
    pair = [ex.submit(mpi_env, rendezvous, 2, resource_specification={"num_nodes": 1, "ranks_per_node": 1})
            for _ in range(2)]
    # Best fit: the second 1-rank task shares node a with the first, leaving b whole.
    assert [f.result(60)["PARSL_MPI_NODELIST"] for f in pair] == ["a", "a"]
    too_wide = ex.submit(mpi_env, resource_specification={"num_nodes": 1, "ranks_per_node": 3})
    with pytest.raises(InvalidResourceSpecification, match="ranks_per_node=3 fits on 0 of this block's nodes"):
        too_wide.result(60)


def test_policy_fifo_keeps_the_order(make_mpi: Any) -> None:
    ex = make_mpi(max_workers_per_block=3, mpi_nodes=["n1", "n2"], mpi_policy="fifo")
    first = ex.submit(held, 1.0, resource_specification={"num_nodes": 1})
    wide = ex.submit(held, 0.0, resource_specification={"num_nodes": 2})
    after = ex.submit(held, 0.0, resource_specification={"num_nodes": 1})
    f, w, a = first.result(60), wide.result(60), after.result(60)
    # n2 was free the whole time, but fifo lets nothing pass the 2-node task.
    assert w["start"] >= f["end"] and a["start"] >= w["start"]


@pytest.mark.parametrize(("spec", "key"), [
    ({"num_nodes": 4}, "num_nodes"),
    ({"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 3}, "num_ranks"),
    ({"num_nodes": 1, "cores": 2}, "cores"),
])
def test_bad_specifications_fail_at_submit(make_mpi: Any, spec: dict[str, Any], key: str) -> None:
    ex = make_mpi(max_workers_per_block=1, mpi_nodes=["n1", "n2", "n3"])
    with pytest.raises(InvalidResourceSpecification) as info:
        ex.submit(mpi_env, resource_specification=spec)
    assert info.value.invalid_keys == {key}
    assert ex.outstanding == 0


def test_mpi_keys_without_mpi_mode_fail_at_submit(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1)
    with pytest.raises(InvalidResourceSpecification, match="enable_mpi_mode=True"):
        ex.submit(mpi_env, resource_specification={"num_nodes": 1})


def test_settings_are_checked_at_construction() -> None:
    with pytest.raises(TypeError, match="SimpleLauncher"):
        MPIExecutor(provider=LocalProvider(launcher=SingleNodeLauncher()))
    with pytest.raises(ValueError, match="mpi_launcher"):
        MPIExecutor(mpi_launcher="jsrun", provider=LocalProvider(launcher=SimpleLauncher()))
    with pytest.raises(ValueError, match="max_workers_per_block"):
        MPIExecutor(max_workers_per_block=0, provider=LocalProvider(launcher=SimpleLauncher()))
    for name, value in (("cores_per_worker", 2), ("max_workers_per_node", 2), ("enable_mpi_mode", False)):
        with pytest.raises(TypeError, match=f"MPIExecutor takes no '{name}'"):
            MPIExecutor(provider=LocalProvider(launcher=SimpleLauncher()), **{name: value})
    with pytest.raises(ValueError, match="only mean something in MPI mode"):
        HighThroughputExecutor(mpi_nodes=["n1"])
    with pytest.raises(ValueError, match="mpi_policy"):
        MPIExecutor(mpi_policy="lottery", provider=LocalProvider(launcher=SimpleLauncher()))
    with pytest.raises(ValueError, match=r"\{mpi_options\}"):
        MPIExecutor(provider=LocalProvider(launcher=SimpleLauncher()), launch_cmd="{worker_pool} --port={worker_port}")
    ex = MPIExecutor(provider=LocalProvider(launcher=SimpleLauncher()))
    assert (ex.label, ex.encrypted, ex.enable_mpi_mode, ex.mpi_launcher, ex.max_workers_per_block) == (
        "MPIExecutor", False, True, "mpiexec", 1)
    assert "--enable_mpi_mode" in ex.settings.launch_command("0", 1, None, "/tmp")


def test_a_block_without_a_node_list_fails_loudly(make_mpi: Any) -> None:
    # No SLURM_NODELIST, no PBS_NODEFILE, no mpi_nodes: the pool cannot know its nodes and says so.
    for name in ("SLURM_NODELIST", "SLURM_JOB_NODELIST", "PBS_NODEFILE"):
        assert name not in os.environ
    ex = make_mpi(max_workers_per_block=1, strategy_period=0.5)
    fut = ex.submit(mpi_env, resource_specification={"num_nodes": 1})
    with pytest.raises(BadStateException, match="MPI mode needs the block's nodes"):
        fut.result(90)


def test_nodes_from_a_pbs_node_file(make_mpi: Any, tmp_path: Path) -> None:
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("p1\np1\np2\np3\n")
    ex = make_mpi(max_workers_per_block=1,
                  provider=LocalProvider(launcher=SimpleLauncher(), worker_init=f"export PBS_NODEFILE={nodefile}"))
    # A LocalProvider's nodes_per_block (1) does not bound MPI tasks: the node file decides, in the pool.
    assert ex.submit(mpi_env, resource_specification={"num_nodes": 3}).result(60)["PARSL_MPI_NODELIST"] == "p1,p2,p3"
    with pytest.raises(InvalidResourceSpecification, match="num_nodes=4 but this block has 3 nodes"):
        ex.submit(mpi_env, resource_specification={"num_nodes": 4}).result(60)


def test_enable_mpi_mode_on_the_executor(make_mpi: Any) -> None:
    ex = make_mpi(HighThroughputExecutor, enable_mpi_mode=True, mpi_launcher="aprun", max_workers_per_node=2,
                  mpi_nodes=["x1", "x2"])
    r = ex.submit(mpi_env, resource_specification={"num_nodes": 2, "ranks_per_node": 4}).result(60)
    assert r["PARSL_MPI_PREFIX"] == "aprun -n 8 -N 4 -node-list x1,x2"


def test_parsl_docs_mpi_executor_example_with_htex_ref_imports() -> None:
    # The MPIExecutor configuration of Parsl's MPI apps guide, as written there, imports changed.
    from htex_ref import PBSProProvider

    config = Config(executors=[MPIExecutor(
        max_workers_per_block=2,  # Assuming 2 nodes per task
        provider=PBSProProvider(
            account="parsl",
            worker_init="module load miniconda; source activate /lus/eagle/projects/parsl/envs/",
            walltime="1:00:00",
            queue="debug",
            scheduler_options="#PBS -l filesystems=home:eagle:grand",
            launcher=SimpleLauncher(),
            select_options="ngpus=4",
            nodes_per_block=4,
            max_blocks=1,
            cpus_per_node=64,
        ),
    )])
    ex = config.executors[0]
    assert isinstance(ex, MPIExecutor) and ex.settings.mpi_max_nodes == 4
    cmd = ex.settings.launch_command("0", 54000, None, "/tmp/logs")
    assert "--enable_mpi_mode" in cmd and "--mpi-launcher=mpiexec" in cmd and "--max_workers_per_node=2" in cmd
    with pytest.raises(InvalidResourceSpecification, match="num_nodes=5"):
        ex.validate_resource_spec({"num_nodes": 5, "ranks_per_node": 2})
    assert ex.validate_resource_spec({"num_nodes": 2, "ranks_per_node": 2}) == float("inf")
