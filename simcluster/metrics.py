"""Metrics of a run and the Batsim-style CSV files.

Per run (``runs.csv``, one row per executor configuration):

- ``makespan``: seconds from the executor's start to the moment its last task ended;
- ``wait_mean``, ``wait_p50``, ``wait_p95``, ``wait_p99``: seconds from a task's submission to a worker
  starting it (tasks that started);
- ``node_hours_allocated``: nodes x hours the executor's blocks held, from each job's start to its end;
- ``node_hours_used``: worker-seconds spent running tasks (lost work included) / workers per node / 3600;
- ``idle_node_hours`` = allocated - used; ``utilization`` = used / allocated;
- ``blocks_submitted``, ``blocks_scaled_in`` (cancelled by the strategy), ``blocks_walltime`` (killed at
  their walltime), ``blocks_failed`` (a node failed), ``blocks_missing`` (timed out unregistered),
  ``block_wait_mean`` (seconds from a block's submission to its job starting);
- task counts by end: ``done``, ``lost_walltime`` and ``lost_node_failure`` (running or queued on a block
  whose job was killed for those reasons), ``lost_other``, ``dep_failed``, ``failed`` (the executor went
  to bad state), ``unfinished`` (``max_time`` reached);
- ``wait_max``: the longest wait of any task that started;
- ``mpi_policy``: the MPI policy of an executor in MPI mode (empty otherwise). In MPI mode
  ``node_hours_used`` is the node-hours MPI tasks held (a node counts from the moment a task is given it
  until the task's result arrives or its worker or node dies; with ``mpi_share_nodes``, while any task
  holds part of it), so ``utilization`` is the node utilization: busy node-seconds / allocated
  node-seconds. Tasks without MPI keys hold no node and do not count;
- recovery (``[[faults]]``): ``interchange_restarts``, ``partitions``, ``requeued_after_restart`` (tasks a
  restarted interchange queued again because no pool claimed them; each records an attempt),
  ``adopted_after_restart`` (claimed by a pool that registered again), ``late_results`` (results for a
  task already resolved: dropped, the first won), ``dropped_on_pools`` (tasks the interchange told a
  pool that registered again to drop: given up on while it was silent, or ended elsewhere),
  ``duplicate_runs`` (runs of a task that was given up on or running elsewhere: the price of
  at-least-once), ``delivered_twice`` (tasks resolved a second time: must be 0) and ``never_resolved``
  (tasks submitted whose future never resolved by the end of the run: lost, or still running at
  ``max_time``).

Per task (``tasks.csv``): ``task_id,submit,start,end,duration,block,node,worker,state,reason``. Per block
(``blocks.csv``): ``block_id,job_id,nodes,submit,start,end,state,reason``. Over time (``timeline.csv``):
``time,blocks_pending,blocks_running,workers,tasks_queued,tasks_running,tasks_ended``. In MPI mode, per
MPI task (``mpi_tasks.csv``): ``task_id,num_nodes,ranks_per_node,nodes,submit,start,end,state``
(``nodes``: the node names it was given, space-separated). Times are seconds from the executor's start,
with 3 decimals; an empty field means "never".
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from simcluster.pilot import DONE, LOST, RUNNING, STATE_NAMES, Pilot

RUN_FIELDS = (
    "label", "strategy", "max_idletime", "tasks", "makespan", "wait_mean", "wait_p50", "wait_p95", "wait_p99",
    "node_hours_allocated", "node_hours_used", "idle_node_hours", "utilization", "blocks_submitted",
    "blocks_scaled_in", "blocks_walltime", "blocks_failed", "blocks_missing", "block_wait_mean", "done",
    "lost_walltime", "lost_node_failure", "lost_other", "dep_failed", "failed", "unfinished", "wait_max",
    "mpi_policy", "timed_out", "retries", "interchange_restarts", "partitions", "requeued_after_restart",
    "adopted_after_restart", "late_results", "dropped_on_pools", "duplicate_runs", "delivered_twice", "never_resolved",
)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, by linear interpolation; NaN when empty."""
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def block_state(p: Pilot, block_id: str) -> tuple[str, str]:
    """A block's final state as the executor sees it, and why."""
    rec = p.blocks[block_id]
    if block_id in p.shutdown_blocks:
        return "CANCELLED", "the executor shut down"
    failure = p.control.registration_failures.get(block_id)
    if failure is not None:
        return "MISSING", failure.message or ""
    if block_id in p.control.overrides:
        st = p.control.overrides[block_id]
        return st.state.name, st.message or ""
    return rec.state, rec.reason


