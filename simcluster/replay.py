"""``htex-ref sim --replay RUN_DIR``: a recorded run, simulated again under its own settings and under others.

A run's monitoring database (``htex_ref.monitoring``) holds what a scenario needs:

- the workload: each task's submit time (from the executor's start), how long it ran on its worker (its
  last run), and its priority; it becomes a ``trace`` phase;
- the cluster: one partition with as many nodes as the recorded and the alternative configurations can
  ask for at once, each with the recorded pools' worker count in cores;
- the job start latency: the median, over the recorded blocks, of the time from submitting a block to its
  first worker pool registering;
- the executor: strategy, its period, ``max_idletime``, blocks (init, min, max), ``nodes_per_block``,
  parallelism, walltime, workers per node, prefetch, heartbeats and drains, as the run recorded them.

``replay`` simulates the recorded configuration (label ``replay``) and each alternative (``KEY=VALUE``
changes to it, labelled by the changes), and writes the same files as any scenario, with the recorded run
itself as the first row of ``runs.csv`` (label ``recorded``): makespan and node-hours from the database.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from htex_ref.providers.cluster import parse_walltime
from simcluster.scenario import Background, Cluster, ExecutorConfig, Partition, Phase, Scenario, ScenarioError

TERMINAL = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "SCALED_IN", "MISSING", "HELD")


@dataclass
class RecordedRun:
    label: str
    started: float
    ended: float | None
    settings: dict[str, Any]
    #: (submit offset, duration, priority) per task, in submit order.
    tasks: list[tuple[float, float, float]]
    #: block id -> (submitted, running from, ended) offsets (NaN when not seen).
    blocks: dict[str, tuple[float, float, float]]
    #: Seconds from a block's submission to its first pool registering, per block seen registering.
    start_latencies: list[float]
    workers_per_pool: int
    hosts: int
    last_result: float


def load(path: str | Path) -> RecordedRun:
    from htex_ref.status import find_databases

    found = find_databases(path)
    if len(found) != 1:
        raise ScenarioError(f"need exactly one monitoring database under {path}, found {len(found)}: "
                            f"{', '.join(map(str, found)) or 'none'}")
    db = sqlite3.connect(f"file:{found[0]}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        info = {r["key"]: r["value"] for r in db.execute("SELECT key, value FROM run")}
        t0 = float(info["started"])
        settings = json.loads(info.get("settings", "{}"))
        tasks = []
        ran: dict[int, tuple[float, float]] = {}  # task id -> (start, duration) of its last run
        for r in db.execute("SELECT task_id, start, end FROM task_run"):
            if r["task_id"] not in ran or r["start"] > ran[r["task_id"]][0]:
                ran[r["task_id"]] = (r["start"], r["end"] - r["start"])
        for r in db.execute("SELECT t.task_id, t.submitted, t.priority, e.run_time "
                            "FROM task t LEFT JOIN task_end e ON e.task_id = t.task_id ORDER BY t.submitted"):
            duration = ran[r["task_id"]][1] if r["task_id"] in ran else (r["run_time"] or 0.0)
            priority = r["priority"] if r["priority"] is not None else math.inf
            tasks.append((r["submitted"] - t0, max(0.0, duration), priority))
        states: dict[str, list[tuple[float, str]]] = {}
        for r in db.execute("SELECT block_id, t, state FROM block ORDER BY t"):
            states.setdefault(r["block_id"], []).append((r["t"] - t0, r["state"]))
        registered: dict[str, float] = {}
        workers = []
        hosts = set()
        for r in db.execute("SELECT * FROM manager WHERE event = 'registered' ORDER BY t"):
            registered.setdefault(r["block_id"], r["t"] - t0)
            workers.append(r["workers"])
            hosts.add(r["host"])
        ended = float(info["ended"]) - t0 if "ended" in info else None
        last = db.execute("SELECT MAX(t) FROM task_end").fetchone()[0]
    finally:
        db.close()
    blocks = {}
    latencies = []
    nan = math.nan
    for block, seq in states.items():
        submitted = next((t for t, s in seq if s in ("SUBMITTED", "PENDING")), seq[0][0])
        running = next((t for t, s in seq if s == "RUNNING"), nan)
        if block in registered:
            running = min(running, registered[block]) if running == running else registered[block]
            latencies.append(max(0.0, registered[block] - submitted))
        end = next((t for t, s in seq if s in TERMINAL), ended if ended is not None else nan)
        blocks[block] = (submitted, running, end)
    return RecordedRun(info.get("label", "recorded"), t0, ended, settings, tasks, blocks, latencies,
                       max(workers, default=int(settings.get("workers_per_node") or 1)), max(1, len(hosts)),
                       (last - t0) if last is not None else nan)


def recorded_config(run: RecordedRun) -> ExecutorConfig:
    s = run.settings
    p = s.get("provider", {})
    # The provider's own "HH:MM:SS" (a provider without one: the simulation's longest).
    walltime = float(parse_walltime(p["walltime"])) if p.get("walltime") else 30 * 24 * 3600.0
    prefetch = s.get("prefetch_capacity")
    return ExecutorConfig(
        label="replay", partition="replay", strategy=s.get("strategy", "simple"),
        nodes_per_block=int(p.get("nodes_per_block", 1)), init_blocks=int(p.get("init_blocks", 1)),
        min_blocks=int(p.get("min_blocks", 0)), max_blocks=int(p.get("max_blocks", 1)),
        parallelism=float(p.get("parallelism", 1.0)), walltime=walltime,
        max_workers_per_node=run.workers_per_pool, max_idletime=float(s.get("max_idletime", 120.0)),
        strategy_period=float(s.get("strategy_period", 5.0)),
        status_polling_interval=float(p.get("status_polling_interval", 10.0)),
        heartbeat_threshold=float(s.get("heartbeat_threshold", 120)),
        heartbeat_period=float(s.get("heartbeat_period", 30)),
        prefetch_capacity=None if prefetch is None else int(prefetch),
        job_start_latency=statistics.median(run.start_latencies) if run.start_latencies else 1.0,
        block_registration_timeout=s.get("block_registration_timeout"),
        drain_period=s.get("drain_period"), drain_before_walltime=s.get("drain_before_walltime"),
        max_retries_on_system_failure=int(s.get("max_retries_on_system_failure", 0)),
        crash_limit=int(s.get("crash_limit", 2)),
        # The recorded executor stayed up this long after its last result, before it was shut down.
        linger=max(0.0, run.ended - run.last_result) if run.ended is not None and run.last_result == run.last_result
        else 0.0,
    )


_FIELDS = {f.name: f.type for f in dataclasses.fields(ExecutorConfig)}
#: Not settable with --alt: names, and the provider model (a table, not one value).
_NOT_ALTERED = ("label", "partition", "provider")


def alternative(base: ExecutorConfig, changes: str) -> ExecutorConfig:
    """``base`` with ``KEY=VALUE[,KEY=VALUE...]`` applied (values typed as the field's default)."""
    updates: dict[str, Any] = {}
    for item in changes.split(","):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in _FIELDS or key in _NOT_ALTERED:
            raise ScenarioError(f"--alt {changes!r}: {key!r} is not an executor setting "
                                f"(one of {', '.join(sorted(k for k in _FIELDS if k not in _NOT_ALTERED))})")
        current = getattr(base, key)
        try:
            if isinstance(current, bool):
                value: Any = raw.strip().lower() in ("1", "true", "yes")
            elif isinstance(current, int) and not isinstance(current, bool):
                value = int(raw)
            elif isinstance(current, float) or current is None:
                value = None if raw.strip().lower() in ("none", "") else float(raw)
            else:
                value = raw.strip()
        except ValueError:
            raise ScenarioError(f"--alt {changes!r}: {raw!r} is not a value for {key}") from None
        updates[key] = value
    return dataclasses.replace(base, label=changes.replace("=", "-").replace(",", "_"), **updates)


def scenario(run: RecordedRun, alternatives: list[str]) -> Scenario:
    base = recorded_config(run)
    executors = [base] + [alternative(base, a) for a in alternatives]
    nodes = max(e.max_blocks * e.nodes_per_block for e in executors)
    cores = max(e.max_workers_per_node for e in executors)
    cluster = Cluster(partitions=(Partition(name="replay", nodes=max(nodes, run.hosts), cores=cores,
                                            memory_gb=1024.0),))
    phase = Phase(kind="trace", tasks=len(run.tasks), trace=tuple(run.tasks))
    return Scenario(name=f"replay-{run.label}", seed=1, cluster=cluster, background=Background(partition="replay"),
                    workload=(phase,), executors=tuple(executors))


def recorded_metrics(run: RecordedRun) -> dict[str, Any]:
    """The recorded run as a row of ``runs.csv`` (the fields a real run has; the rest NaN)."""
    from simcluster.metrics import RUN_FIELDS

    nodes = int(run.settings.get("provider", {}).get("nodes_per_block", 1))
    stop = run.last_result if run.ended is None else run.ended
    allocated = 0.0
    for _, running, end in run.blocks.values():
        if running == running:
            allocated += nodes * ((end if end == end else stop) - running)
    row: dict[str, Any] = {k: math.nan for k in RUN_FIELDS}
    row.update(label="recorded", strategy=run.settings.get("strategy", ""),
               max_idletime=run.settings.get("max_idletime", math.nan), tasks=len(run.tasks),
               makespan=run.last_result, node_hours_allocated=allocated / 3600.0,
               blocks_submitted=len(run.blocks), mpi_policy="")
    return row


def replay(run_dir: str, out: Path, alternatives: list[str], plots: bool) -> tuple[dict[str, Any], list[Any]]:
    """Simulate the recorded run and the alternatives; write the report to ``out``."""
    from simcluster import metrics
    from simcluster.engine import run as run_scenario

    run = load(run_dir)
    sc = scenario(run, alternatives)
    results = run_scenario(sc, out, plots=plots)
    recorded = recorded_metrics(run)
    metrics.write_runs(out / "runs.csv", [recorded, *results.metrics()])
    return recorded, results.runs
