"""The interchange under many managers: the fake-manager load generator against a real interchange."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from htex_ref.bench.fakemanagers import measure
from tests.conftest import processes_mentioning


def test_every_task_is_answered_exactly_once_by_hundreds_of_managers(tmp_path: Path) -> None:
    tasks = 6000
    point = measure(300, workers=4, tasks=tasks, processes=2, keep_ids=True, run_dir=str(tmp_path / "run"))
    ids = point.received_ids
    assert ids is not None
    # measure() itself checked that every one of the futures resolved to None.
    assert len(ids) == tasks, "a task was dispatched more than once, or not at all"
    assert len(set(ids)) == tasks
    assert point.dispatches_per_s > 0 and point.interchange_cpu_s_per_1000 >= 0
    assert not processes_mentioning(str(tmp_path))


def test_bench_sweep_prints_a_table(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    proc = subprocess.run(
        [sys.executable, "-m", "htex_ref", "bench", "--fake-managers", "1,20", "--workers-per-manager", "8",
         "--tasks", "2000", "--rounds", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| managers | workers each |" in proc.stdout
    assert "| 20 | 8 | 2000 |" in proc.stdout
    assert "20 managers vs 1:" in proc.stdout
    assert out.exists() and '"medians"' in out.read_text()
