"""Workloads: the executor's tasks (synthetic, seeded) and other users' batch jobs (synthetic or SWF).

``build_tasks`` turns a scenario's workload phases into flat arrays (durations, priorities, release
times, dependency groups), which the simulated executor walks without an object per task until a task
is submitted. ``background_jobs`` yields other users' jobs in submission order, generated lazily from a
seeded model or read from a Standard Workload Format trace (one job a line, 18 fields, ``;`` comments;
see https://www.cs.huji.ac.il/labs/parallel/workload/swf.html).

Every random draw comes from a ``random.Random`` seeded from the scenario seed and a fixed purpose
string, so the same scenario and seed give the same numbers on every run and machine.
"""

from __future__ import annotations

import itertools
import math
import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simcluster.scenario import Background, Choice, Distribution, Partition, Phase, ScenarioError


def rng_for(seed: int, purpose: str) -> random.Random:
    """An independent, reproducible stream per purpose (string seeds are hashed with SHA-512, not ``hash()``)."""
    return random.Random(f"{seed}:{purpose}")


#: The constant of the Kinderman-Monahan normal draw, as ``random.normalvariate`` has it.
_NV = 4 * math.exp(-0.5) / math.sqrt(2.0)


def sampler(d: Distribution, rng: random.Random) -> Iterator[float]:
    """Endless samples of ``d``.

    Exponential and lognormal draws do the arithmetic of ``random.expovariate`` and
    ``random.lognormvariate`` (an exponential of ``random.normalvariate``) here, in the loop: the same
    numbers from the same seed, without two or three Python calls per sample (a million-task plan is
    drawn in a third less time).
    """
    cap = d.cap if d.cap > 0 else math.inf
    if d.dist == "fixed":
        v = min(d.value, cap)
        while True:
            yield v
    elif d.dist == "uniform":
        lo, span = d.low, d.high - d.low
        r = rng.random
        while True:
            yield min(lo + span * r(), cap)
    elif d.dist == "exponential":
        if not d.mean > 0:
            while True:
                yield 0.0
        lam = 1.0 / d.mean
        rnd, log = rng.random, math.log
        while True:
            yield min(-log(1.0 - rnd()) / lam, cap)
    elif d.dist == "lognormal":
        if not d.mean > 0:
            while True:
                yield 0.0
        sigma = d.sigma
        mu = math.log(d.mean) - sigma * sigma / 2
        rnd, log, exp = rng.random, math.log, math.exp
        while True:
            while True:
                u1 = rnd()
                u2 = 1.0 - rnd()
                z = _NV * (u1 - 0.5) / u2
                if z * z / 4.0 <= -log(u2):
                    break
            yield min(exp(mu + z * sigma), cap)
    elif d.dist == "pareto":
        pv = rng.paretovariate
        while True:
            yield min(d.minimum * pv(d.alpha), cap)
    else:  # pragma: no cover - the scenario parser refuses other names
        raise ScenarioError(f"unknown distribution {d.dist!r}")


def mean_of(d: Distribution) -> float:
    """The distribution's mean, ignoring ``cap`` (used to size synthetic background arrivals)."""
    if d.dist == "fixed":
        return d.value
    if d.dist == "uniform":
        return (d.low + d.high) / 2
    if d.dist in ("exponential", "lognormal"):
        return d.mean
    return d.minimum * d.alpha / (d.alpha - 1) if d.alpha > 1 else d.cap or d.minimum * 10


# ------------------------------------------------------------------------------------------ tasks


