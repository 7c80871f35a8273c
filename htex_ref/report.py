"""``htex-ref report RUN_DIR -o report.html``: one self-contained HTML page about a run, from its monitoring
database: a Gantt chart of tasks by worker, workers busy over time, the queue at the interchange over
time, blocks over time, a histogram of task run times, each worker's CPU and resident memory, and a table
of failures by cause.

The plots are SVG drawn here (no script library, no network): ``build`` turns the database into plot
data, ``render`` the data into the page. A small inline script checks, in the browser, that every plot
has drawn its marks, and records the count in ``<body data-plots-drawn=...>`` (the headless-Chromium
test reads it).
"""

from __future__ import annotations

import argparse
import html
import math
import sqlite3
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from htex_ref.status import connect, find_databases

WIDTH, HEIGHT, PAD_L, PAD_B, PAD_T, PAD_R = 880, 260, 64, 36, 14, 16
#: Most task runs the Gantt chart draws (the first ones; the page says so when there were more).
MAX_RECTS = 5000
PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e")
OUTCOME_COLOURS = {"OK": "#3ca951", "EXCEPTION": "#efb118", "WORKER_LOST": "#ff725c", "MANAGER_LOST": "#d62728",
                   "TIMEOUT": "#a463f2", "CANCELLED": "#9c9c9c", "MEMORY_EXCEEDED": "#9c6b4e", "REFUSED": "#6cc5b0"}


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    step: bool = False


@dataclass
class Plot:
    title: str
    kind: str  # "lines", "gantt", "bars"
    x_label: str
    y_label: str
    series: list[Series] = field(default_factory=list)
    #: gantt: (lane label, start, end, colour, tooltip)
    rects: list[tuple[str, float, float, str, str]] = field(default_factory=list)
    #: bars: (left, right, height)
    bars: list[tuple[float, float, float]] = field(default_factory=list)
    note: str = ""


@dataclass
class ReportData:
    label: str
    started: float
    summary: list[tuple[str, str]]
    plots: list[Plot]
    failures: list[tuple[str, str, int, str]]  # outcome, exception, count, example task ids


#: Most points a line is drawn with; longer series keep each bin's lowest and highest point.
MAX_POINTS = 2000


def _steps(events: list[tuple[float, int]], t0: float) -> list[tuple[float, float]]:
    """A step function from (time, +n/-n) changes, thinned to about ``MAX_POINTS`` points."""
    level, points = 0, [(0.0, 0.0)]
    for t, delta in sorted(events):
        points.append((t - t0, float(level)))
        level += delta
        points.append((t - t0, float(level)))
    return _thin(points)


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    bins = MAX_POINTS // 2
    lo, hi = points[0][0], points[-1][0]
    width = (hi - lo) / bins or 1.0
    out: list[tuple[float, float]] = []
    current: list[tuple[float, float]] = []
    edge = lo + width
    for p in points:
        if p[0] > edge and current:
            a, b = min(current, key=lambda q: q[1]), max(current, key=lambda q: q[1])
            out.extend(sorted({a, b}))
            current = []
            edge = lo + (int((p[0] - lo) / width) + 1) * width
        current.append(p)
    if current:
        a, b = min(current, key=lambda q: q[1]), max(current, key=lambda q: q[1])
        out.extend(sorted({a, b}))
    return out