def node_intervals(p: Pilot) -> dict[str, list[tuple[float, float, int]]]:
    """MPI mode: per node, ``(start, end, task index)`` of every task that was given it, by start; times
    on the simulation clock. A task holds its nodes from its start to its end (its result, or the death
    of its worker or node), or to the end of the run if it never ended."""
    stop = p.env.now
    out: dict[str, list[tuple[float, float, int]]] = {}
    for ti, names in p.t_nodes.items():
        start, end = p.t_start[ti], p.t_end[ti]
        end = stop if math.isnan(end) else end
        for name in names.split(","):
            out.setdefault(name, []).append((start, end, ti))
    for spans in out.values():
        spans.sort()
    return out


def busy_node_seconds(p: Pilot) -> float:
    """MPI mode: node-seconds during which some task held the node (overlaps, with shared nodes, once)."""
    total = 0.0
    for spans in node_intervals(p).values():
        lo = hi = -math.inf
        for start, end, _ in spans:
            if start > hi:
                total += hi - lo if hi > lo else 0.0
                lo, hi = start, end
            else:
                hi = max(hi, end)
        total += hi - lo if hi > lo else 0.0
    return total


def compute(p: Pilot) -> dict[str, Any]:
    t0 = p.t0
    n = len(p.plan)
    state = p.state
    waits = sorted([start - submit for start, submit in zip(p.t_start, p.t_submit, strict=True) if start == start])
    counts = {name: state.count(s) for s, name in enumerate(STATE_NAMES)}
    job_states = {b: rec.state for b, rec in p.blocks.items()}
    lost_walltime = lost_failure = lost_other = 0
    for i, s in enumerate(state):
        if s == LOST:
            mi = p.t_mgr[i]
            js = job_states.get(p.managers[mi].block, "") if mi >= 0 else ""
            if js == "TIMEOUT":
                lost_walltime += 1
            elif js == "FAILED":
                lost_failure += 1
            else:
                lost_other += 1
    stop = p.finished_at if not math.isnan(p.finished_at) else p.env.now
    allocated = 0.0
    block_waits = []
    finals = [block_state(p, b)[0] for b in p.blocks]
    for rec in p.blocks.values():
        if not math.isnan(rec.start):
            end = rec.end if not math.isnan(rec.end) else stop
            allocated += rec.nodes * (end - rec.start)
            block_waits.append(rec.start - rec.submit)
    allocated /= 3600.0
    mpi = p.cfg.enable_mpi_mode
    used = (busy_node_seconds(p) if mpi else p.busy_seconds / max(1, p.workers_per_node)) / 3600.0
    return {
        "label": p.label,
        "strategy": p.cfg.strategy,
        "max_idletime": p.cfg.max_idletime,
        "tasks": n,
        "makespan": (p.finished_at - t0) if not math.isnan(p.finished_at) else math.nan,
        "wait_mean": sum(waits) / len(waits) if waits else math.nan,
        "wait_p50": percentile(waits, 0.50),
        "wait_p95": percentile(waits, 0.95),
        "wait_p99": percentile(waits, 0.99),
        "node_hours_allocated": allocated,
        "node_hours_used": used,
        "idle_node_hours": allocated - used,
        "utilization": used / allocated if allocated > 0 else math.nan,
        "blocks_submitted": len(p.blocks),
        "blocks_scaled_in": finals.count("SCALED_IN"),
        "blocks_walltime": finals.count("TIMEOUT"),
        "blocks_failed": finals.count("FAILED"),
        "blocks_missing": finals.count("MISSING"),
        "block_wait_mean": sum(block_waits) / len(block_waits) if block_waits else math.nan,
        "done": counts["done"],
        "lost_walltime": lost_walltime,
        "lost_node_failure": lost_failure,
        "lost_other": lost_other,
        "dep_failed": counts["dep_failed"],
        "failed": counts["failed"],
        "unfinished": counts["unfinished"],
        "wait_max": waits[-1] if waits else math.nan,
        "mpi_policy": p.cfg.mpi_policy if mpi else "",
        "timed_out": counts["timed_out"],
        "retries": p.retries,
        "interchange_restarts": p.restarts,
        "partitions": p.partitions,
        "requeued_after_restart": p.requeued,
        "adopted_after_restart": p.adopted,
        "late_results": p.late_results,
        "dropped_on_pools": p.drops,
        "duplicate_runs": p.ghost_runs,
        "delivered_twice": p.delivered_twice,
        "never_resolved": counts["queued"] + counts["running"]
        + (len(p.never_resolved()) - counts["queued"] - counts["running"] if counts["unfinished"] else 0),
    }


def fmt(v: Any) -> str:
    """CSV text of a value: floats with 3 decimals (6 for fractions), empty for NaN."""
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.6f}" if abs(v) < 10 else f"{v:.3f}"
    return str(v)


