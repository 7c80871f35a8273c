"""The monitoring store on its own: records in, tables and views out; malformed reports dropped, never
breaking the views; block states kept only when they change; the hook sees each transition. And the
report's line thinning, and status on an empty run."""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path

from htex_ref.monitoring import MonitoringStore, TaskEvent
from htex_ref.report import MAX_POINTS, _thin, build, render
from htex_ref.status import collect, explain, format_status


def store(tmp_path: Path, hook: object = None) -> MonitoringStore:
    s = MonitoringStore(str(tmp_path / "monitoring.db"), "t", hook)  # type: ignore[arg-type]
    s.start({"strategy": "none", "max_outstanding": 10})
    return s


def test_records_become_rows_and_views(tmp_path: Path) -> None:
    events: list[TaskEvent] = []
    s = store(tmp_path, events.append)
    t = time.time()
    s.put_submit((1, t, math.inf, None))
    s.put_submit((2, t, 3.0, json.dumps({"priority": 3})))
    s.put(("ix", json.dumps({"dispatch": [[t + 1, "m1", [1, 2]]],
                              "managers": [["m1", "0", "h", 2, t, "registered", ""]]}).encode()))
    s.put(("pool", "m1", json.dumps({"host": "h", "t": t + 2, "workers": [[0, 11, 5.0, 1000]]}).encode(),
           json.dumps([[1, 0, t + 1.1, t + 1.5], [2, 1, t + 1.2, t + 1.9]]).encode()))
    s.put(("ends", t + 2, [1], [0.4], [(2, t + 2, "EXCEPTION", "ValueError", 0.7, 0)]))
    for state in ("SUBMITTED", "RUNNING", "RUNNING", "COMPLETED"):
        s.put(("block", "0", "j1", t, state, ""))
    s.close()
    db = sqlite3.connect(tmp_path / "monitoring.db")
    summary = db.execute("SELECT task_id, priority, manager, worker, outcome, exception FROM task_summary "
                         "ORDER BY task_id").fetchall()
    assert summary == [(1, None, "m1", 0, "OK", None), (2, 3.0, "m1", 1, "EXCEPTION", "ValueError")]
    assert [r[0] for r in db.execute("SELECT state FROM block ORDER BY t, rowid")] == ["SUBMITTED", "RUNNING",
                                                                                       "COMPLETED"]
    assert db.execute("SELECT worker, pid, cpu, rss FROM resource").fetchall() == [(0, 11, 5.0, 1000)]
    kinds = sorted((e.task_id, e.kind) for e in events)
    assert kinds == sorted([(i, k) for i in (1, 2) for k in ("submitted", "dispatched", "started", "ran",
                                                              "resolved")])


def test_malformed_reports_are_dropped_and_the_views_still_work(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.put_submit((1, time.time(), math.inf, None))
    s.put(("ix", b"{not json"))
    s.put(("pool", "m1", b"[]", b"[[1, 0, 1.0, 2.0]"))  # meta not an object, runs not JSON
    s.put(("pool", "m2", b"{}", b"[[1, 0, 1.0, 2.0"))  # runs not JSON: not stored
    s.close()
    db = sqlite3.connect(tmp_path / "monitoring.db")
    assert db.execute("SELECT COUNT(*) FROM run_batch").fetchone()[0] == 0
    assert db.execute("SELECT task_id, manager FROM task_summary").fetchall() == [(1, None)]


def test_status_and_explain_of_a_run_that_stopped_writing(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.put_submit((1, time.time() - 30, math.inf, None))
    s.close()
    db = sqlite3.connect(f"file:{tmp_path / 'monitoring.db'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    st = collect(db, time.time())
    assert not st.running and st.outstanding == 1
    assert "ended" in format_status(st, time.time())
    assert "never resolved" in explain(db, 1, time.time())


def test_the_report_of_an_empty_run_says_nothing_was_recorded(tmp_path: Path) -> None:
    store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "monitoring.db")
    db.row_factory = sqlite3.Row
    page = render(build(db))
    assert page.count('class="plot"') == 7 and page.count("nothing recorded") == 7 and "No task failed" in page


def test_thinning_keeps_each_bins_extremes() -> None:
    points = [(i * 0.001, float(i % 97)) for i in range(100_000)]
    thin = _thin(points)
    assert len(thin) <= MAX_POINTS + 2
    assert max(y for _, y in thin) == 96.0 and min(y for _, y in thin) == 0.0
    assert [x for x, _ in thin] == sorted(x for x, _ in thin)
