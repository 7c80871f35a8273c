"""``htex-ref status RUN_DIR``: what an executor's run is doing, or did, read from its monitoring database.

The database (``htex_ref.monitoring``) is written every quarter second while the executor runs and stays
behind it when it ends, so the same command serves a running executor and a finished run: blocks and
their states, worker pools (busy, idle, draining, held; the last heartbeat), workers busy and idle,
the queue by priority, outstanding tasks against ``max_outstanding``, and task rates. ``--task ID``
explains where one task is and, if it is not running, why. ``--watch`` redraws every two seconds.

Everything here reads; the functions that decide what to say (``collect``, ``explain``) take an open
connection and ``now``, so tests feed them databases of their own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from htex_ref.monitoring import DB_NAME

LIVE_STATES = ("SUBMITTED", "PENDING", "RUNNING")
#: A snapshot older than this many seconds means the executor is no longer writing.
STALE_AFTER = 5.0


def find_databases(path: str | os.PathLike[str]) -> list[Path]:
    """The monitoring databases of a run: ``path`` itself, the one in it, or every one below it."""
    p = Path(path)
    if p.is_file():
        return [p]
    if (p / DB_NAME).is_file():
        return [p / DB_NAME]
    return sorted(p.glob(f"**/{DB_NAME}"))


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    db.row_factory = sqlite3.Row
    return db


def _run_info(db: sqlite3.Connection) -> dict[str, Any]:
    info = {row["key"]: row["value"] for row in db.execute("SELECT key, value FROM run")}
    settings = json.loads(info.get("settings", "{}"))
    return {"label": info.get("label", "?"), "started": float(info.get("started", "nan")),
            "ended": float(info["ended"]) if "ended" in info else None, "pid": int(info.get("pid", "0")),
            "settings": settings}


@dataclass
class Status:
    label: str
    running: bool
    started: float
    ended: float | None
    blocks: dict[str, tuple[str | None, str, float]] = field(default_factory=dict)  # id -> (job, state, since)
    managers: list[dict[str, Any]] = field(default_factory=list)
    workers: int = 0
    busy: int = 0
    pending: dict[str, int] = field(default_factory=dict)
    in_flight: int | None = None
    submitted: int = 0
    resolved: int = 0
    outstanding: int = 0
    max_outstanding: int | None = None
    rate_10s: float = 0.0
    rate_60s: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)


def collect(db: sqlite3.Connection, now: float) -> Status:
    info = _run_info(db)
    snap = db.execute("SELECT * FROM snapshot WHERE managers IS NOT NULL ORDER BY t DESC LIMIT 1").fetchone()
    running = info["ended"] is None and snap is not None and now - snap["t"] < STALE_AFTER
    st = Status(info["label"], running, info["started"], info["ended"],
                max_outstanding=info["settings"].get("max_outstanding"))
    for row in db.execute("SELECT block_id, job_id, state, t FROM block ORDER BY t"):
        st.blocks[row["block_id"]] = (row["job_id"], row["state"], row["t"])
    if running and snap is not None:
        st.managers = json.loads(snap["managers"])
        st.pending = json.loads(snap["pending"])
        st.in_flight = snap["in_flight"]
        for m in st.managers:
            st.workers += m["worker_count"]
            st.busy += min(m["tasks"], m["worker_count"])
    st.submitted = db.execute("SELECT COUNT(*) FROM task").fetchone()[0]
    st.resolved = db.execute("SELECT COUNT(*) FROM task_end").fetchone()[0]
    st.outstanding = st.submitted - st.resolved
    st.outcomes = {r[0]: r[1] for r in db.execute("SELECT outcome, COUNT(*) FROM task_end GROUP BY outcome")}
    end = now if running else (info["ended"] or now)
    for span, name in ((10.0, "rate_10s"), (60.0, "rate_60s")):
        n = db.execute("SELECT COUNT(*) FROM task_end WHERE t > ?", (end - span,)).fetchone()[0]
        setattr(st, name, n / span)
    return st


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def format_status(st: Status, now: float) -> str:
    when = "running" if st.running else (
        f"ended {_age(now - st.ended)} ago" if st.ended else "not running (it stopped without closing its database)")
    lines = [f"executor {st.label}: {when}; started {_age(now - st.started)} ago"]
    lines.append(f"tasks: {st.submitted} submitted, {st.resolved} resolved "
                 f"({', '.join(f'{k} {v}' for k, v in sorted(st.outcomes.items())) or 'none yet'}), "
                 f"{st.outstanding} outstanding" + (f" of max_outstanding {st.max_outstanding}"
                                                    if st.max_outstanding else ""))
    lines.append(f"rate: {st.rate_10s:.1f} tasks/s over the last 10 s, {st.rate_60s:.1f} over the last minute")
    if st.running:
        queued = sum(st.pending.values())
        by_priority = ", ".join(f"priority {p}: {n}" for p, n in sorted(st.pending.items()))
        lines.append(f"queue at the interchange: {queued}" + (f" ({by_priority})" if queued else "")
                     + f"; held by pools: {st.in_flight}")
        lines.append(f"workers: {st.workers} ({st.busy} busy, {st.workers - st.busy} idle)")
    lines.append(f"blocks: {len(st.blocks)}")
    for block, (job, state, since) in sorted(st.blocks.items(), key=lambda kv: _block_key(kv[0])):
        lines.append(f"  block {block}: job {job}, {state} for {_age(now - since)}")
    if st.running:
        lines.append(f"worker pools: {len(st.managers)}")
        for m in st.managers:
            state = ("held" if not m["active"] else "draining" if m["draining"] else
                     "busy" if m["tasks"] else "idle")
            lines.append(f"  {m['manager']} (block {m['block_id']}, {m['hostname']}): {state}, "
                         f"{m['tasks']} tasks on {m['worker_count']} workers, last heartbeat "
                         f"{m['last_heartbeat_age']:.1f} s ago")
    return "\n".join(lines)


def _block_key(block: str) -> tuple[int, str]:
    return (int(block), "") if block.isdigit() else (math.inf, block)  # type: ignore[return-value]


def explain(db: sqlite3.Connection, task_id: int, now: float) -> str:
    """Where task ``task_id`` is, and why it is not running when it is not."""
    task = db.execute("SELECT * FROM task WHERE task_id = ?", (task_id,)).fetchone()
    if task is None:
        return f"task {task_id}: no such task was submitted in this run"
    end = db.execute("SELECT * FROM task_end WHERE task_id = ?", (task_id,)).fetchone()
    runs = db.execute("SELECT * FROM task_run WHERE task_id = ? ORDER BY start", (task_id,)).fetchall()
    dispatches = db.execute("SELECT * FROM dispatch WHERE task_id = ? ORDER BY t", (task_id,)).fetchall()
    attempts = db.execute("SELECT * FROM attempt WHERE task_id = ? ORDER BY number", (task_id,)).fetchall()
    head = f"task {task_id}: submitted {_age(now - task['submitted'])} ago"
    if task["priority"] is not None and math.isfinite(task["priority"]):
        head += f" with priority {task['priority']:g}"
    lines = [head]
    for a in attempts:
        lines.append(f"  attempt {a['number']}: {a['outcome']} ({a['place']} on {a['host']}): {a['detail']}")
    if end is not None:
        where = ""
        if runs:
            r = runs[-1]
            where = f" on worker {r['worker']} of pool {r['manager']} (ran {r['end'] - r['start']:.3f} s)"
        elif dispatches:
            # A pool killed outright takes its last quarter second of run records with it.
            where = f" on worker pool {dispatches[-1]['manager']} (no record of which worker)"
        verdict = "done" if end["outcome"] == "OK" else f"failed: {end['outcome']}" + (
            f" ({end['exception']})" if end["exception"] else "")
        lines.append(f"  {verdict}{where}, {_age(now - end['t'])} ago")
        return "\n".join(lines)
    info = _run_info(db)
    snap = db.execute("SELECT * FROM snapshot WHERE managers IS NOT NULL ORDER BY t DESC LIMIT 1").fetchone()
    running = info["ended"] is None and snap is not None and now - snap["t"] < STALE_AFTER
    if not running:
        lines.append("  never resolved: the executor stopped (or stopped writing) before it did")
        return "\n".join(lines)
    if dispatches:
        d = dispatches[-1]
        lines.append(f"  handed to worker pool {d['manager']} {_age(now - d['t'])} ago: running there, or queued "
                     "there behind its other tasks")
        return "\n".join(lines)
    lines.extend("  " + r for r in _why_queued(db, task, snap, info))
    return "\n".join(lines)


def _why_queued(db: sqlite3.Connection, task: sqlite3.Row, snap: sqlite3.Row, info: dict[str, Any]) -> list[str]:
    priority = task["priority"] if task["priority"] is not None else math.inf
    # One pass over each table (the dispatch view unpacks batches: no index to look a task up in).
    gone = {r[0] for r in db.execute("SELECT task_id FROM dispatch")}
    gone.update(r[0] for r in db.execute("SELECT task_id FROM task_end"))
    higher = same = 0
    for tid, p in db.execute("SELECT task_id, priority FROM task"):
        if tid in gone:
            continue
        p = math.inf if p is None else p
        if p < priority:
            higher += 1
        elif p == priority and tid < task["task_id"]:
            same += 1
    reasons = [f"queued at the interchange behind {higher + same} tasks ({higher} of higher priority, {same} "
               "submitted before it at its own)"]
    blocks = {r["block_id"]: r["state"] for r in db.execute("SELECT block_id, state FROM block ORDER BY t")}
    live = [b for b, s in blocks.items() if s in LIVE_STATES]
    managers = json.loads(snap["managers"])
    strategy = info["settings"].get("strategy")
    if not live:
        reasons.append("no block is running or pending" + (
            "; with strategy 'none' none will start: call scale_out()" if strategy == "none"
            else f"; the strategy ({strategy}) starts one at its next pass"))
    elif not managers:
        reasons.append(f"block(s) {', '.join(live)} are {', '.join(blocks[b] for b in live)}: no worker pool has "
                       "registered yet")
    else:
        usable = [m for m in managers if m["active"] and not m["draining"]]
        if not usable:
            reasons.append("every worker pool is held or draining: none takes new tasks")
        elif all(m["tasks"] >= m["worker_count"] for m in usable):
            reasons.append(f"every worker is busy ({sum(m['worker_count'] for m in usable)} workers in "
                           f"{len(usable)} pools)")
    return reasons


def main(argv: list[str] | None = None) -> int:
    """Show what a run is doing or did (from its monitoring database)."""
    p = argparse.ArgumentParser(prog="htex-ref status", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="the run directory, an executor's directory in it, or a monitoring.db")
    p.add_argument("--task", type=int, default=None, help="explain where this task is and why")
    p.add_argument("--watch", action="store_true", help="redraw every 2 s until the run ends (Ctrl-C stops)")
    p.add_argument("--label", default=None, help="only the executor with this label")
    args = p.parse_args(argv)
    paths = find_databases(args.run_dir)
    if args.label:
        paths = [q for q in paths if q.parent.name == args.label]
    if not paths:
        print(f"htex-ref status: no {DB_NAME} under {args.run_dir} (was the executor run with monitoring=True?)",
              file=sys.stderr)
        return 2
    try:
        while True:
            now = time.time()
            texts, running = [], False
            for path in paths:
                db = connect(path)
                try:
                    if args.task is not None:
                        texts.append(explain(db, args.task, now))
                    else:
                        st = collect(db, now)
                        running |= st.running
                        texts.append(format_status(st, now))
                finally:
                    db.close()
            if args.watch:
                print("\033[2J\033[H", end="")
            print("\n\n".join(texts), flush=True)
            if not args.watch or not running:
                return 0
            time.sleep(2.0)
    except KeyboardInterrupt:
        return 0
