"""Validation against a real cluster: the same small workloads on real Slurm and in simcluster.

Two cases (``CASES``), both of 1 to 2 s tasks (seeded, the same list both sides) on up to 3 one-node
blocks with ``htex_auto_scale``:

- ``bag``: 300 tasks at the start; mostly plain work with all 3 blocks up;
- ``waves``: the waves of ``WAVES``, each submitted at its offset from the executor's start, with gaps
  longer than ``max_idletime`` plus ``strategy_period``, so that blocks scale out and in four times (one
  small wave needs only 2 blocks): start-up and scale-in are a large share of the block-seconds.

The simulation is calibrated with one measured number only, the *job start latency*: seconds from
submitting a block on the idle real cluster to its first manager registering. Both sides produce a
``Timeline``: the makespan, the number of blocks submitted, and live blocks over time from the executor's
start until no block is live any more after the last task (the strategy scales in after ``max_idletime``),
at most ``LINGER`` seconds after it. ``compare`` gives the relative differences of makespan, block-seconds
(the area under the blocks-over-time curve over that whole time, what the allocation costs) and block
submissions, and the L1 distance between the two curves relative to the real block-seconds (``curve_l1``):
each should be within 15%.

Simulation side (here): ``sim_timeline(latency, case)``. Real side: ``real_timeline(executor, schedule=...)``
submits the same tasks at the same offsets on a started executor built with ``REAL_SETTINGS`` and samples
its blocks; ``simcluster.validate_real`` runs both on a Slurm cluster. ``python -m simcluster.validate
--latency S [--case waves] [--real real.json] [--out DIR]`` writes the simulated timeline, and with a real
timeline the comparison and plot; it exits 1 when a difference exceeds the tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from simcluster.engine import run_one
from simcluster.scenario import Scenario, parse_scenario
from simcluster.workload import build_tasks

#: The bag case: tasks, all submitted at the start.
TASKS = 300
LOW, HIGH = 1.0, 2.0
TOLERANCE = 0.15
SEED = 1
#: Seconds both sides keep the executor up after the last task, for the strategy to scale in.
LINGER = 30.0
#: The waves case: (seconds from the executor's start, tasks) per wave. With 2 workers on each of at most
#: 3 blocks a wave of 60 to 90 tasks takes 15 to 23 s once its blocks are up, and the next wave comes at
#: least 15 s after the previous one's last task, so more than ``max_idletime`` + ``strategy_period``
#: after it: every block is scaled in between waves. The 4-task wave needs 2 blocks only. Later waves come
#: half-way between two strategy passes of the simulated executor (its passes are ``strategy_period``
#: apart from 0): a real wave meets the control thread at a phase nobody controls, whose expected wait for
#: the next pass is half a period, while on a pass the simulated one would see the wave at once.
WAVES: tuple[tuple[float, int], ...] = ((0.0, 60), (35.5, 4), (55.5, 90), (100.5, 60))
CASES = ("bag", "waves")

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
    #: Blocks submitted over the run; None: not recorded (timelines from before it was).
    submissions: int | None = None
    #: Per wave (arrival time) of the schedule, seconds from the start at which its last task ended.
    wave_ends: list[float] | None = None

    @property
    def end(self) -> float:
        return self.makespan if self.until is None else self.until

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Timeline:
        d = json.loads(text)
        until, submissions, wave_ends = d.get("until"), d.get("submissions"), d.get("wave_ends")
        return cls(str(d["source"]), float(d["makespan"]), [(float(t), int(b)) for t, b in d["samples"]],
                   None if until is None else float(until), None if submissions is None else int(submissions),
                   None if wave_ends is None else [float(t) for t in wave_ends])

    def blocks_at(self, t: float) -> int:
        n = 0
        for ts, b in self.samples:
            if ts > t:
                break
            n = b
        return n

    def steps(self) -> list[tuple[float, int]]:
        """The curve as ``(from time, live blocks)`` steps over ``[0, end]``, then ``(end, 0)``: no block is
        live after the observation (none was left, or the executor shut down and cancelled them)."""
        end = self.end
        out: list[tuple[float, int]] = [(0.0, 0)]
        for t, b in self.samples:
            t = max(0.0, min(t, end))
            if t == out[-1][0]:
                out[-1] = (t, b)
            else:
                out.append((t, b))
        if out[-1][0] == end:
            out[-1] = (end, 0)
        else:
            out.append((end, 0))
        return out

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


def curve_l1(a: Timeline, b: Timeline) -> float:
    """Integral of the absolute difference of the two blocks-over-time curves (block-seconds), from 0 to
    the later of the two ends; each curve is 0 after its own end (see ``Timeline.steps``)."""
    sa, sb = a.steps(), b.steps()
    times = sorted({t for t, _ in sa} | {t for t, _ in sb})
    total, i, j, va, vb = 0.0, 0, 0, 0, 0
    for k, t in enumerate(times):
        while i < len(sa) and sa[i][0] <= t:
            va = sa[i][1]
            i += 1
        while j < len(sb) and sb[j][0] <= t:
            vb = sb[j][1]
            j += 1
        if k + 1 < len(times):
            total += abs(va - vb) * (times[k + 1] - t)
    return total


def durations(seed: int = SEED) -> list[float]:
    """The bag case's 300 task durations, as the simulation draws them (give the same list to the real run)."""
    return list(build_tasks(validation_scenario(0.0, seed=seed).workload, seed).duration)


