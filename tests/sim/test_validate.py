"""The validation against real Slurm: timelines, their comparison, the simulated side, and the real side's
parts that run without a Slurm cluster (the whole real run is ``nox -s sim_validate``)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from clusters.info import ClusterInfo
from htex_ref import LocalProvider
from simcluster import validate_real
from simcluster.validate import (
    LINGER,
    LOW,
    REAL_SETTINGS,
    TASKS,
    TOLERANCE,
    WAVES,
    Timeline,
    compare,
    curve_l1,
    durations,
    live_blocks,
    main,
    real_timeline,
    schedule,
    sim_timeline,
    validation_scenario,
)
from simcluster.workload import build_tasks


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
    assert Path(ex.settings.run_dir).parent == tmp_path / "shared" / "runs"
    p = ex.provider
    assert p.partition == "debug" and type(p.launcher).__name__ == "SrunLauncher"
    assert {k: getattr(p, k) for k in REAL_SETTINGS["provider"]} == REAL_SETTINGS["provider"]


def test_curve_l1_of_synthetic_timelines() -> None:
    real = Timeline("slurm", 8.0, [(0.0, 0), (1.0, 3), (10.0, 0)], until=10.0)  # 27 block-seconds
    assert curve_l1(real, real) == 0.0
    # The same curve one second later: 3 blocks differ for 1 s at each edge.
    late = Timeline("simcluster", 9.0, [(0.0, 0), (2.0, 3), (11.0, 0)], until=11.0)
    assert curve_l1(real, late) == pytest.approx(6.0) == pytest.approx(curve_l1(late, real))
    # Each curve is 0 after its own end, and samples past the end do not count.
    short = Timeline("simcluster", 4.0, [(0.0, 0), (1.0, 3), (12.0, 0)], until=5.0)
    assert short.steps() == [(0.0, 0), (1.0, 3), (5.0, 0)]
    assert curve_l1(real, short) == pytest.approx(15.0)
    # One block more for 2 s in the middle, then the same.
    bump = Timeline("simcluster", 8.0, [(0.0, 0), (1.0, 3), (4.0, 4), (6.0, 3), (10.0, 0)], until=10.0)
    assert curve_l1(real, bump) == pytest.approx(2.0)
    c = compare(real, late)
    assert c["curve_l1"] == pytest.approx(6.0) and c["curve_error"] == pytest.approx(6 / 27)
    assert c["curve_l1_per_second"] == pytest.approx(6 / 11)


def test_compare_fails_on_the_curve_alone() -> None:
    # Same makespan, block-seconds and submissions; the blocks are up at different times.
    real = Timeline("slurm", 30.0, [(0.0, 0), (10.0, 3), (20.0, 0)], until=30.0, submissions=3)
    sim = Timeline("simcluster", 30.0, [(0.0, 0), (12.0, 3), (22.0, 0)], until=30.0, submissions=3)
    c = compare(real, sim)
    assert c["makespan_error"] == c["block_seconds_error"] == c["submissions_error"] == 0.0
    assert c["curve_error"] == pytest.approx(12 / 30) and c["within_tolerance"] is False
    near = Timeline("simcluster", 30.0, [(0.0, 0), (10.5, 3), (20.5, 0)], until=30.0, submissions=3)
    assert compare(real, near)["curve_error"] == pytest.approx(3 / 30) and compare(real, near)["within_tolerance"]


def test_compare_counts_block_submissions() -> None:
    real = Timeline("slurm", 30.0, [(0.0, 0), (10.0, 3), (20.0, 0)], until=30.0, submissions=11)
    same = Timeline("simcluster", 30.0, real.samples, until=30.0, submissions=10)  # 9.1%: within
    fewer = Timeline("simcluster", 30.0, real.samples, until=30.0, submissions=9)  # 18%: not
    assert compare(real, same)["submissions_error"] == pytest.approx(1 / 11) and compare(real, same)["within_tolerance"]
    assert compare(real, fewer)["submissions_error"] == pytest.approx(2 / 11)
    assert compare(real, fewer)["within_tolerance"] is False
    # A timeline written before submissions were recorded: not compared, and read back as unknown.
    old = json.dumps({"source": "slurm", "makespan": 30.0, "samples": [[0.0, 0], [10.0, 3], [20.0, 0]],
                      "until": 30.0})
    c = compare(Timeline.from_json(old), fewer)
    assert c["submissions_real"] is None and c["submissions_error"] is None and c["within_tolerance"] is True
    assert Timeline.from_json(fewer.to_json()) == fewer


def test_the_waves_schedule_is_what_the_simulation_submits() -> None:
    waves = schedule("waves")
    assert [(t, len(d)) for t, d in waves] == list(WAVES)
    plan = build_tasks(validation_scenario(0.0, case="waves").workload, 1)
    assert [d for _, ds in waves for d in ds] == list(plan.duration)
    assert schedule("bag") == [(0.0, durations())]
    with pytest.raises(ValueError, match="unknown validation case"):
        schedule("nope")


def test_sim_waves_scale_out_and_in_at_every_wave() -> None:
    tl = sim_timeline(1.0, "waves")
    per_block = REAL_SETTINGS["provider"]["nodes_per_block"] * REAL_SETTINGS["executor"]["max_workers_per_node"]
    max_blocks = REAL_SETTINGS["provider"]["max_blocks"]
    want = [min(max_blocks, math.ceil(n / per_block)) for _, n in WAVES]
    assert tl.submissions == sum(want)
    period = REAL_SETTINGS["executor"]["strategy_period"]
    for (start, _), (following, _), blocks in zip(WAVES, WAVES[1:], want, strict=False):
        # Every wave gets its blocks within a strategy period, and all of them are gone before the next.
        assert tl.blocks_at(start + period) == blocks
        assert tl.blocks_at(following - 0.01) == 0
    assert tl.blocks_at(WAVES[-1][0] + period) == want[-1] and tl.makespan > WAVES[-1][0]
    assert tl.last_block_gone() is not None and tl.blocks_at(tl.end) == 0
    # Each wave's last task ends after it came, once its blocks had started, and before the next came.
    assert tl.wave_ends is not None and len(tl.wave_ends) == len(WAVES) and tl.wave_ends[-1] == tl.makespan
    for (start, _), end, (following, _) in zip(WAVES, tl.wave_ends, [*WAVES[1:], (math.inf, 0)], strict=True):
        assert start + period + 1.0 + LOW < end < following


def test_load_gate_waits_for_a_quiet_machine_within_its_budget() -> None:
    clock = [0.0]
    loads = iter([3.0, 2.0, 1.2, 2.5, 2.5, 2.5, 2.5])

    def sleep(s: float) -> None:
        clock[0] += s

    gate = validate_real.LoadGate(1.5, budget=100.0, every=30.0, load=lambda: next(loads), sleep=sleep,
                                  clock=lambda: clock[0])
    assert gate.wait("first") == 1.2 and clock[0] == 60.0
    # 40 s of budget left: one check after 30 s, one after the last 10 s, then it goes on anyway.
    assert gate.wait("second") == 2.5 and clock[0] == 100.0 and gate.waited == 100.0
    assert gate.wait("third") == 2.5 and clock[0] == 100.0
    never = validate_real.LoadGate(0.0, load=lambda: 9.0, sleep=sleep, clock=lambda: clock[0])
    assert never.wait("x") == 9.0 and clock[0] == 100.0


def test_live_blocks_of_a_batch_system_provider_come_from_its_own_record(tmp_path: Path) -> None:
    from htex_ref.providers.base import JobState, JobStatus
    from htex_ref.providers.cluster import ClusterJob
    from htex_ref.providers.slurm import SlurmProvider

    provider = SlurmProvider(partition="debug")
    for job_id, state in (("1", JobState.PENDING), ("2", JobState.RUNNING), ("3", JobState.CANCELLED),
                          ("4", JobState.COMPLETED), ("5", JobState.RUNNING)):
        provider.jobs[job_id] = ClusterJob(job_id, f"b{job_id}", 0.0, "s", "o", "e", "l", JobStatus(state))

    class Executor:
        def __init__(self) -> None:
            self.provider = provider

        def status(self) -> dict[str, JobStatus]:
            raise AssertionError("must not ask the batch system")

    assert live_blocks(Executor()) == 3


def test_cli_for_the_waves_case(tmp_path: Path) -> None:
    assert main(["--latency", "1", "--case", "waves", "--out", str(tmp_path)]) == 0
    sim = Timeline.from_json((tmp_path / "waves-sim.json").read_text())
    real = Timeline("slurm", sim.makespan, [(t + 0.3, b) for t, b in sim.samples], sim.until, sim.submissions)
    (tmp_path / "real.json").write_text(real.to_json())
    assert main(["--latency", "1", "--case", "waves", "--out", str(tmp_path), "--real",
                 str(tmp_path / "real.json")]) == 0
    c = json.loads((tmp_path / "waves-comparison.json").read_text())
    assert c["submissions_error"] == 0.0 and 0 < c["curve_error"] < TOLERANCE
    assert (tmp_path / "waves-validation.png").exists() and not (tmp_path / "sim.json").exists()


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


@pytest.mark.e2e
def test_real_timeline_submits_waves_at_their_offsets(make_executor: Any) -> None:
    ex = make_executor(strategy="htex_auto_scale", strategy_period=0.2, max_idletime=0.5, max_workers_per_node=2,
                       prefetch_capacity=0, provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=2))
    t0 = time.monotonic()
    # The second wave comes long after the first one's blocks can have been scaled in.
    tl = real_timeline(ex, every=0.1, timeout=60, schedule=[(0.0, [0.2] * 4), (4.0, [0.2] * 2)])
    assert tl.makespan >= 4.0 and time.monotonic() - t0 >= tl.makespan
    assert tl.submissions is not None and tl.submissions >= 2
    ups = [t for (_, a), (t, b) in zip(tl.samples, tl.samples[1:], strict=False) if a == 0 and b > 0]
    assert len(ups) >= 2 and ups[-1] >= 4.0
    assert tl.samples[-1][1] == 0
    assert tl.wave_ends is not None and 0.2 <= tl.wave_ends[0] < 4.0 <= tl.wave_ends[1] <= tl.makespan


def test_real_timeline_raises_what_a_wave_failed_with() -> None:
    class Boom(Exception):
        pass

    class Refusing:
        provider = None

        def __init__(self) -> None:
            self.calls = 0

        def submit(self, fn: Any, *args: Any) -> Any:
            self.calls += 1
            raise Boom("no")

        def status(self) -> dict[str, Any]:
            return {}

    ex = Refusing()
    with pytest.raises(Boom):
        real_timeline(ex, every=0.05, timeout=10, schedule=[(0.0, [0.1]), (0.1, [0.1])])
    assert ex.calls == 1
