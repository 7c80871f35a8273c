"""Validation against a real cluster: the same small workload on real Slurm and in simcluster.

The workload: 300 tasks of 1 to 2 s (seeded, the same list both sides), on up to 3 one-node blocks with
``htex_auto_scale``. The simulation is calibrated with one measured number only, the *job start latency*:
seconds from submitting a block on the idle real cluster to its first manager registering. Both sides
produce a ``Timeline`` (makespan, and live blocks over time); ``compare`` gives the relative differences
of makespan and of block-seconds (the area under the blocks-over-time curve), which should be within 15%.

Simulation side (here): ``sim_timeline(latency)``. Real side: ``real_timeline(executor)`` runs the same
tasks on a started executor built with ``REAL_SETTINGS`` and samples its blocks. ``python -m
simcluster.validate --latency S [--real real.json] [--out DIR]`` writes ``sim.json``, and with a real
timeline ``comparison.json`` and ``validation.png``; it exits 1 when a difference exceeds the tolerance.
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

#: Settings both sides use (the real executor and provider take them as keyword arguments).
REAL_SETTINGS: dict[str, Any] = {
    "executor": {"strategy": "htex_auto_scale", "strategy_period": 1.0, "max_idletime": 5.0,
                 "max_workers_per_node": 2, "prefetch_capacity": 0},
    "provider": {"nodes_per_block": 1, "init_blocks": 0, "min_blocks": 0, "max_blocks": 3, "walltime": "00:10:00",
                 "status_polling_interval": 1.0},
}


@dataclass
class Timeline:
    """A run seen from outside: when it ended and how many blocks were live (pending or running) when."""

    source: str
    makespan: float
    #: ``(seconds since start, live blocks)``, in time order.
    samples: list[tuple[float, int]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Timeline:
        d = json.loads(text)
        return cls(str(d["source"]), float(d["makespan"]), [(float(t), int(b)) for t, b in d["samples"]])

    def blocks_at(self, t: float) -> int:
        n = 0
        for ts, b in self.samples:
            if ts > t:
                break
            n = b
        return n

    def block_seconds(self) -> float:
        """Area under live blocks over time, from 0 to the makespan."""
        area, prev_t, prev_b = 0.0, 0.0, 0
        for t, b in self.samples:
            t = min(t, self.makespan)
            area += prev_b * (t - prev_t)
            prev_t, prev_b = t, b
        return area + prev_b * max(0.0, self.makespan - prev_t)


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
        "cluster": {"partitions": [{"name": "compute", "nodes": 3, "cores": cores, "memory_gb": 4}]},
        "workload": [{"kind": "bag", "tasks": TASKS, "duration": {"dist": "uniform", "low": LOW, "high": HIGH}}],
        "executor": [{
            "label": "sim", "strategy": ex["strategy"], "strategy_period": ex["strategy_period"],
            "max_idletime": ex["max_idletime"],
            "max_workers_per_node": workers_per_node or ex["max_workers_per_node"],
            "prefetch_capacity": ex["prefetch_capacity"], "nodes_per_block": pv["nodes_per_block"],
            "init_blocks": pv["init_blocks"], "min_blocks": pv["min_blocks"], "max_blocks": pv["max_blocks"],
            "walltime": 600, "status_polling_interval": pv["status_polling_interval"],
            "job_start_latency": job_start_latency,
        }],
    })


def sim_timeline(job_start_latency: float, **kw: Any) -> Timeline:
    """The simulated run, calibrated with ``job_start_latency`` (submit to first registration, seconds)."""
    sc = validation_scenario(job_start_latency, **kw)
    r = run_one(sc, sc.executors[0])
    samples = [(s.time, s.blocks_pending + s.blocks_running) for s in r.timeline]
    return Timeline("simcluster", float(r.metrics["makespan"]), samples)


def real_timeline(executor: Any, task_durations: list[float] | None = None, every: float = 0.5,
                  timeout: float = 900.0) -> Timeline:
    """Run the validation tasks (``time.sleep`` calls) on a started real executor and sample its live blocks
    every ``every`` seconds; the executor should be built with ``REAL_SETTINGS`` and started just before."""
    task_durations = task_durations or durations()
    t0 = time.monotonic()
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            live = sum(1 for s in executor.status().values() if not s.terminal)
            samples.append((time.monotonic() - t0, live))
            stop.wait(every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    futures = [executor.submit(time.sleep, d) for d in task_durations]
    for f in futures:
        f.result(timeout=max(1.0, timeout - (time.monotonic() - t0)))
    makespan = time.monotonic() - t0
    stop.set()
    sampler.join()
    return Timeline("slurm", makespan, samples)


def compare(real: Timeline, sim: Timeline) -> dict[str, float | bool]:
    """Relative differences of makespan and block-seconds (sim vs real), and whether both are within 15%."""
    mk = abs(sim.makespan - real.makespan) / real.makespan
    area_real = real.block_seconds()
    area = abs(sim.block_seconds() - area_real) / area_real if area_real > 0 else float("inf")
    return {"makespan_real": real.makespan, "makespan_sim": sim.makespan, "makespan_error": mk,
            "block_seconds_real": area_real, "block_seconds_sim": sim.block_seconds(), "block_seconds_error": area,
            "peak_blocks_real": max((b for _, b in real.samples), default=0),
            "peak_blocks_sim": max((b for _, b in sim.samples), default=0),
            "within_tolerance": mk <= TOLERANCE and area <= TOLERANCE}


def plot(real: Timeline, sim: Timeline, path: Path) -> None:
    """Both timelines in one plot: live blocks over time, each ending at its makespan."""
    from simcluster.plots import _METADATA, _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    for tl, style in ((real, "-"), (sim, "--")):
        ts = [t for t, _ in tl.samples if t <= tl.makespan] + [tl.makespan]
        bs = [b for t, b in tl.samples if t <= tl.makespan]
        bs.append(bs[-1] if bs else 0)
        ax.step(ts, bs, style, where="post", label=f"{tl.source} (makespan {tl.makespan:.1f} s)")
    ax.set_xlabel("seconds since the executor started")
    ax.set_ylabel("live blocks")
    ax.legend(fontsize=8)
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