def build(db: sqlite3.Connection) -> ReportData:
    info = {r["key"]: r["value"] for r in db.execute("SELECT key, value FROM run")}
    label = info.get("label", "?")
    t0 = float(info.get("started", "0"))
    # Each view read once and joined here: the views unpack batches and have no index to join on.
    submitted = {r[0]: r[1] for r in db.execute("SELECT task_id, submitted FROM task")}
    dispatched: dict[int, float] = {}
    for tid, t in db.execute("SELECT task_id, t FROM dispatch"):
        dispatched[tid] = max(t, dispatched.get(tid, t))
    end_rows = db.execute("SELECT task_id, t, outcome FROM task_end").fetchall()
    ends = {r[0]: r[2] for r in end_rows}
    resolved = {r[0]: r[1] for r in end_rows}
    runs = db.execute("SELECT * FROM task_run ORDER BY start").fetchall()
    plots: list[Plot] = []

    gantt = Plot("Tasks by worker", "gantt", "seconds since the executor started", "worker")
    for r in runs:
        outcome = ends.get(r["task_id"], "running")
        gantt.rects.append((f"{r['manager']}/{r['worker']}", r["start"] - t0, r["end"] - t0,
                            OUTCOME_COLOURS.get(outcome, "#999999"),
                            f"task {r['task_id']}: {outcome}, {r['end'] - r['start']:.3f} s"))
    if len(gantt.rects) > MAX_RECTS:
        gantt.note = f"the first {MAX_RECTS:,} of {len(gantt.rects):,} task runs"
        gantt.rects = gantt.rects[:MAX_RECTS]
    plots.append(gantt)

    busy = Plot("Workers busy", "lines", "seconds since the executor started", "workers")
    busy.series.append(Series("busy", _steps([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs], t0),
                              step=True))
    plots.append(busy)

    queue = Plot("Tasks waiting at the interchange", "lines", "seconds since the executor started", "tasks")
    changes = [(t, 1) for t in submitted.values()]
    changes += [(t, -1) for tid, t in dispatched.items() if tid in submitted]
    changes += [(t, -1) for tid, t in resolved.items() if tid not in dispatched and tid in submitted]
    queue.series.append(Series("queued", _steps(changes, t0), step=True))
    plots.append(queue)

    blocks = Plot("Blocks", "lines", "seconds since the executor started", "blocks")
    states = [(r["block_id"], r["t"], r["state"]) for r in db.execute("SELECT block_id, t, state FROM block")]
    # A block runs from the earlier of the provider saying so and its first pool registering (the
    # provider is polled, so its RUNNING can come seconds after the pool is already working).
    first_pool: dict[str, float] = {}
    for r in db.execute("SELECT block_id, t FROM manager WHERE event = 'registered'"):
        first_pool.setdefault(r["block_id"], r["t"])
        first_pool[r["block_id"]] = min(first_pool[r["block_id"]], r["t"])
    for block, t in first_pool.items():
        seen_running = [s for s in states if s[0] == block and s[2] == "RUNNING"]
        if not seen_running or seen_running[0][1] > t:
            states.append((block, t, "RUNNING"))
    states.sort(key=lambda s: s[1])
    last: dict[str, str] = {}
    running_changes: list[tuple[float, int]] = []
    pending_changes: list[tuple[float, int]] = []
    for block, t, state in states:
        before = last.get(block)
        if before == "RUNNING" and state in ("PENDING", "SUBMITTED"):
            continue  # a late poll of a block already running
        for name, target in (("RUNNING", running_changes), ("PENDING", pending_changes)):
            is_now = state == name or (name == "PENDING" and state == "SUBMITTED")
            was = before == name or (name == "PENDING" and before == "SUBMITTED")
            if is_now and not was:
                target.append((t, 1))
            elif was and not is_now:
                target.append((t, -1))
        last[block] = state
    blocks.series.append(Series("running", _steps(running_changes, t0), step=True))
    blocks.series.append(Series("pending", _steps(pending_changes, t0), step=True))
    plots.append(blocks)

    durations = [r["end"] - r["start"] for r in runs]
    hist = Plot("Task run times", "bars", "seconds", "tasks")
    if durations:
        lo, hi = min(durations), max(durations)
        n = 30
        width = (hi - lo) / n or 1e-3
        counts = Counter(min(n - 1, int((d - lo) / width)) for d in durations)
        hist.bars = [(lo + i * width, lo + (i + 1) * width, float(counts.get(i, 0))) for i in range(n)]
    plots.append(hist)

    samples = db.execute("SELECT * FROM resource ORDER BY t").fetchall()
    cpu = Plot("Worker CPU", "lines", "seconds since the executor started", "percent")
    rss = Plot("Worker resident memory", "lines", "seconds since the executor started", "MiB")
    by_worker: dict[str, list[Any]] = defaultdict(list)
    for s in samples:
        by_worker[f"{s['manager']}/{s['worker']}"].append(s)
    for name, rows in sorted(by_worker.items())[:len(PALETTE)]:
        cpu.series.append(Series(name, [(r["t"] - t0, r["cpu"]) for r in rows]))
        rss.series.append(Series(name, [(r["t"] - t0, r["rss"] / 2**20) for r in rows]))
    if len(by_worker) > len(PALETTE):
        cpu.note = rss.note = f"{len(PALETTE)} of {len(by_worker)} workers"
    plots += [cpu, rss]

    failures = []
    for row in db.execute("SELECT outcome, exception, COUNT(*) AS n, GROUP_CONCAT(task_id) AS ids FROM task_end "
                          "WHERE outcome != 'OK' GROUP BY outcome, exception ORDER BY n DESC"):
        ids = row["ids"].split(",")
        failures.append((row["outcome"], row["exception"] or "", row["n"],
                         ", ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")))
    done = sum(1 for o in ends.values() if o == "OK")
    last_end = max(resolved.values(), default=t0)
    summary = [("executor", label), ("started", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0))),
               ("tasks", f"{len(submitted)} submitted, {len(ends)} resolved, {done} succeeded"),
               ("span", f"{last_end - t0:.1f} s from start to the last result"),
               ("workers seen", str(len({(r['manager'], r['worker']) for r in runs}))),
               ("blocks", str(len(last)))]
    return ReportData(label, t0, summary, plots, failures)


