"""The validation against real Slurm: timelines, their comparison, the simulated side, and the real side's
parts that run without a Slurm cluster (the whole real run is ``nox -s sim_validate``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from clusters.info import ClusterInfo
from htex_ref import LocalProvider
from simcluster import validate_real
from simcluster.validate import (
    LINGER,
    REAL_SETTINGS,
    TASKS,
    Timeline,
    compare,
    durations,
    main,
    real_timeline,
    sim_timeline,
)


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


def test_block_seconds_run_until_the_end_of_the_observation() -> None:
    # Last task at 10 s; two of three blocks go at 14 s, the last at 16 s: 3x12 + 1x2 = 38 block-seconds.
    tl = Timeline("slurm", 10.0, [(0.0, 0), (2.0, 3), (14.0, 1), (16.0, 0)], until=16.5)
    assert tl.end == 16.5 and tl.block_seconds() == 38.0
    assert tl.last_block_gone() == 6.0
    assert Timeline.from_json(tl.to_json()) == tl
    # A file from before the observation went on past the makespan: it ends at the makespan.
    old = json.dumps({"source": "slurm", "makespan": 10.0, "samples": [[0.0, 3]]})
    assert Timeline.from_json(old).block_seconds() == 30.0 and Timeline.from_json(old).last_block_gone() is None
    # Blocks live again after all went (a new block): not gone.
    assert Timeline("s", 10.0, [(0.0, 1), (12.0, 0), (13.0, 1)], until=14.0).last_block_gone() is None


def test_compare_fails_when_only_the_scale_in_differs() -> None:
    real = Timeline("slurm", 60.0, [(0.0, 0), (1.0, 3), (66.0, 0)], until=66.0)  # 195 block-seconds
    early = Timeline("simcluster", 60.0, [(0.0, 0), (1.0, 3), (61.0, 0)], until=61.0)  # 180: 7.7% less
    late = Timeline("simcluster", 60.0, [(0.0, 0), (1.0, 3), (90.0, 0)], until=90.0)  # 267: 37% more
    ok, bad = compare(real, early), compare(real, late)
    assert ok["makespan_error"] == bad["makespan_error"] == 0.0
    assert ok["block_seconds_error"] == pytest.approx(15 / 195) and ok["within_tolerance"] is True
    assert bad["block_seconds_error"] == pytest.approx(72 / 195) and bad["within_tolerance"] is False
    assert (ok["last_block_gone_real"], ok["last_block_gone_sim"], bad["last_block_gone_sim"]) == (6.0, 1.0, 30.0)


def test_sim_timeline_scales_in_after_the_last_task() -> None:
    tl = sim_timeline(2.0)
    idle = REAL_SETTINGS["executor"]["max_idletime"]
    period = REAL_SETTINGS["executor"]["strategy_period"]
    gone = tl.last_block_gone()
    assert gone is not None and idle <= gone <= idle + 2 * period
    assert tl.samples[0] == (0.0, 0) and tl.samples[-1][1] == 0 and tl.end == pytest.approx(tl.makespan + gone)


def test_the_real_side_builds_its_executor_from_the_cluster_info(tmp_path: Path) -> None:
    info = ClusterInfo(name="local", env={"SLURM_CONF": "/x/slurm.conf"}, address="10.88.0.1", nodes=["c1"],
                       cores_per_node=2, partition="debug", shared_dir=str(tmp_path / "shared"))
    info.write(tmp_path / "info.json")
    cluster = validate_real.Cluster.read(tmp_path / "info.json")
    ex = validate_real.make_executor(cluster, "t", strategy="none")
    assert ex.address == "10.88.0.1" and ex.encrypted and ex.strategy == "none"
    assert ex.max_idletime == REAL_SETTINGS["executor"]["max_idletime"]
    assert Path(ex._run_dir_arg).parent == tmp_path / "shared" / "runs"
    p = ex.provider
    assert p.partition == "debug" and type(p.launcher).__name__ == "SrunLauncher"
    assert {k: getattr(p, k) for k in REAL_SETTINGS["provider"]} == REAL_SETTINGS["provider"]


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.mark.e2e
def test_real_timeline_follows_a_real_executor_until_it_scaled_in(make_executor: Any) -> None:
    ex = make_executor(strategy="htex_auto_scale", strategy_period=0.2, max_idletime=1.0, max_workers_per_node=2,
                       prefetch_capacity=0, provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=2))
    tl = real_timeline(ex, [0.3] * 8, every=0.1, timeout=60)
    assert max(b for _, b in tl.samples) >= 1
    assert tl.samples[-1][1] == 0 and tl.end == tl.samples[-1][0]
    gone = tl.last_block_gone()
    assert gone is not None and 1.0 <= gone < LINGER
    assert 0 < tl.block_seconds() < 2 * tl.end