@dataclass
class TaskPlan:
    """The executor's tasks, by index (task id = index + 1, as the executor numbers them from 1).

    Tasks with a release time are submitted then (``release_order`` lists them by time, then index);
    tasks of a later dependency wave have ``group[i] >= 0`` and are submitted when the wave before it,
    group ``gate[g]``, is all done.
    """

    duration: array[float]
    priority: array[float]
    #: Submission time for released tasks; NaN for tasks gated by a wave.
    release: array[float]
    #: Indices of released tasks in submission order.
    release_order: array[int]
    #: Dependency group of each task (-1: none).
    group: array[int]
    #: Per group: its first task index and size, the group it waits for (-1: released), the group after it.
    group_first: list[int]
    group_size: list[int]
    gate: list[int]
    next_group: list[int]
    #: 1 for a task that kills its worker instead of returning (``Phase.crash_fraction``).
    crash: bytearray = field(default_factory=bytearray)
    #: MPI tasks: nodes and ranks per node each task asks for (0: not an MPI task). Both empty when no
    #: phase has MPI tasks.
    num_nodes: array[int] = field(default_factory=lambda: array("i"))
    ranks_per_node: array[int] = field(default_factory=lambda: array("i"))
    #: Each task's time limit (0: none); empty when no phase has one.
    walltime: array[float] = field(default_factory=lambda: array("d"))

    def mpi_spec(self, i: int) -> dict[str, Any] | None:
        """What task ``i``'s header carries to its pool, as its ``resource_specification`` would give it:
        MPI keys and the time limit (None: neither)."""
        spec: dict[str, Any] | None = None
        if self.num_nodes and self.num_nodes[i]:
            spec = {"num_nodes": self.num_nodes[i], "ranks_per_node": self.ranks_per_node[i]}
        if self.walltime and self.walltime[i]:
            spec = dict(spec or {}, walltime=self.walltime[i])
        return spec

    def __len__(self) -> int:
        return len(self.duration)


def choices(c: Choice, rng: random.Random, n: int) -> list[int]:
    """``n`` draws of ``c`` (no draw at all for a single value)."""
    if len(c.values) == 1:
        return [c.values[0]] * n
    return rng.choices(c.values, weights=c.weights or None, k=n)


