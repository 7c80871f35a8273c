"""Validation against a real cluster: the same small workload on real Slurm and in simcluster.

The workload: 300 tasks of 1 to 2 s (seeded, the same list both sides), on up to 3 one-node blocks with
``htex_auto_scale``. The simulation is calibrated with one measured number only, the *job start latency*:
seconds from submitting a block on the idle real cluster to its first manager registering. Both sides
produce a ``Timeline``: the makespan, and live blocks over time from the executor's start until no block
is live any more after the last task (the strategy scales in after ``max_idletime``), at most ``LINGER``
seconds after it. ``compare`` gives the relative differences of makespan and of block-seconds (the area
under the blocks-over-time curve over that whole time, what the allocation costs), which should be within
15%.

Simulation side (here): ``sim_timeline(latency)``. Real side: ``real_timeline(executor)`` runs the same
tasks on a started executor built with ``REAL_SETTINGS`` and samples its blocks; ``simcluster.validate_real``
runs both on a Slurm cluster. ``python -m simcluster.validate --latency S [--real real.json] [--out DIR]``
writes ``sim.json``, and with a real timeline ``comparison.json`` and ``validation.png``; it exits 1 when a
difference exceeds the tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from simcluster.engine import run_one
from simcluster.scenario import Scenario, parse_scenario
from simcluster.workload import build_tasks

TASKS = 300
LOW, HIGH = 1.0, 2.0
TOLERANCE = 0.15
SEED = 1
#: Seconds both sides keep the executor up after the last task, for the strategy to scale in.
LINGER = 30.0

#: Settings both sides use (the real executor and provider take them as keyword arguments).
REAL_SETTINGS: dict[str, Any] = {
    "executor": {"strategy": "htex_auto_scale", "strategy_period": 1.0, "max_idletime": 5.0,
                 "max_workers_per_node": 2, "prefetch_capacity": 0},
    "provider": {"nodes_per_block": 1, "init_blocks": 0, "min_blocks": 0, "max_blocks": 3, "walltime": "00:10:00",
                 "status_polling_interval": 1.0},
}


@dataclass
class Timeline:
    """A run seen from outside: when its last task ended and how many blocks were live (pending or running)
    when, until ``until``."""

    source: str
    makespan: float
    #: ``(seconds since start, live blocks)``, in time order.
    samples: list[tuple[float, int]] = field(default_factory=list)
    #: End of the observation (no block live any more, or the executor shut down); None: the makespan.
    until: float | None = None

    @property
    def end(self) -> float:
        return self.makespan if self.until is None else self.until

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Timeline:
        d = json.loads(text)
        until = d.get("until")
        return cls(str(d["source"]), float(d["makespan"]), [(float(t), int(b)) for t, b in d["samples"]],
                   None if until is None else float(until))

    def blocks_at(self, t: float) -> int:
        n = 0
        for ts, b in self.samples:
            if ts > t:
                break
            n = b
        return n

    def block_seconds(self) -> float:
        """Area under live blocks over time, from 0 to ``end`` (0 blocks before the first sample)."""
        end = self.end
        area, prev_t, prev_b = 0.0, 0.0, 0
        for t, b in self.samples:
            t = min(t, end)
            area += prev_b * (t - prev_t)
            prev_t, prev_b = t, b
        return area + prev_b * max(0.0, end - prev_t)

    def last_block_gone(self) -> float | None:
        """Seconds after the makespan at which no block was live any more; None if some still were at ``end``."""
        gone = None
        for t, b in self.samples:
            if t < self.makespan:
                continue
            if b == 0 and gone is None:
                gone = t
            elif b > 0:
                gone = None
        return None if gone is None else gone - self.makespan


def durations(seed: int = SEED) -> list[float]:
    """The 300 task durations, as the simulation draws them (give the same list to the real run)."""
    return list(build_tasks(validation_scenario(0.0, seed=seed).workload, seed).duration)


def validation_scenario(job_start_latency: float, *, workers_per_node: int | None = None, seed: int = SEED,
                        cores: int = 2) -> Scenario:
    ex = REAL_SETTINGS["executor"]
    pv = REAL_SETTINGS["provider"]
    return parse_scenario({
        "name": "validation",
        "seed": seed,
        "sample_every": 0.5,
        # The measured latency runs from submission to registration, so it covers the scheduler's cycle too.
        "cluster": {"schedule_delay": 0.0,
                    "partitions": [{"name": "compute", "nodes": 3, "cores": cores, "memory_gb": 4}]},
        "workload": [{"kind": "bag", "tasks": TASKS, "duration": {"dist": "uniform", "low": LOW, "high": HIGH}}],
        "executor": [{
            "label": "sim", "strategy": ex["strategy"], "strategy_period": ex["strategy_period"],
            "max_idletime": ex["max_idletime"],
            "max_workers_per_node": workers_per_node or ex["max_workers_per_node"],
            "prefetch_capacity": ex["prefetch_capacity"], "nodes_per_block": pv["nodes_per_block"],
            "init_blocks": pv["init_blocks"], "min_blocks": pv["min_blocks"], "max_blocks": pv["max_blocks"],
            "walltime": 600, "status_polling_interval": pv["status_polling_interval"],
            "job_start_latency": job_start_latency, "linger": LINGER,
        }],
    })


def sim_timeline(job_start_latency: float, **kw: Any) -> Timeline:
    """The simulated run, calibrated with ``job_start_latency`` (submit to first registration, seconds)."""
    sc = validation_scenario(job_start_latency, **kw)
    r = run_one(sc, sc.executors[0], keep=True)
    assert r.pilot is not None
    samples = [(s.time, s.blocks_pending + s.blocks_running) for s in r.timeline]
    if not samples or samples[0][0] > 0:
        samples.insert(0, (0.0, 0))
    return Timeline("simcluster", float(r.metrics["makespan"]), samples, r.pilot.stopped_at - r.pilot.t0)


def real_timeline(executor: Any, task_durations: list[float] | None = None, every: float = 0.5,
                  timeout: float = 900.0, linger: float = LINGER) -> Timeline:
    """Run the validation tasks (``time.sleep`` calls) on a started real executor and sample its live blocks
    every ``every`` seconds, until no block is live after the last task or ``linger`` seconds after it;
    the executor should be built with ``REAL_SETTINGS`` and started just before (shutting it down is the
    caller's)."""
    task_durations = task_durations or durations()
    t0 = time.monotonic()
    samples: list[tuple[float, int]] = []
    done_at: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            live = sum(1 for s in executor.status().values() if not s.terminal)
            t = time.monotonic() - t0
            samples.append((t, live))
            if done_at and (live == 0 or t >= done_at[0] + linger):
                return
            stop.wait(every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        futures = [executor.submit(time.sleep, d) for d in task_durations]
        for f in futures:
            f.result(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        makespan = time.monotonic() - t0
        done_at.append(makespan)
        sampler.join(linger + 30.0)
    finally:
        stop.set()
        sampler.join()
    return Timeline("slurm", makespan, samples, samples[-1][0])


def compare(real: Timeline, sim: Timeline) -> dict[str, Any]:
    """Relative differences of makespan and block-seconds (sim vs real), and whether both are within 15%;
    also, for the record, the peak blocks and how long after the last task the last block went."""
    mk = abs(sim.makespan - real.makespan) / real.makespan
    area_real = real.block_seconds()
    area = abs(sim.block_seconds() - area_real) / area_real if area_real > 0 else float("inf")
    return {"makespan_real": real.makespan, "makespan_sim": sim.makespan, "makespan_error": mk,
            "block_seconds_real": area_real, "block_seconds_sim": sim.block_seconds(), "block_seconds_error": area,
            "peak_blocks_real": max((b for _, b in real.samples), default=0),
            "peak_blocks_sim": max((b for _, b in sim.samples), default=0),
            "last_block_gone_real": real.last_block_gone(), "last_block_gone_sim": sim.last_block_gone(),
            "within_tolerance": mk <= TOLERANCE and area <= TOLERANCE}


def plot(real: Timeline, sim: Timeline, path: Path) -> None:
    """Both timelines in one plot: live blocks over time until each observation's end, makespans marked."""
    from simcluster.plots import _METADATA, _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.8))
    for tl, style, color in ((real, "-", "tab:blue"), (sim, "--", "tab:orange")):
        end = tl.end
        ts = [t for t, _ in tl.samples if t <= end] + [end]
        bs = [b for t, b in tl.samples if t <= end]
        bs.append(bs[-1] if bs else 0)
        ax.step(ts, bs, style, where="post", color=color, label=f"{tl.source} (makespan {tl.makespan:.1f} s)")
        ax.axvline(tl.makespan, linestyle=":", color=color, linewidth=1)
    ax.set_xlabel("seconds since the executor started (dotted: last task ended)")
    ax.set_ylabel("live blocks")
    ax.set_yticks(range(0, max([b for _, b in real.samples + sim.samples] + [1]) + 1))
    ax.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata=_METADATA)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simcluster.validate", description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", type=float, required=True, help="measured job start latency, seconds")
    p.add_argument("--workers-per-node", type=int, default=None)
    p.add_argument("--real", help="the real run's timeline (JSON written by Timeline.to_json)")
    p.add_argument("--out", default="sim-out/validation", help="output folder")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sim = sim_timeline(args.latency, workers_per_node=args.workers_per_node)
    (out / "sim.json").write_text(sim.to_json())
    print(f"simcluster: makespan {sim.makespan:.1f} s, {sim.block_seconds():.0f} block-seconds", file=sys.stderr)
    if not args.real:
        print("no real timeline given (--real): the Slurm side has not run", file=sys.stderr)
        return 0
    real = Timeline.from_json(Path(args.real).read_text())
    result = compare(real, sim)
    (out / "comparison.json").write_text(json.dumps(result, indent=1))
    plot(real, sim, out / "validation.png")
    print(json.dumps(result, indent=1), file=sys.stderr)
    return 0 if result["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
