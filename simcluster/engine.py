"""Running a scenario: one simpy environment per executor configuration, each with the same cluster,
the same background load and the same workload (same seed), so the configurations differ only by what
the executor does.

``run(scenario)`` returns ``Results``: per configuration a ``RunResult`` with its metrics (a plain dict,
the row of ``runs.csv``), its timeline and, with ``out_dir``, the CSV files and plots written there.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import simpy

import simcluster.metrics as metrics
from simcluster.pilot import Pilot
from simcluster.results import Results, RunResult
from simcluster.scenario import ExecutorConfig, Scenario
from simcluster.scheduler import Scheduler
from simcluster.workload import BatchJob, TaskPlan, background_jobs, build_tasks

__all__ = ["DEFAULT_LIMIT", "Progress", "Results", "RunResult", "run", "run_one"]

#: Simulated seconds after the executor's start at which a run without ``max_time`` stops anyway.
DEFAULT_LIMIT = 30 * 86400.0


class Progress:
    """A one-line progress bar on stderr, redrawn at most 5 times a second; silent when not a terminal."""

    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = (self.stream.isatty() and os.environ.get("TERM") != "dumb") if enabled is None else enabled
        self._last = 0.0

    def update(self, label: str, done: int, total: int, sim_t: float, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r{label:>16} [{bar:<30}] {done}/{total} tasks, t={sim_t / 3600:7.2f} h ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _feed_background(env: simpy.Environment, scheduler: Scheduler, partition: str,
                     jobs: Iterator[BatchJob]) -> Any:
    for job in jobs:
        if job.submit > env.now:
            yield env.timeout(job.submit - env.now)
        try:
            scheduler.submit(partition, job.nodes, job.runtime, job.walltime, owner="background")
        except ValueError:
            continue


def _submitter(scheduler: Scheduler, partition: str, nodes: int, runtime: float,
               walltime: float) -> Callable[[simpy.Event], None]:
    def submit(_ev: simpy.Event) -> None:
        scheduler.submit(partition, nodes, runtime, walltime, owner="background")

    return submit


def _failer(scheduler: Scheduler, partition: str, node: int) -> Callable[[simpy.Event], None]:
    def fail(_ev: simpy.Event) -> None:
        scheduler.fail_node(partition, node)

    return fail


def run_one(scenario: Scenario, cfg: ExecutorConfig, plan: TaskPlan | None = None,
            progress: Progress | None = None, keep: bool = False) -> RunResult:
    """Simulate one executor configuration of ``scenario``."""
    wall0 = time.perf_counter()
    plan = plan if plan is not None else build_tasks(scenario.workload, scenario.seed)
    env = simpy.Environment()
    scheduler = Scheduler(env, scenario.cluster, scenario.seed)
    bg = scenario.background
    early = min([0.0] + [j[0] for j in bg.jobs] + [f.time for f in scenario.cluster.failures])
    t0 = max(bg.warmup if bg.kind != "none" else 0.0, -early)
    if bg.kind != "none":
        part = scenario.cluster.partition(bg.partition)
        env.process(_feed_background(env, scheduler, part.name,
                                     background_jobs(bg, part, scenario.seed, scenario.base_dir)))
    bg_part = scenario.cluster.partition(bg.partition).name
    for submit, nodes, runtime, walltime in bg.jobs:
        env.timeout(max(0.0, t0 + submit)).callbacks.append(
            _submitter(scheduler, bg_part, nodes, runtime, walltime))
    for failure in scenario.cluster.failures:
        env.timeout(max(0.0, t0 + failure.time)).callbacks.append(
            _failer(scheduler, failure.partition, failure.node))
    done = env.event()
    pilot = Pilot(env, cfg, scenario.cluster.partition(cfg.partition), scheduler, plan, scenario.seed, t0,
                  on_finish=lambda: None if done.triggered else done.succeed(), sample_every=scenario.sample_every,
                  faults=scenario.faults)
    env.timeout(t0).callbacks.append(lambda _ev: pilot.start())
    # Never run forever (a configuration that cannot get a block, say): stop at max_time or DEFAULT_LIMIT.
    limit = scenario.max_time if scenario.max_time > 0 else DEFAULT_LIMIT
    env.timeout(t0 + limit).callbacks.append(lambda _ev: pilot.stop_unfinished(env.now))
    if progress is not None and progress.enabled:
        total = len(plan)

        def tick() -> Any:
            while not done.triggered:
                progress.update(cfg.label, pilot.resolved, total, max(0.0, env.now - t0))
                yield env.timeout(60.0)

        env.process(tick())
    env.run(until=done)
    if progress is not None:
        progress.update(cfg.label, pilot.resolved, len(plan), env.now - t0, force=True)
        progress.close()
    result = RunResult(cfg.label, cfg, metrics.compute(pilot), pilot.samples, env.now,
                       time.perf_counter() - wall0, pilot)
    if not keep:
        result.pilot = None
    return result


def run(scenario: Scenario, out_dir: str | os.PathLike[str] | None = None, *, progress: bool | None = False,
        plots: bool = True, keep: bool = False,
        on_run: Callable[[RunResult], None] | None = None) -> Results:
    """Simulate every executor configuration of ``scenario``; with ``out_dir``, write the report there:
    ``runs.csv``, and per configuration ``{label}/tasks.csv``, ``blocks.csv``, ``timeline.csv``,
    ``jobs.csv``, ``timeline.png`` (and ``mpi_tasks.csv`` in MPI mode), plus ``comparison.png`` (plots
    need matplotlib: the ``sim`` extra)."""
    results = Results(scenario, out_dir=Path(out_dir) if out_dir is not None else None)
    plan = build_tasks(scenario.workload, scenario.seed)
    bar = Progress(progress)
    for cfg in scenario.executors:
        r = run_one(scenario, cfg, plan, bar, keep=True)
        if results.out_dir is not None:
            d = results.out_dir / cfg.label
            d.mkdir(parents=True, exist_ok=True)
            assert r.pilot is not None
            metrics.write_tasks(d / "tasks.csv", r.pilot)
            metrics.write_blocks(d / "blocks.csv", r.pilot)
            metrics.write_timeline(d / "timeline.csv", r.pilot)
            metrics.write_jobs(d / "jobs.csv", r.pilot)
            if cfg.enable_mpi_mode:
                metrics.write_mpi_tasks(d / "mpi_tasks.csv", r.pilot)
        if not keep:
            r.pilot = None
        results.runs.append(r)
        if on_run is not None:
            on_run(r)
    if results.out_dir is not None:
        metrics.write_runs(results.out_dir / "runs.csv", results.metrics())
        if plots:
            import simcluster.plots as plotting

            for r in results.runs:
                plotting.timeline(r, results.out_dir / r.label / "timeline.png")
            plotting.comparison(results.runs, results.out_dir / "comparison.png")
    return results