def _t(v: float, t0: float) -> str:
    return "" if v != v else f"{v - t0:.3f}"


def write_runs(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(RUN_FIELDS)
        for r in rows:
            w.writerow([fmt(r[k]) for k in RUN_FIELDS])


def write_tasks(path: Path, p: Pilot) -> None:
    t0 = p.t0
    mgrs = p.managers
    part = p.provider.partition
    reasons = p.reasons
    # "block,node" of each manager, made once rather than per task.
    where = [f"{m.block},{part}-{m.node}" for m in mgrs]
    rows = zip(p.t_submit, p.t_start, p.t_end, p.plan.duration, p.t_mgr, p.t_worker, p.state, strict=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("task_id", "submit", "start", "end", "duration", "block", "node", "worker", "state", "reason"))
        lines: list[str] = []
        add = lines.append
        # The common case, formatted directly (nothing in it needs CSV quoting); %-formatting does the
        # same as an f-string here, a little faster.
        done_row = "%d,%.3f,%.3f,%.3f,%.3f,%s,%d,done,\n"
        for i, (submit, start, end, duration, mi, worker, state) in enumerate(rows, 1):
            if state == DONE and mi >= 0:
                add(done_row % (i, submit - t0, start - t0, end - t0, duration, where[mi], worker))
                if len(lines) >= 65536:
                    fh.write("".join(lines))
                    lines.clear()
                continue
            if lines:
                fh.write("".join(lines))
                lines.clear()
            m = mgrs[mi] if mi >= 0 else None
            w.writerow((
                i, _t(submit, t0), _t(start, t0), _t(end, t0), f"{duration:.3f}",
                m.block if m else "", f"{part}-{m.node}" if m else "", worker if start == start and m else "",
                STATE_NAMES[state], reasons.get(i - 1, ""),
            ))
        fh.write("".join(lines))


def write_mpi_tasks(path: Path, p: Pilot) -> None:
    """MPI mode: each MPI task's request and the nodes it was given."""
    t0 = p.t0
    plan = p.plan
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("task_id", "num_nodes", "ranks_per_node", "nodes", "submit", "start", "end", "state"))
        for i in range(len(plan.num_nodes)):
            if plan.num_nodes[i]:
                w.writerow((i + 1, plan.num_nodes[i], plan.ranks_per_node[i], p.t_nodes.get(i, "").replace(",", " "),
                            _t(p.t_submit[i], t0), _t(p.t_start[i], t0), _t(p.t_end[i], t0), STATE_NAMES[p.state[i]]))


def write_blocks(path: Path, p: Pilot) -> None:
    t0 = p.t0
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("block_id", "job_id", "nodes", "submit", "start", "end", "state", "reason"))
        for b, rec in p.blocks.items():
            st, reason = block_state(p, b)
            w.writerow((b, rec.job_id, rec.nodes, _t(rec.submit, t0), _t(rec.start, t0), _t(rec.end, t0), st, reason))


def write_timeline(path: Path, p: Pilot) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("time", "blocks_pending", "blocks_running", "workers", "tasks_queued", "tasks_running",
                    "tasks_ended"))
        for s in p.samples:
            w.writerow((f"{s.time:.3f}", s.blocks_pending, s.blocks_running, s.workers, s.tasks_queued,
                        s.tasks_running, s.tasks_done))


def write_jobs(path: Path, p: Pilot) -> None:
    """Every batch job of the run, other users' included (Batsim's jobs file, in short)."""
    t0 = p.t0
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("job_id", "owner", "nodes", "submit", "start", "end", "walltime", "state"))
        for job in p.scheduler.jobs.values():
            owner = "executor" if job.job_id in p.job_block else "background"
            w.writerow((job.job_id, owner, job.nodes, _t(job.submit, t0), _t(job.start, t0), _t(job.end, t0),
                        f"{job.walltime:.0f}", job.state.name))


def conservation_errors(p: Pilot) -> list[str]:
    """Every task ended exactly once: done, or not done with a reason. Returns what is wrong (empty: nothing)."""
    errors = []
    for i in range(len(p.plan)):
        s = p.state[i]
        if s == DONE:
            if i in p.reasons:
                errors.append(f"task {i + 1} is done but has a failure reason")
        elif s in (RUNNING, 0, 1):
            errors.append(f"task {i + 1} never ended ({STATE_NAMES[s]})")
        elif not p.reasons.get(i):
            errors.append(f"task {i + 1} ended {STATE_NAMES[s]} without a reason")
    if p.resolved != len(p.plan):
        errors.append(f"{p.resolved} tasks resolved, {len(p.plan)} exist")
    return errors
