"""The simulation side of the validation against real Slurm: the timeline and its comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from simcluster.validate import TASKS, Timeline, compare, durations, main, sim_timeline


def test_block_seconds_and_comparison_by_hand() -> None:
    real = Timeline("slurm", 10.0, [(0.0, 1), (2.0, 3), (8.0, 1)])  # 1x2 + 3x6 + 1x2 = 22
    assert real.block_seconds() == 22.0 and real.blocks_at(5.0) == 3
    sim = Timeline("simcluster", 11.0, [(0.0, 1), (2.0, 3), (9.0, 0)])  # 1x2 + 3x7 = 23
    c = compare(real, sim)
    assert c["makespan_error"] == pytest.approx(0.1)
    assert c["block_seconds_error"] == pytest.approx(1 / 22)
    assert c["within_tolerance"] is True and c["peak_blocks_real"] == c["peak_blocks_sim"] == 3
    assert compare(real, Timeline("simcluster", 12.0, sim.samples))["within_tolerance"] is False
    assert Timeline.from_json(real.to_json()) == real


def test_sim_timeline_grows_with_the_measured_latency() -> None:
    assert len(durations()) == TASKS and all(1 <= d <= 2 for d in durations())
    fast, slow = sim_timeline(2.0), sim_timeline(12.0)
    # 300 tasks of 1.5 s on 3 nodes x 2 workers: about 75 s of work once the blocks registered.
    assert 75 < fast.makespan < 90
    assert slow.makespan == pytest.approx(fast.makespan + 10, abs=1.0)
    assert max(b for _, b in fast.samples) == 3


def test_cli_without_and_with_a_real_timeline(tmp_path: Path) -> None:
    assert main(["--latency", "3", "--out", str(tmp_path)]) == 0
    sim = Timeline.from_json((tmp_path / "sim.json").read_text())
    (tmp_path / "real.json").write_text(Timeline("slurm", sim.makespan * 1.05, sim.samples).to_json())
    assert main(["--latency", "3", "--out", str(tmp_path), "--real", str(tmp_path / "real.json")]) == 0
    assert (tmp_path / "validation.png").exists() and (tmp_path / "comparison.json").exists()
    (tmp_path / "real.json").write_text(Timeline("slurm", sim.makespan * 2, sim.samples).to_json())
    assert main(["--latency", "3", "--out", str(tmp_path), "--real", str(tmp_path / "real.json")]) == 1