# ------------------------------------------------------------------------------------------ drawing


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.2g}"


def _frame(plot: Plot, x_lo: float, x_hi: float, y_lo: float, y_hi: float, lanes: list[str] | None = None
           ) -> tuple[list[str], Any, Any]:
    inner_w, inner_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    if x_hi <= x_lo:
        x_hi = x_lo + 1
    if y_hi <= y_lo:
        y_hi = y_lo + 1

    def sx(x: float) -> float:
        return PAD_L + (x - x_lo) / (x_hi - x_lo) * inner_w

    def sy(y: float) -> float:
        return PAD_T + inner_h - (y - y_lo) / (y_hi - y_lo) * inner_h

    out = [f'<rect class="frame" x="{PAD_L}" y="{PAD_T}" width="{inner_w}" height="{inner_h}"/>']
    for t in _ticks(x_lo, x_hi):
        out.append(f'<line class="grid" x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{PAD_T}" y2="{PAD_T + inner_h}"/>'
                   f'<text class="tick" x="{sx(t):.1f}" y="{PAD_T + inner_h + 14}" text-anchor="middle">'
                   f'{_fmt(t)}</text>')
    if lanes is None:
        for t in _ticks(y_lo, y_hi, 4):
            out.append(f'<line class="grid" x1="{PAD_L}" x2="{PAD_L + inner_w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}"/>'
                       f'<text class="tick" x="{PAD_L - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    out.append(f'<text class="axis" x="{PAD_L + inner_w / 2}" y="{HEIGHT - 4}" text-anchor="middle">'
               f'{html.escape(plot.x_label)}</text>')
    out.append(f'<text class="axis" transform="translate(12,{PAD_T + inner_h / 2}) rotate(-90)" '
               f'text-anchor="middle">{html.escape(plot.y_label)}</text>')
    return out, sx, sy


