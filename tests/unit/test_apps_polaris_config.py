"""The Polaris configuration of examples/polaris_config.py: built with PBSProProvider and MpiExecLauncher,
and the PBS job script its provider renders for one block (pure rendering; no PBS server runs here)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from htex_ref.launchers import MpiExecLauncher
from htex_ref.providers import LocalProvider, PBSProProvider

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def polaris() -> ModuleType:
    spec = importlib.util.spec_from_file_location("polaris_config", EXAMPLES / "polaris_config.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_polaris_config_runs_one_worker_per_gpu(polaris: ModuleType, tmp_path: Path) -> None:
    cfg = polaris.polaris_config(account="MYPROJECT", queue="debug", walltime="0:30:00",
                                 worker_init="source /lus/venv/bin/activate", run_dir=str(tmp_path))
    (ex,) = cfg.executors
    assert cfg.retries == 2
    assert ex.available_accelerators == ["0", "1", "2", "3"]
    assert ex.max_workers_per_node == 4 and ex.cores_per_worker == 8
    assert ex.cpu_affinity == "block-reverse" and ex.prefetch_capacity == 0
    provider = ex.provider
    assert isinstance(provider, PBSProProvider)
    assert (provider.account, provider.queue, provider.cpus_per_node) == ("MYPROJECT", "debug", 64)
    assert (provider.init_blocks, provider.min_blocks, provider.max_blocks, provider.nodes_per_block) == (1, 0, 1, 1)
    assert isinstance(provider.launcher, MpiExecLauncher)
    # A 64-thread node with 8 threads per worker and 4 GPUs: 4 workers.
    assert ex.workers_per_node == 4


def test_polaris_job_script(polaris: ModuleType, tmp_path: Path) -> None:
    cfg = polaris.polaris_config(account="MYPROJECT", queue="prod", walltime="1:00:00", nodes_per_block=2,
                                 worker_init="source /lus/venv/bin/activate")
    provider = cfg.executors[0].provider
    provider.script_dir = str(tmp_path)
    # The executor starts one worker pool per node: one launcher task per node.
    launcher_text = provider.launcher("htex-worker-pool --block-id=0", 1, provider.nodes_per_block)
    script = provider.render_script(job_name="htex_ref.htex_polaris.block-0", launcher_text=launcher_text,
                                    stdout_path=str(tmp_path / "b0.out"), stderr_path=str(tmp_path / "b0.err"),
                                    tasks_per_node=1)
    lines = script.splitlines()
    assert "#PBS -l select=2:ncpus=64:ngpus=4" in lines
    assert "#PBS -l walltime=01:00:00" in lines
    assert "#PBS -A MYPROJECT" in lines and "#PBS -q prod" in lines
    assert "#PBS -l filesystems=home:eagle" in lines
    assert "source /lus/venv/bin/activate" in lines
    # Every directive comes before the first command, or qsub would ignore it.
    first_command = next(i for i, line in enumerate(lines[1:], 1) if line and not line.startswith("#"))
    assert all(not line.startswith("#PBS") for line in lines[first_command:])
    (mpiexec,) = [line for line in lines if line.startswith("mpiexec")]
    assert "-n 2" in mpiexec and "-ppn 1" in mpiexec
    assert "--cpu-bind none" in mpiexec and "--depth=64 --ppn 1" in mpiexec
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_local_stand_in_keeps_the_polaris_executor_settings(polaris: ModuleType) -> None:
    (ex,) = polaris.local_config().executors
    (real,) = polaris.polaris_config(account="A").executors
    assert isinstance(ex.provider, LocalProvider)
    assert ex.available_accelerators == real.available_accelerators
    for name in ("label", "max_workers_per_node", "prefetch_capacity", "heartbeat_period", "heartbeat_threshold"):
        assert getattr(ex, name) == getattr(real, name), name
    assert ex.address == "127.0.0.1"
