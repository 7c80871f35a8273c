"""A short soak: echo tasks with workers and a whole pool killed under them (``htex-ref bench --soak``
runs the long one), and a short memory run."""

from __future__ import annotations

from pathlib import Path

from htex_ref.bench.soak import memory, soak
from tests.conftest import processes_mentioning


def test_soak_with_worker_pool_and_interchange_kills_loses_nothing(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "soak")
    report = soak(tasks=4000, kill_every=0.4, manager_kill_at=0.4, pause=0.004, heartbeat_threshold=20,
                  run_dir=run_dir, timeout=240, interchange_kills=2, pauses=1)
    print("\n" + report.text())
    assert report.ok, report.text()
    assert report.unresolved == 0 and report.wrong_results == 0 and report.lost == 0
    assert report.worker_kills >= 2
    assert report.worker_lost + (report.manager_lost - report.manager_lost_echo) == report.worker_kills
    assert report.manager_kills == 1 and report.manager_lost >= 1
    # The pool's job ending is reported to the interchange, well before heartbeat_threshold (20 s).
    assert report.manager_detect_s is not None and report.manager_detect_s < 10
    # Two interchange kills, each replaced; a pool paused for 12 s (under the threshold) lost nothing.
    assert report.interchange_kills == 2 and len(report.restarts) == 2
    assert all(r["gap_s"] < 10 for r in report.restarts)
    assert report.pauses == 1 and report.doubled == 0
    assert not processes_mentioning(run_dir)


def test_memory_does_not_grow_with_tasks(tmp_path: Path) -> None:
    samples = memory(tasks=30_000, samples=3, run_dir=str(tmp_path / "mem"))
    assert [s.tasks_done for s in samples][-1] == 30_000
    first, last = samples[1], samples[-1]
    # Wide margin: a leak of a few hundred bytes per task would already show as several MiB here.
    assert last.executor_rss_mib - first.executor_rss_mib < 40
    assert last.interchange_rss_mib - first.interchange_rss_mib < 40