def _svg(plot: Plot) -> str:
    parts: list[str]
    marks = 0
    if plot.kind == "gantt":
        lanes = sorted({r[0] for r in plot.rects})
        x_hi = max((r[2] for r in plot.rects), default=1.0)
        parts, sx, sy = _frame(plot, 0.0, x_hi, 0.0, float(max(1, len(lanes))), lanes)
        index = {name: i for i, name in enumerate(lanes)}
        lane_h = (HEIGHT - PAD_T - PAD_B) / max(1, len(lanes))
        if len(lanes) <= 24:
            for name, i in index.items():
                parts.append(f'<text class="tick" x="{PAD_L - 6}" y="{sy(i + 0.5) + 4:.1f}" '
                             f'text-anchor="end">{html.escape(name[-10:])}</text>')
        for lane, start, end, colour, tip in plot.rects:
            x0, x1 = sx(start), sx(end)
            y = sy(index[lane] + 1)
            parts.append(f'<rect class="mark" x="{x0:.2f}" y="{y + 1:.2f}" width="{max(0.5, x1 - x0):.2f}" '
                         f'height="{max(1.0, lane_h - 2):.2f}" fill="{colour}">'
                         f'<title>{html.escape(tip)}</title></rect>')
            marks += 1
    elif plot.kind == "bars":
        x_lo = min((b[0] for b in plot.bars), default=0.0)
        x_hi = max((b[1] for b in plot.bars), default=1.0)
        y_hi = max((b[2] for b in plot.bars), default=1.0)
        parts, sx, sy = _frame(plot, x_lo, x_hi, 0.0, y_hi * 1.05)
        for left, right, h in plot.bars:
            if h > 0:
                parts.append(f'<rect class="mark" x="{sx(left):.2f}" y="{sy(h):.2f}" '
                             f'width="{max(0.5, sx(right) - sx(left) - 1):.2f}" height="{sy(0) - sy(h):.2f}" '
                             f'fill="{PALETTE[0]}"><title>{h:.0f} tasks, {left:.3g}-{right:.3g} s</title></rect>')
                marks += 1
    else:
        xs = [p[0] for s in plot.series for p in s.points]
        ys = [p[1] for s in plot.series for p in s.points]
        parts, sx, sy = _frame(plot, min(xs, default=0.0), max(xs, default=1.0), 0.0,
                               max(ys, default=1.0) * 1.05 or 1.0)
        for i, s in enumerate(plot.series):
            if len(s.points) < 2:
                continue  # a step series that never left zero: nothing happened
            path = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for j, (x, y) in enumerate(s.points))
            colour = PALETTE[i % len(PALETTE)]
            parts.append(f'<path class="mark" d="{path}" stroke="{colour}">'
                         f'<title>{html.escape(s.name)}</title></path>')
            parts.append(f'<text class="legend" x="{PAD_L + 8 + 150 * i}" y="{PAD_T + 12}" fill="{colour}">'
                         f'{html.escape(s.name)}</text>')
            marks += 1
    empty = "" if marks else (f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
                              "nothing recorded</text>")
    return (f'<svg class="plot" data-marks="{marks}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
            f'height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg" role="img">{"".join(parts)}{empty}</svg>')


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:940px}
h1{font-size:1.4em} h2{font-size:1.05em;margin:22px 0 4px} table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:.9em}
svg.plot{border:1px solid #eee;display:block} .frame{fill:none;stroke:#bbb} .grid{stroke:#eee}
.tick{font-size:10px;fill:#555} .axis{font-size:11px;fill:#333} .legend{font-size:11px}
path.mark{fill:none;stroke-width:1.5} .note,.empty{color:#777;fill:#999;font-size:.85em}
"""

#: Counts the plots that drew marks (or say "nothing recorded") once the page has laid out.
CHECK = """
window.addEventListener('load', function () {
  var plots = document.querySelectorAll('svg.plot'), drawn = 0;
  plots.forEach(function (svg) {
    var box = svg.getBBox(), marks = svg.querySelectorAll('.mark').length;
    var ok = box.width > 0 && (marks === Number(svg.dataset.marks)) && (marks > 0 || svg.querySelector('.empty'));
    if (ok) { drawn += 1; }
  });
  document.body.dataset.plots = String(plots.length);
  document.body.dataset.plotsDrawn = String(drawn);
});
"""


def render(data: ReportData) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in data.summary)
    sections = []
    for plot in data.plots:
        note = f'<p class="note">{html.escape(plot.note)}</p>' if plot.note else ""
        sections.append(f"<h2>{html.escape(plot.title)}</h2>{note}{_svg(plot)}")
    if data.failures:
        failed = "".join(f"<tr><td>{html.escape(o)}</td><td>{html.escape(e)}</td><td>{n}</td>"
                         f"<td>{html.escape(ids)}</td></tr>" for o, e, n, ids in data.failures)
        failures = ("<table><tr><th>outcome</th><th>exception</th><th>tasks</th><th>task ids</th></tr>"
                    f"{failed}</table>")
    else:
        failures = "<p>No task failed.</p>"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>htex_ref run: '
            f'{html.escape(data.label)}</title><style>{STYLE}</style></head><body>'
            f"<h1>htex_ref run: {html.escape(data.label)}</h1><table>{rows}</table>{''.join(sections)}"
            f"<h2>Failures by cause</h2>{failures}<script>{CHECK}</script></body></html>")


def main(argv: list[str] | None = None) -> int:
    """Write a self-contained HTML report of a run (from its monitoring database)."""
    p = argparse.ArgumentParser(prog="htex-ref report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="the run directory, an executor's directory in it, or a monitoring.db")
    p.add_argument("-o", "--output", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--label", default=None, help="the executor with this label, when the run has several")
    args = p.parse_args(argv)
    paths = find_databases(args.run_dir)
    if args.label:
        paths = [q for q in paths if q.parent.name == args.label]
    if len(paths) != 1:
        found = ", ".join(str(q) for q in paths) or "none"
        print(f"htex-ref report: need exactly one monitoring database under {args.run_dir} (found: {found}); "
              "choose one with --label", file=sys.stderr)
        return 2
    db = connect(paths[0])
    try:
        page = render(build(db))
    finally:
        db.close()
    Path(args.output).write_text(page)
    print(f"htex-ref report: wrote {args.output} ({len(page) / 1024:.0f} KiB) from {paths[0]}")
    return 0

