"""The monitoring store: what happened to every task, block, worker pool and worker, in an SQLite file.

``MonitoringStore`` owns the database (``{run_dir}/{label}/monitoring.db``) and the one thread that
writes it (``htex-{label}-monitor``). Every other part only appends a record to its queue (a tuple: the
hot path pays for one ``deque.append``): the executor's submits and results, the link thread's
``monitor`` messages from the interchange (dispatches, pools registering, draining, held or lost,
and what each pool reports about its workers: which worker ran which task when, CPU and memory), and the
control thread's block states. The thread drains the queue every ``FLUSH_PERIOD`` seconds and writes
each kind of record with one ``executemany`` in one transaction, so the file is never more than that
behind, and nothing is dropped: the queue is unbounded and ``close`` writes what is left.

The schema is htex_ref's own, not Parsl's: Parsl's tables hang off its DataFlowKernel (workflow, try,
app names, dependencies), which a bare executor has none of; a task here is an executor task. The tables
are plain and documented in docs/monitoring.md, and ``task_summary`` is a view with one row per task.

A Python hook (``monitoring_hook``) gets every task transition as a ``TaskEvent``, on the writer thread.
A task's transitions come from three processes (the executor, the interchange, its worker pool), so the
hook may see them out of order; each carries the time it happened (epoch seconds, the clock of the host
where it happened).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("htex_ref.monitoring")

#: Seconds between writes of what was queued.
FLUSH_PERIOD = 0.25
#: The file name in the executor's directory of the run (``{run_dir}/{label}``).
DB_NAME = "monitoring.db"
_INF = float("inf")

SCHEMA = """
CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS submit_batch (tasks TEXT);
CREATE TABLE IF NOT EXISTS end_batch (t REAL, tasks TEXT);
CREATE TABLE IF NOT EXISTS dispatch_batch (t REAL, manager TEXT, task_ids TEXT);
CREATE TABLE IF NOT EXISTS run_batch (manager TEXT, host TEXT, runs TEXT);
CREATE TABLE IF NOT EXISTS task_end_row (task_id INTEGER PRIMARY KEY, t REAL, outcome TEXT, exception TEXT,
                                         run_time REAL, attempts INTEGER);
CREATE TABLE IF NOT EXISTS attempt (task_id INTEGER, number INTEGER, outcome TEXT, host TEXT, place TEXT,
                                    detail TEXT);
CREATE TABLE IF NOT EXISTS block (block_id TEXT, job_id TEXT, t REAL, state TEXT, detail TEXT);
CREATE TABLE IF NOT EXISTS manager (manager TEXT, block_id TEXT, host TEXT, workers INTEGER, t REAL, event TEXT,
                                    detail TEXT);
CREATE TABLE IF NOT EXISTS resource (t REAL, manager TEXT, worker INTEGER, pid INTEGER, cpu REAL, rss INTEGER);
CREATE TABLE IF NOT EXISTS snapshot (t REAL, pending TEXT, in_flight INTEGER, managers TEXT);
CREATE VIEW IF NOT EXISTS task AS
  SELECT json_extract(j.value, '$[0]') AS task_id, json_extract(j.value, '$[1]') AS submitted,
         json_extract(j.value, '$[2]') AS priority, json_extract(j.value, '$[3]') AS spec
  FROM submit_batch b, json_each(b.tasks) j;
CREATE VIEW IF NOT EXISTS task_end AS
  SELECT json_extract(j.value, '$[0]') AS task_id, b.t AS t, 'OK' AS outcome, NULL AS exception,
         json_extract(j.value, '$[1]') AS run_time, 0 AS attempts
  FROM end_batch b, json_each(b.tasks) j
  UNION ALL SELECT task_id, t, outcome, exception, run_time, attempts FROM task_end_row;
CREATE VIEW IF NOT EXISTS dispatch AS
  SELECT j.value AS task_id, b.t AS t, b.manager AS manager FROM dispatch_batch b, json_each(b.task_ids) j;
CREATE VIEW IF NOT EXISTS task_run AS
  SELECT json_extract(j.value, '$[0]') AS task_id, b.manager AS manager, json_extract(j.value, '$[1]') AS worker,
         json_extract(j.value, '$[2]') AS start, json_extract(j.value, '$[3]') AS end
  FROM run_batch b, json_each(b.runs) j;