def build_tasks(phases: tuple[Phase, ...], seed: int) -> TaskPlan:
    duration: array[float] = array("d")
    priority: array[float] = array("d")
    release: array[float] = array("d")
    group: array[int] = array("i")
    group_first: list[int] = []
    group_size: list[int] = []
    gate: list[int] = []
    next_group: list[int] = []
    crash = bytearray()
    mpi = any(p.mpi for p in phases)
    num_nodes: array[int] = array("i")
    ranks_per_node: array[int] = array("i")
    limited = any(p.walltime is not None for p in phases)
    walltime: array[float] = array("d")
    for i, p in enumerate(phases):
        rng = rng_for(seed, f"workload-{i}")
        durations = sampler(p.duration, rng)
        arrivals = rng_for(seed, f"arrivals-{i}")
        if p.kind == "bag":
            times = [p.start] * p.tasks
        elif p.kind == "arrivals":
            t = p.start
            times = []
            # random.expovariate's arithmetic, in the loop (see ``sampler``).
            rnd, log, rate, add = arrivals.random, math.log, p.rate, times.append
            for _ in range(p.tasks):
                t += -log(1.0 - rnd()) / rate
                add(t)
        elif p.kind == "bursts":
            times = [p.start + b * p.interval for b in range(p.bursts) for _ in range(p.tasks)]
        elif p.kind == "trace":
            times = [p.start + t[0] for t in p.trace]
        else:  # waves
            times = [p.start] * p.tasks + [math.nan] * (p.tasks * (p.waves - 1))
            previous = -1
            for w in range(p.waves):
                g = len(group_first)
                group_first.append(len(duration) + w * p.tasks)
                group_size.append(p.tasks)
                gate.append(previous)
                next_group.append(-1)
                if previous >= 0:
                    next_group[previous] = g
                previous = g
            first_group = len(group_first) - p.waves
            group.extend(first_group + k // p.tasks for k in range(p.tasks * p.waves))
        if p.kind != "waves":
            group.extend([-1] * len(times))
        release.extend(times)
        if p.kind == "trace":
            duration.extend(t[1] for t in p.trace)
            priority.extend(t[2] for t in p.trace)
        else:
            duration.extend(itertools.islice(durations, len(times)))
            priority.extend([p.priority] * len(times))
        if p.crash_fraction > 0:
            draw = rng_for(seed, f"crash-{i}").random
            crash.extend(1 if draw() < p.crash_fraction else 0 for _ in times)
        else:
            crash.extend(bytes(len(times)))
        if p.mpi:
            # Streams of their own: adding MPI keys to a phase changes none of its other draws.
            num_nodes.extend(choices(p.num_nodes or Choice(), rng_for(seed, f"num-nodes-{i}"), len(times)))
            ranks_per_node.extend(choices(p.ranks_per_node or Choice(), rng_for(seed, f"ranks-{i}"), len(times)))
        elif mpi:
            num_nodes.extend([0] * len(times))
            ranks_per_node.extend([0] * len(times))
        if limited:
            walltime.extend([p.walltime or 0.0] * len(times))
    # By time, then index: the sort is stable and the indices go in in increasing order.
    order = sorted([i for i, r in enumerate(release) if r == r], key=release.__getitem__)
    return TaskPlan(duration, priority, release, array("i", order), group, group_first, group_size, gate, next_group,
                    crash, num_nodes, ranks_per_node, walltime)


# ----------------------------------------------------------------------------------- background jobs


@dataclass(frozen=True, slots=True)
class BatchJob:
    """Another user's job: submitted at ``submit`` (simulation clock), needing ``nodes`` whole nodes for
    ``runtime`` seconds, killed at ``walltime``."""

    submit: float
    nodes: int
    runtime: float
    walltime: float


def background_jobs(bg: Background, partition: Partition, seed: int, base_dir: str = ".") -> Iterator[BatchJob]:
    """Other users' jobs in submission order, on the simulation clock (0 = ``warmup`` before the executor starts)."""
    if bg.kind == "synthetic":
        return _synthetic(bg, partition, seed)
    if bg.kind == "swf":
        path = Path(bg.path)
        if not path.is_absolute():
            path = Path(base_dir) / path
        return _swf(path, bg, partition)
    return iter(())


def _synthetic(bg: Background, partition: Partition, seed: int) -> Iterator[BatchJob]:
    rng = rng_for(seed, "background")
    runtimes = sampler(bg.runtime, rng_for(seed, "background-runtime"))
    max_nodes = min(bg.max_nodes, partition.nodes)
    sizes = [2**k for k in range(int(math.log2(max_nodes)) + 1)]
    mean_nodes = sum(sizes) / len(sizes)
    rate = bg.load * partition.nodes / (mean_nodes * max(1e-9, mean_of(bg.runtime)))
    if rate <= 0:
        return
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        runtime = next(runtimes)
        walltime = max(60.0, math.ceil(runtime * bg.walltime_factor / 60.0) * 60.0)
        yield BatchJob(t, rng.choice(sizes), runtime, walltime)


def parse_swf_line(line: str, cores_per_node: int) -> tuple[float, int, float, float] | None:
    """``(submit, nodes, runtime, walltime)`` of one SWF line, or None for a comment, a blank line or a job
    with no usable size or run time. Processors become whole nodes (rounded up); an unknown requested
    time (-1) becomes the run time."""
    line = line.strip()
    if not line or line.startswith(";"):
        return None
    fields = line.split()
    if len(fields) < 18:
        raise ValueError(f"an SWF line has 18 fields, this one has {len(fields)}: {line[:80]!r}")
    submit, run = float(fields[1]), float(fields[3])
    procs = int(fields[4]) if int(fields[4]) > 0 else int(fields[7])
    req_time = float(fields[8])
    if procs <= 0 or run < 0:
        return None
    walltime = req_time if req_time > 0 else run
    return submit, max(1, math.ceil(procs / cores_per_node)), run, max(walltime, run if req_time <= 0 else 0.0)


def _swf(path: Path, bg: Background, partition: Partition) -> Iterator[BatchJob]:
    try:
        fh = path.open()
    except OSError as e:
        raise ScenarioError(f"background.path: cannot read the SWF trace {path}: {e}") from None
    with fh:
        for n, line in enumerate(fh, 1):
            try:
                parsed = parse_swf_line(line, partition.cores)
            except ValueError as e:
                raise ScenarioError(f"{path}:{n}: {e}") from None
            if parsed is None:
                continue
            submit, nodes, runtime, walltime = parsed
            t = (submit - bg.offset) * bg.time_scale
            if t < 0 or nodes > partition.nodes:
                continue
            yield BatchJob(t, nodes, runtime, walltime)
