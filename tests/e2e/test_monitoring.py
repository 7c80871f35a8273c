"""Monitoring on real runs: the database under load and faults, the hook, ``htex-ref status`` (and its
explanations) on a running executor and a finished run, the HTML report in a real headless Chromium, and
replaying a recorded run in simcluster."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from htex_ref import LocalProvider
from htex_ref.bench.soak import soak
from htex_ref.monitoring import TaskEvent
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

WAIT = 60


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "htex_ref.cli", *args], capture_output=True, text=True,
                          timeout=120)


def hold_until(path: str) -> str:
    deadline = time.time() + 60
    while not Path(path).exists() and time.time() < deadline:
        time.sleep(0.02)
    return path


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


def rows(path: str, query: str) -> list[Any]:
    db = sqlite3.connect(path)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


# ----------------------------------------------------------------------------------------- the store


def test_100k_tasks_with_lost_workers_and_a_lost_pool_are_each_recorded_once(tmp_path: Path) -> None:
    report = soak(tasks=100_000, kill_every=1.0, manager_kill_at=0.5, heartbeat_threshold=20,
                  run_dir=str(tmp_path / "soak"), timeout=600)
    print("\n" + report.text())
    # The soak's verdict includes the database: one row per task submitted, one result per task, and the
    # outcomes it recorded equal to what the futures said.
    assert report.ok, report.text()
    # (Every victim started and was killed, or the verdict above would say so.)
    assert report.monitored_tasks == report.monitored_ends == 100_000 + report.worker_kills
    assert report.monitored_outcomes.get("WORKER_LOST", 0) == report.worker_lost > 0
    assert report.monitored_outcomes.get("MANAGER_LOST", 0) == report.manager_lost > 0


def test_every_table_and_the_hook_see_each_task(make_executor: Any, tmp_path: Path) -> None:
    events: list[TaskEvent] = []
    ex = make_executor(max_workers_per_node=2, monitoring_interval=0.2, monitoring_hook=events.append)
    futures = [ex.submit(nap, 0.05) for _ in range(10)] + [ex.submit(fail, 1)]
    for f in futures[:-1]:
        assert f.result(WAIT) == 0.05
    with pytest.raises(ValueError):
        futures[-1].result(WAIT)
    time.sleep(0.6)  # a worker sample
    path = ex.monitoring_store.path
    ex.shutdown()
    summary = rows(path, "SELECT task_id, manager, worker, start, end, outcome, exception FROM task_summary")
    assert len(summary) == 11
    assert all(r[1] is not None and r[2] in (0, 1) and r[3] <= r[4] for r in summary)
    assert {r[5] for r in summary} == {"OK", "EXCEPTION"}
    assert [r[6] for r in summary if r[5] != "OK"] == ["ValueError"]
    assert [r[0] for r in rows(path, "SELECT event FROM manager ORDER BY t")] == ["registered", "gone"]
    states = [r[0] for r in rows(path, "SELECT state FROM block ORDER BY t")]
    assert states[0] == "SUBMITTED" and "RUNNING" in states and states[-1] in ("SCALED_IN", "CANCELLED")
    assert rows(path, "SELECT COUNT(*) FROM resource")[0][0] >= 2
    # The events of one task come from three processes, so the hook may see them out of order; their
    # times put them in order.
    by_task: dict[int, list[str]] = {}
    order = ["submitted", "dispatched", "started", "ran", "resolved"]
    for ev in sorted(events, key=lambda e: (e.t, order.index(e.kind))):
        by_task.setdefault(ev.task_id, []).append(ev.kind)
    assert all(kinds == order for kinds in by_task.values()), by_task
    assert len(by_task) == 11


def test_without_monitoring_there_is_no_database_and_status_says_so(make_executor: Any, tmp_path: Path) -> None:
    ex = make_executor(monitoring=False)
    assert ex.submit(nap, 0).result(WAIT) == 0
    assert ex.monitoring_store is None and not list(Path(ex.run_dir).rglob("monitoring.db"))
    out = cli("status", ex.run_dir)
    assert out.returncode == 2 and "monitoring=True" in out.stderr


# -------------------------------------------------------------------------------------------- status


def test_status_and_explain_on_a_running_executor_then_a_finished_run(make_executor: Any, tmp_path: Path) -> None:
    release = str(tmp_path / "release")
    ex = make_executor(max_workers_per_node=1, strategy="none")
    running = ex.submit(hold_until, release)
    assert wait_until(lambda: ex.connected_managers() and ex.connected_managers()[0]["tasks"] == 1, WAIT)
    low = [ex.submit(nap, 0, resource_specification={"priority": 5}) for _ in range(3)]
    high = ex.submit(nap, 0, resource_specification={"priority": 1})
    time.sleep(1.5)  # a snapshot and a flush
    out = cli("status", ex.run_dir)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "running" in text and "5 outstanding" in text
    assert "workers: 1 (1 busy, 0 idle)" in text and "queue at the interchange: 4" in text
    assert "block 0:" in text and "RUNNING" in text
    why = cli("status", ex.run_dir, "--task", str(low[2].task_id)).stdout
    assert "queued at the interchange behind 3 tasks (1 of higher priority, 2 submitted before it" in why
    assert "every worker is busy" in why
    assert "handed to worker pool" in cli("status", ex.run_dir, "--task", str(running.task_id)).stdout
    assert "no such task" in cli("status", ex.run_dir, "--task", "999").stdout
    # Held: nothing takes new tasks.
    manager = ex.connected_managers()[0]["manager"]
    assert ex.hold_manager(manager)
    time.sleep(1.5)
    assert "every worker pool is held or draining" in cli("status", ex.run_dir, "--task", str(high.task_id)).stdout
    # No block: scale in, and strategy 'none' starts nothing.
    Path(release).touch()
    assert running.result(WAIT) == release
    ex.scale_in(1)
    assert wait_until(lambda: not ex.connected_managers(), WAIT)
    time.sleep(1.5)
    why = cli("status", ex.run_dir, "--task", str(high.task_id)).stdout
    assert "no block is running or pending; with strategy 'none' none will start" in why
    ex.scale_out(1)
    for f in [*low, high]:
        assert f.result(WAIT) == 0
    ex.shutdown()
    done = cli("status", ex.run_dir).stdout
    assert "ended" in done and "5 submitted, 5 resolved (OK 5), 0 outstanding" in done
    assert "done on worker 0" in cli("status", ex.run_dir, "--task", str(high.task_id)).stdout


def test_a_block_whose_pool_has_not_registered_is_the_reason(make_executor: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ex = make_executor(provider=LocalProvider(worker_init=f"while [ ! -e {gate} ]; do sleep 0.1; done"),
                       strategy="none")
    fut = ex.submit(nap, 0)
    time.sleep(2.0)
    why = cli("status", ex.run_dir, "--task", str(fut.task_id)).stdout
    assert "no worker pool has registered yet" in why, why
    gate.touch()
    assert fut.result(WAIT) == 0


# -------------------------------------------------------------------------------------------- report


def test_the_report_renders_every_plot_in_headless_chromium(make_executor: Any, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium here (scripts/test.sh installs Debian's chromium package)")
    ex = make_executor(max_workers_per_node=2, monitoring_interval=0.2)
    futures = [ex.submit(nap, 0.02 * (i % 5)) for i in range(40)] + [ex.submit(fail, i) for i in range(3)]
    for f in futures:
        f.exception(WAIT)
    time.sleep(0.5)
    ex.shutdown()
    page = tmp_path / "report.html"
    out = cli("report", ex.run_dir, "-o", str(page))
    assert out.returncode == 0, out.stderr
    html = page.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
    shot = tmp_path / "report.png"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
              "--virtual-time-budget=3000"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1000,2800", page.as_uri()],
                   capture_output=True, text=True, timeout=120)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    assert 'data-plots="7"' in dom.stdout and 'data-plots-drawn="7"' in dom.stdout, dom.stdout[-2000:]
    assert "ValueError" in dom.stdout
    assert shot.exists() and shot.stat().st_size > 20_000


def test_the_in_page_check_catches_a_plot_that_did_not_draw(tmp_path: Path) -> None:
    """The browser-side check can fail: a plot whose marks are missing is not counted as drawn."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium here")
    from htex_ref.report import CHECK

    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><svg class="plot" data-marks="3" viewBox="0 0 10 10" width="10" '
                    'height="10"><rect class="mark" width="5" height="5"/></svg>'
                    f"<script>{CHECK}</script></body></html>")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=2000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert 'data-plots="1"' in dom.stdout and 'data-plots-drawn="0"' in dom.stdout


# -------------------------------------------------------------------------------------------- replay


def test_a_recorded_local_run_replays_in_simcluster(make_executor: Any, tmp_path: Path) -> None:
    ex = make_executor(max_workers_per_node=2, strategy="simple", strategy_period=0.5, max_idletime=2,
                       provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=2))
    futures = [ex.submit(nap, 0.3) for _ in range(24)]
    assert all(f.result(WAIT) == 0.3 for f in futures)
    ex.shutdown()
    out = tmp_path / "replay"
    run = subprocess.run([sys.executable, "-m", "simcluster", "--replay", ex.run_dir, "-o", str(out),
                          "--alt", "max_blocks=1", "--no-plots"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    import csv

    table = list(csv.DictReader((out / "runs.csv").open()))
    assert [r["label"] for r in table] == ["recorded", "replay", "max_blocks-1"]
    recorded, replayed, one_block = (float(r["makespan"]) for r in table)
    assert int(table[1]["done"]) == 24
    # The same work on the same workers: the replay's makespan is the recorded one's within a wide margin.
    assert abs(replayed - recorded) <= 0.5 * recorded, (recorded, replayed)
    assert one_block >= replayed * 0.9
    assert os.path.exists(out / "replay" / "tasks.csv")
