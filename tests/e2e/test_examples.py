"""The examples in examples/ run on this machine and print what they should (each in its own directory)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from htex_ref.core.affinity import plan_accelerators
from htex_ref.worker_pool import physical_gpus
from tests.conftest import processes_mentioning, wait_until

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, cwd: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert wait_until(lambda: not processes_mentioning(str(cwd)), 10), "the example left processes behind"
    return proc.stdout


def test_getting_started(tmp_path: Path) -> None:
    out = run_example("0_getting_started.py", tmp_path)
    assert out.splitlines() == ["Hello World (Python)", "Hello World (Bash)"]
    assert (tmp_path / "hello-stdout").read_text() == "Hello World (Bash)\n"
    # Its run directory (logs, job scripts) went under the working directory.
    assert list((tmp_path / "runinfo").glob("*/htex_local/interchange.log"))


def test_parallel_workflow(tmp_path: Path) -> None:
    out = run_example("1_parallel_workflow.py", tmp_path, "--tasks", "6", "--sleep", "0.2")
    lines = out.splitlines()
    tasks = [re.fullmatch(r"Hello task (\d+) from worker process (\d+)", line) for line in lines[:-1]]
    assert [int(m.group(1)) for m in tasks if m] == list(range(6))
    own_pid = re.search(r"this process is (\d+)", lines[-1])
    assert own_pid is not None
    assert own_pid.group(1) not in {m.group(2) for m in tasks if m}


def test_sequential_workflow(tmp_path: Path) -> None:
    out = run_example("2_sequential_workflow.py", tmp_path, "--steps", "4")
    m = re.search(r"start (\d+), after adding 1\.\.4: (\d+)\ndoubled by bash: (\d+)", out)
    assert m, out
    start, total, doubled = map(int, m.groups())
    assert total == start + 1 + 2 + 3 + 4
    assert doubled == 2 * total


def test_dynamic_workflow(tmp_path: Path) -> None:
    out = run_example("3_dynamic_workflow.py", tmp_path, "--n", "12")
    got = [int(v) for v in re.findall(r"fibonacci\(\d+\) = (\d+)", out)]
    fib = [0, 1]
    while len(fib) < 13:
        fib.append(fib[-1] + fib[-2])
    assert got == fib


def test_hello_polaris_local_gives_each_task_its_own_gpu(tmp_path: Path) -> None:
    run_example("4_hello_polaris.py", tmp_path, "--local")
    seen = []
    for i in range(4):
        text = (tmp_path / "output" / f"hello_{i}.stdout").read_text()
        m = re.search(r"CUDA_VISIBLE_DEVICES=(\S+)", text)
        assert m, text
        seen.append(m.group(1))
    # The four tasks ran at once, one per worker, and each worker has its own entry of the fake list. On a
    # node with fewer real GPUs than entries the pool shares them out (MPS placement): expect its plan.
    expected = sorted(plan_accelerators(["0", "1", "2", "3"], 4, physical_gpus()))
    assert sorted(seen) == expected


def test_polaris_config_needs_an_account(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLES / "4_hello_polaris.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "give --account (on Polaris) or --local" in proc.stderr


@pytest.mark.skipif(shutil.which("mpiexec") is None and os.environ.get("CI") != "true",
                    reason="needs MPICH's mpiexec (scripts/test.sh installs it as root)")
def test_mpi_ensemble_runs_real_ranks_on_the_nodes_each_task_got(tmp_path: Path) -> None:
    out = run_example("5_mpi_ensemble.py", tmp_path)
    runs = re.split(r"^(?=\{)", out, flags=re.M)
    got = {}
    for run in filter(None, runs):
        head, *lines = run.strip().splitlines()
        got[head.rsplit(": ", 1)[0]] = [ln.split() for ln in lines]
    # mpiexec -n R -ppn P -hosts localhost[,127.0.0.1]: ranks in order, P per node, on the nodes given.
    assert [(r[1], r[3], r[5]) for r in got["{'num_nodes': 1, 'ranks_per_node': 2}"]] == [
        ("0", "2", "localhost"), ("1", "2", "localhost")]
    assert [(r[1], r[3], r[5]) for r in got["{'num_nodes': 2, 'ranks_per_node': 1}"]] == [
        ("0", "2", "localhost"), ("1", "2", "127.0.0.1")]
    assert [(r[1], r[5]) for r in got["{'num_nodes': 2, 'num_ranks': 4}"]] == [
        ("0", "localhost"), ("1", "localhost"), ("2", "127.0.0.1"), ("3", "127.0.0.1")]
