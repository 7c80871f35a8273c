"""The README's demo command and the benchmark command, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import processes_mentioning, wait_until

pytestmark = pytest.mark.e2e


def test_demo_runs_and_shows_results_errors_and_workers(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "htex_ref", "demo"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "square(7) = 49" in out.stdout
    assert "caught ValueError: cannot handle 3" in out.stdout and "remote traceback" in out.stdout
    assert "2 distinct worker(s)" in out.stdout
    assert (tmp_path / "runinfo").is_dir()  # the default run directory, under the working directory
    assert wait_until(lambda: not processes_mentioning(str(tmp_path)), 10)


def test_bench_measures_every_figure(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    out = subprocess.run(
        [sys.executable, "-m", "htex_ref", "bench", "--rounds", "1", "--tasks", "500", "--json", str(report)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(report.read_text())
    (run,) = data["runs"]
    assert run["ok"] and run["impl"] == "htex_ref"
    result = run["result"]
    for key in ("noop_tasks_per_s", "rtt_median_ms", "rtt_p99_ms", "sleep10ms_efficiency", "mib_per_s",
                "start_to_first_s"):
        assert result[key] > 0, key
    assert 0 < result["sleep10ms_efficiency"] <= 1.05
    assert "no-op tasks/s" in out.stdout