def schedule(case: str = "bag", seed: int = SEED) -> list[tuple[float, list[float]]]:
    """The case's arrivals as the simulation draws them: ``(seconds from the executor's start, task
    durations)`` per arrival time, in time order (the real run submits exactly these)."""
    plan = build_tasks(validation_scenario(0.0, case=case, seed=seed).workload, seed)
    out: list[tuple[float, list[float]]] = []
    for i in plan.release_order:
        t = plan.release[i]
        if not out or out[-1][0] != t:
            out.append((t, []))
        out[-1][1].append(plan.duration[i])
    return out


def _workload(case: str) -> list[dict[str, Any]]:
    duration = {"dist": "uniform", "low": LOW, "high": HIGH}
    if case == "bag":
        return [{"kind": "bag", "tasks": TASKS, "duration": duration}]
    if case == "waves":
        return [{"kind": "bag", "tasks": n, "start": start, "duration": duration} for start, n in WAVES]
    raise ValueError(f"unknown validation case {case!r}; accepted: {list(CASES)}")


def validation_scenario(job_start_latency: float, *, case: str = "bag", workers_per_node: int | None = None,
                        seed: int = SEED, cores: int = 2) -> Scenario:
    ex = REAL_SETTINGS["executor"]
    pv = REAL_SETTINGS["provider"]
    return parse_scenario({
        "name": f"validation-{case}",
        "seed": seed,
        "sample_every": 0.5,
        # The measured latency runs from submission to registration, so it covers the scheduler's cycle too.
        "cluster": {"schedule_delay": 0.0,
                    "partitions": [{"name": "compute", "nodes": 3, "cores": cores, "memory_gb": 4}]},
        "workload": _workload(case),
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


def sim_timeline(job_start_latency: float, case: str = "bag", **kw: Any) -> Timeline:
    """The simulated run, calibrated with ``job_start_latency`` (submit to first registration, seconds)."""
    sc = validation_scenario(job_start_latency, case=case, **kw)
    r = run_one(sc, sc.executors[0], keep=True)
    assert r.pilot is not None
    pilot = r.pilot
    samples = [(s.time, s.blocks_pending + s.blocks_running) for s in r.timeline]
    if not samples or samples[0][0] > 0:
        samples.insert(0, (0.0, 0))
    ends: dict[float, float] = {}
    for i in pilot.plan.release_order:
        release = pilot.plan.release[i]
        ends[release] = max(ends.get(release, 0.0), pilot.t_end[i] - pilot.t0)
    return Timeline("simcluster", float(r.metrics["makespan"]), samples, pilot.stopped_at - pilot.t0,
                    len(pilot.blocks), [ends[t] for t in sorted(ends)])


def live_blocks(executor: Any) -> int:
    """Blocks of a real executor that are pending or running. With a batch-system provider, counted from
    the provider's own record, which a submission or a cancel updates at once, without asking the batch
    system: sampling often then costs nothing and never holds the provider's lock that the executor's
    control thread needs. Otherwise ``executor.status()``."""
    from htex_ref.providers.cluster import ClusterProvider

    if isinstance(executor.provider, ClusterProvider):
        return sum(1 for job in list(executor.provider.jobs.values()) if not job.status.terminal)
    return sum(1 for s in executor.status().values() if not s.terminal)


def real_timeline(executor: Any, task_durations: list[float] | None = None, every: float = 0.1,
                  timeout: float = 900.0, linger: float = LINGER,
                  schedule: list[tuple[float, list[float]]] | None = None) -> Timeline:
    """Run the validation tasks (``time.sleep`` calls) on a started real executor and sample its live blocks
    every ``every`` seconds, until no block is live after the last task or ``linger`` seconds after it;
    the executor should be built with ``REAL_SETTINGS`` and started just before (shutting it down is the
    caller's). ``schedule`` (``(offset, durations)`` per wave, as ``schedule()`` gives) has a submitter
    thread submit each wave at its offset from the call; without it, ``task_durations`` (default: the bag
    case's) are all submitted at once."""
    waves = schedule if schedule is not None else [(0.0, task_durations or durations())]
    t0 = time.monotonic()
    samples: list[tuple[float, int]] = []
    done_at: list[float] = []
    stop = threading.Event()
    futures: list[Any] = []
    all_submitted = threading.Event()
    submit_error: list[BaseException] = []
    wave_ends = [0.0] * len(waves)

    def ended(w: int) -> Callable[[Any], None]:
        def note(_f: Any) -> None:
            wave_ends[w] = max(wave_ends[w], time.monotonic() - t0)

        return note

    def submit_waves() -> None:
        try:
            for w, (offset, wave) in enumerate(waves):
                if stop.wait(max(0.0, t0 + offset - time.monotonic())):
                    return
                submitted = [executor.submit(time.sleep, d) for d in wave]
                for f in submitted:
                    f.add_done_callback(ended(w))
                futures.extend(submitted)
        except BaseException as e:  # handed to the main thread, which raises it
            submit_error.append(e)
        finally:
            all_submitted.set()

    def sample() -> None:
        while not stop.is_set():
            live = live_blocks(executor)
            t = time.monotonic() - t0
            samples.append((t, live))
            if done_at and (live == 0 or t >= done_at[0] + linger):
                return
            stop.wait(every)

    sampler = threading.Thread(target=sample, daemon=True)
    submitter = threading.Thread(target=submit_waves, daemon=True)
    sampler.start()
    submitter.start()
    try:
        waited = 0
        while True:
            # Wait on each future as soon as it exists, so that a failing task stops the run at once.
            finished = all_submitted.is_set()
            if submit_error:
                raise submit_error[0]
            if waited < len(futures):
                futures[waited].result(timeout=max(1.0, timeout - (time.monotonic() - t0)))
                waited += 1
            elif finished:
                break
            elif time.monotonic() - t0 > timeout:
                raise TimeoutError(f"the validation tasks were not all submitted within {timeout:g} s")
            else:
                all_submitted.wait(0.05)
        makespan = time.monotonic() - t0
        done_at.append(makespan)
        sampler.join(linger + 30.0)
    finally:
        stop.set()
        submitter.join()
        sampler.join()
    return Timeline("slurm", makespan, samples, samples[-1][0], len(executor.status()), wave_ends)


def compare(real: Timeline, sim: Timeline) -> dict[str, Any]:
    """Relative differences (sim vs real) of makespan, block-seconds and block submissions, and the L1
    distance of the curves relative to the real block-seconds, and whether each is within 15% (the
    submissions only when both timelines recorded them); also, for the record, the L1 distance per second
    of the longer observation (mean difference in live blocks), the peak blocks and how long after the
    last task the last block went."""
    mk = abs(sim.makespan - real.makespan) / real.makespan
    area_real = real.block_seconds()
    area = abs(sim.block_seconds() - area_real) / area_real if area_real > 0 else float("inf")
    l1 = curve_l1(real, sim)
    curve = l1 / area_real if area_real > 0 else float("inf")
    duration = max(real.end, sim.end)
    subs: float | None = None
    if real.submissions is not None and sim.submissions is not None:
        subs = (abs(sim.submissions - real.submissions) / real.submissions if real.submissions
                else 0.0 if sim.submissions == 0 else float("inf"))
    return {"makespan_real": real.makespan, "makespan_sim": sim.makespan, "makespan_error": mk,
            "block_seconds_real": area_real, "block_seconds_sim": sim.block_seconds(), "block_seconds_error": area,
            "submissions_real": real.submissions, "submissions_sim": sim.submissions, "submissions_error": subs,
            "curve_l1": l1, "curve_l1_per_second": l1 / duration if duration > 0 else 0.0, "curve_error": curve,
            "wave_ends_real": real.wave_ends, "wave_ends_sim": sim.wave_ends,
            "peak_blocks_real": max((b for _, b in real.samples), default=0),
            "peak_blocks_sim": max((b for _, b in sim.samples), default=0),
            "last_block_gone_real": real.last_block_gone(), "last_block_gone_sim": sim.last_block_gone(),
            "within_tolerance": (mk <= TOLERANCE and area <= TOLERANCE and curve <= TOLERANCE
                                 and (subs is None or subs <= TOLERANCE))}


def plot(real: Timeline, sim: Timeline, path: Path, arrivals: list[float] | None = None) -> None:
    """Both timelines in one plot: live blocks over time until each observation's end, makespans marked,
    and ``arrivals`` (when tasks were submitted) as grey ticks at the bottom."""
    from simcluster.plots import _METADATA, _pyplot

    plt = _pyplot()
    ticks = arrivals if arrivals and len(arrivals) > 1 else []
    fig, ax = plt.subplots(figsize=(9 if ticks else 7, 2.8))
    for t in ticks:
        ax.axvline(t, ymax=0.08, color="grey", linewidth=3)
    for tl, style, color in ((real, "-", "tab:blue"), (sim, "--", "tab:orange")):
        end = tl.end
        ts = [t for t, _ in tl.samples if t <= end] + [end]
        bs = [b for t, b in tl.samples if t <= end]
        bs.append(bs[-1] if bs else 0)
        ax.step(ts, bs, style, where="post", color=color, label=f"{tl.source} (makespan {tl.makespan:.1f} s)")
        ax.axvline(tl.makespan, linestyle=":", color=color, linewidth=1)
    ax.set_xlabel("seconds since the executor started (dotted: last task ended"
                  + ("; grey: a wave submitted)" if ticks else ")"))
    ax.set_ylabel("live blocks")
    ax.set_yticks(range(0, max([b for _, b in real.samples + sim.samples] + [1]) + 1))
    ax.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata=_METADATA)
    plt.close(fig)


def output_prefix(case: str) -> str:
    """File name prefix of a case's outputs: none for ``bag`` (the names it always had), ``waves-`` etc."""
    return "" if case == "bag" else f"{case}-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simcluster.validate", description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", type=float, required=True, help="measured job start latency, seconds")
    p.add_argument("--case", choices=CASES, default="bag", help="which workload (default: bag)")
    p.add_argument("--workers-per-node", type=int, default=None)
    p.add_argument("--real", help="the real run's timeline (JSON written by Timeline.to_json)")
    p.add_argument("--out", default="sim-out/validation", help="output folder")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = output_prefix(args.case)
    sim = sim_timeline(args.latency, args.case, workers_per_node=args.workers_per_node)
    (out / f"{prefix}sim.json").write_text(sim.to_json())
    print(f"simcluster: makespan {sim.makespan:.1f} s, {sim.block_seconds():.0f} block-seconds, "
          f"{sim.submissions} blocks submitted", file=sys.stderr)
    if not args.real:
        print("no real timeline given (--real): the Slurm side has not run", file=sys.stderr)
        return 0
    real = Timeline.from_json(Path(args.real).read_text())
    result = compare(real, sim)
    (out / f"{prefix}comparison.json").write_text(json.dumps(result, indent=1))
    plot(real, sim, out / f"{prefix}validation.png", [t for t, _ in schedule(args.case)])
    print(json.dumps(result, indent=1), file=sys.stderr)
    return 0 if result["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