CREATE VIEW IF NOT EXISTS task_summary AS
  WITH d AS (SELECT task_id, MAX(t) AS dispatched, manager FROM dispatch GROUP BY task_id),
       r AS (SELECT task_id, manager, worker, MAX(start) AS start, end FROM task_run GROUP BY task_id)
  SELECT t.task_id, t.submitted, t.priority, t.spec, d.dispatched, d.manager, r.worker, r.start, r.end,
         e.t AS resolved, e.outcome, e.exception, e.run_time, e.attempts
  FROM task t LEFT JOIN d ON d.task_id = t.task_id LEFT JOIN r ON r.task_id = t.task_id
  LEFT JOIN task_end e ON e.task_id = t.task_id;
"""


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One task transition, as the ``monitoring_hook`` gets it. ``kind``: ``submitted``, ``dispatched``
    (``manager``), ``started`` and ``ran`` (``manager``, ``worker``; from the pool when it reports the
    run), ``resolved`` (``outcome``, ``exception``)."""

    task_id: int
    kind: str
    t: float
    manager: str | None = None
    worker: int | None = None
    outcome: str | None = None
    exception: str | None = None


def db_path(logdir: str) -> str:
    return os.path.join(logdir, DB_NAME)


class MonitoringStore:
    """See the module docstring. ``put`` is the only method other threads call while it runs."""

    def __init__(self, path: str, label: str, hook: Callable[[TaskEvent], Any] | None = None) -> None:
        self.path = path
        self.label = label
        self.hook = hook
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        #: Bound for speed: the hot path calls ``put(record)``, and ``put_submit((id, t, priority, spec))``
        #: for each task (rows of the ``task`` table as they are).
        self.put = self._queue.append
        self._submits: collections.deque[tuple[Any, ...]] = collections.deque()
        self.put_submit = self._submits.append
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Held while writing: the thread, or ``close`` once the thread is done (or stuck).
        self._writing = threading.Lock()
        self._blocks: dict[str, tuple[str | None, str]] = {}
        self.written = 0
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def start(self, settings: dict[str, Any]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO run VALUES (?, ?)",
                            [("label", self.label), ("started", repr(time.time())), ("pid", str(os.getpid())),
                             ("settings", json.dumps(settings, default=str))])
        self._thread = threading.Thread(target=self._run, name=f"htex-{self.label}-monitor", daemon=True)
        self._thread.start()

    def set_run(self, key: str, value: Any) -> None:
        self.put(("run", key, value if isinstance(value, str) else json.dumps(value, default=str)))

    def close(self) -> None:
        """Write everything queued and close the file. Never raises and never waits long: a shutdown
        must not fail or hang because of monitoring (a stuck hook, a full disk are logged instead)."""
        if self._stop.is_set():
            return  # closed already
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        if not self._writing.acquire(timeout=5):
            logger.error("Monitoring: the writer of %s is stuck (in monitoring_hook?); the last records are "
                         "not written", self.path)
            return
        try:
            self.put(("run", "ended", repr(time.time())))
            self._flush()
            self.db.close()
        except Exception:
            logger.exception("Monitoring: closing %s failed", self.path)
        finally:
            self._writing.release()

    # ------------------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_PERIOD):
            with self._writing:
                try:
                    self._flush()
                except Exception:
                    logger.exception("Monitoring: writing %s failed", self.path)

    @staticmethod
    def _drain(q: collections.deque[Any]) -> list[Any]:
        out = []
        popleft = q.popleft
        try:
            while True:
                out.append(popleft())
        except IndexError:
            return out

    def _flush(self) -> None:
        submits = self._drain(self._submits)
        records = self._drain(self._queue)
        if not submits and not records:
            return
        rows: dict[str, list[tuple[Any, ...]]] = collections.defaultdict(list)
        ok_ends: list[tuple[Any, ...]] = []
        events: list[TaskEvent] | None = [] if self.hook is not None else None
        if events is not None:
            events.extend(TaskEvent(r[0], "submitted", r[1]) for r in submits)
        for rec in records:
            kind = rec[0]
            if kind == "ends":
                # (ends, time, ids of plain successes, their run times, other results as task_end rows)
                _, t, ids, run_times, others = rec
                if ids:
                    ok_ends.append((t, ids, run_times))
                rows["task_end_row"].extend(others)
                if events is not None:
                    events.extend(TaskEvent(i, "resolved", t, outcome="OK") for i in ids)
                    events.extend(TaskEvent(r[0], "resolved", r[1], outcome=r[2], exception=r[3]) for r in others)
            elif kind == "ix":
                self._interchange_message(rec[1], rows, events)
            elif kind == "pool":
                self._pool_report(rec[1], rec[2], rec[3], rows, events)
            elif kind == "block":
                _, block_id, job_id, t, state, detail = rec
                if self._blocks.get(block_id) != (job_id, state):
                    self._blocks[block_id] = (job_id, state)
                    rows["block"].append((block_id, job_id, t, state, detail))
            elif kind in ("attempt", "run"):
                rows[kind].append(rec[1:])
        db = self.db
        dumps = json.dumps
        db.execute("BEGIN")
        try:
            if submits:
                # One row for the whole batch: the views unpack it. Priorities without one (inf) are null.
                db.execute("INSERT INTO submit_batch VALUES (?)",
                           (dumps([r if r[2] != _INF else (r[0], r[1], None, r[3]) for r in submits]),))
            for t, ids, run_times in ok_ends:
                db.execute("INSERT INTO end_batch VALUES (?, ?)", (t, dumps(list(zip(ids, run_times, strict=True)))))
            for table, values in rows.items():
                if not values:
                    continue
                if table == "run_batch":
                    # A pool's report is stored as it came, if it is valid JSON (the views read it).
                    db.executemany("INSERT INTO run_batch SELECT ?, ?, ? WHERE json_valid(?)",
                                   [(m, h, r, r) for m, h, r in values])
                    continue
                marks = ",".join("?" * len(values[0]))
                verb = "INSERT OR REPLACE" if table in ("task_end_row", "run") else "INSERT"
                db.executemany(f"{verb} INTO {table} VALUES ({marks})", values)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.written += len(submits) + len(records)
        for ev in events or ():
            try:
                self.hook(ev)  # type: ignore[misc]
            except Exception:
                logger.exception("monitoring_hook raised on %s", ev)

    def _interchange_message(self, raw: bytes, rows: dict[str, list[tuple[Any, ...]]],
                             events: list[TaskEvent] | None) -> None:
        """A ``monitor`` message from the interchange (see ``htex_ref.interchange``): JSON with any of
        ``dispatch`` [[t, manager, [task ids]]], ``managers`` [[manager, block, host, workers, t, event,
        detail]], ``snapshot`` {t, pending, in_flight, managers}."""
        try:
            msg = json.loads(raw)
        except ValueError:
            logger.warning("Monitoring: dropped a malformed monitor message")
            return
        dumps = json.dumps
        for t, manager, ids in msg.get("dispatch", ()):
            rows["dispatch_batch"].append((t, manager, dumps(ids)))
            if events is not None:
                events.extend(TaskEvent(tid, "dispatched", t, manager=manager) for tid in ids)
        for m in msg.get("managers", ()):
            rows["manager"].append(tuple(m))
        snap = msg.get("snapshot")
        if snap is not None:
            rows["snapshot"].append((snap.get("t"), json.dumps(snap.get("pending", {})), snap.get("in_flight"),
                                     json.dumps(snap.get("managers", []))))

    def _pool_report(self, manager: str, meta_raw: bytes, runs: bytes, rows: dict[str, list[tuple[Any, ...]]],
                     events: list[TaskEvent] | None) -> None:
        """A worker pool's report, forwarded by the interchange as it came: ``meta`` JSON {host, t, workers:
        [[rank, pid, cpu, rss]]} and ``runs`` JSON [[task id, rank, start, end], ...]."""
        try:
            meta = json.loads(meta_raw)
            host, t = str(meta.get("host", "?")), float(meta.get("t", 0.0))
            samples = [(t, manager, int(w), int(pid), float(cpu), int(rss))
                       for w, pid, cpu, rss in meta.get("workers", ())]
        except (ValueError, TypeError, AttributeError):
            logger.warning("Monitoring: dropped a malformed report from pool %s", manager)
            return
        rows["resource"].extend(samples)
        if runs and runs != b"[]":
            text = runs.decode("utf-8", errors="replace")
            rows["run_batch"].append((manager, host, text))
            if events is not None:
                try:
                    for tid, worker, start, end in json.loads(text):
                        events.append(TaskEvent(tid, "started", start, manager=manager, worker=worker))
                        events.append(TaskEvent(tid, "ran", end, manager=manager, worker=worker))
                except (ValueError, TypeError):
                    pass
