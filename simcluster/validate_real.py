"""The real side of the validation run, and the whole run end to end, on a Slurm cluster that is already up.

Given the ClusterInfo file a cluster script wrote (``python -m clusters.local_slurm up --info FILE``; read
here as plain JSON, so that simcluster does not depend on the repository's ``clusters`` package), this:

0. waits, before each real measurement, until the machine's 1-minute load average is below ``--max-load``
   (checked every 30 s; after ``--load-wait`` seconds of waiting in all it goes on anyway), because the
   real side's numbers depend on the machine's load; the load at each start goes into the comparison;
1. measures the *job start latency* on the idle cluster: an executor with the same SlurmProvider and
   launcher settings as the validation run (``REAL_SETTINGS``) but no scaling strategy submits one block;
   the latency is the time from just before the submission to its first manager registering. Each of
   ``--repeats`` measurements (default 3) waits for the block's job to leave the queue before the next;
   the median is the calibration;
2. for each case of ``--cases`` (default: ``bag`` and ``waves``), runs its workload
   (``simcluster.validate.real_timeline``) on an executor built from ``REAL_SETTINGS``, started just
   before, and writes ``real.json``;
3. runs the simulation of the case calibrated with that median alone and writes ``sim.json``,
   ``comparison.json`` (with the measured latencies) and ``validation.png``.

With ``--replay``, each case's recorded run (the executor's monitoring database) is also replayed
(``simcluster.replay``: the workload, cluster and settings read from the database alone) and the replay's
makespan and node-seconds are compared with the recorded ones (``replay.json``; tolerance 10 %); with
``--replay-only`` that is all it does (no latency measurements, no calibrated simulation).

The ``bag`` case's files have those names; the others' have the case as a prefix (``waves-real.json``...).
It starts and stops nothing but executors and their blocks: ``scripts/sim-validate.sh`` brings a local
cluster up and down around it (``nox -s sim_validate``). Exits 1 when a difference exceeds the tolerance
in any case.

    python -m simcluster.validate_real --info FILE [--out DIR] [--repeats 3] [--cases bag,waves]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simcluster.validate import (
    CASES,
    REAL_SETTINGS,
    Timeline,
    compare,
    output_prefix,
    plot,
    real_timeline,
    schedule,
    sim_timeline,
)


@dataclass(frozen=True)
class Cluster:
    """What the run needs from a ClusterInfo file (``clusters/info.py`` defines the format)."""

    address: str
    partition: str
    shared_dir: str
    env: dict[str, str]
    worker_pool_cmd: str | None = None
    worker_init: str = ""

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Cluster:
        d = json.loads(Path(path).read_text())
        return cls(str(d["address"]), str(d["partition"]), str(d["shared_dir"]), dict(d.get("env") or {}),
                   d.get("worker_pool_cmd"), str(d.get("worker_init") or ""))


def make_executor(cluster: Cluster, run_name: str, **executor_overrides: Any) -> Any:
    """An executor with a SlurmProvider, both from ``REAL_SETTINGS`` (``executor_overrides`` on top), that
    binds ``cluster.address`` and keeps its run directory under the shared directory. Not started."""
    from htex_ref import HighThroughputExecutor
    from htex_ref.launch import DEFAULT_LAUNCH_CMD
    from htex_ref.launchers import SrunLauncher
    from htex_ref.providers.slurm import SlurmProvider

    provider = SlurmProvider(partition=cluster.partition, launcher=SrunLauncher(), cmd_timeout=30,
                             worker_init=cluster.worker_init, **REAL_SETTINGS["provider"])
    kwargs: dict[str, Any] = {**REAL_SETTINGS["executor"], **executor_overrides}
    if cluster.worker_pool_cmd:
        kwargs["launch_cmd"] = DEFAULT_LAUNCH_CMD.replace("{worker_pool}", cluster.worker_pool_cmd)
    run_dir = Path(cluster.shared_dir) / "runs" / f"sim-validate-{run_name}-{os.getpid()}"
    return HighThroughputExecutor(provider=provider, address=cluster.address, run_dir=str(run_dir),
                                  label=f"validate-{run_name}", **kwargs)


def queue_empty() -> bool:
    out = subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    return not out.split()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


class LoadGate:
    """Waits for a quiet machine before each real measurement: until the 1-minute load average is below
    ``max_load``, checked every ``every`` seconds, for at most ``budget`` seconds over all waits together
    (then it goes on: a busy machine delays the run but does not stop it). ``max_load`` 0: never waits."""

    def __init__(self, max_load: float, budget: float = 600.0, every: float = 30.0,
                 load: Callable[[], float] = lambda: os.getloadavg()[0],
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_load, self.budget, self.every = max_load, budget, every
        self._load, self._sleep, self._clock = load, sleep, clock
        self.waited = 0.0

    def wait(self, what: str) -> float:
        """Wait as above before ``what``; returns the load average when it starts."""
        load = self._load()
        while self.max_load > 0 and load >= self.max_load and self.waited < self.budget:
            print(f"load average {load:.2f} >= {self.max_load:g}: waiting before {what} "
                  f"({self.waited:.0f} of {self.budget:.0f} s waited)", file=sys.stderr)
            t = self._clock()
            self._sleep(min(self.every, self.budget - self.waited))
            self.waited += self._clock() - t
            load = self._load()
        if self.max_load > 0 and load >= self.max_load:
            print(f"load average still {load:.2f} after waiting {self.waited:.0f} s: {what} runs anyway",
                  file=sys.stderr)
        return load


def measure_latency(cluster: Cluster, index: int = 0, timeout: float = 120.0) -> float:
    """Seconds from submitting one block (through the executor, as its strategy would) on the idle cluster
    to the block's first manager registering with the interchange."""
    wait_until(queue_empty, 60, "the queue to be empty before measuring the job start latency")
    ex = make_executor(cluster, f"latency{index}", strategy="none")
    ex.start()
    try:
        t0 = time.monotonic()
        ex.scale_out(1)
        deadline = t0 + timeout
        while not ex.connected_managers():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no manager registered within {timeout:g} s of submitting a block; "
                                   f"blocks {ex.block_statuses()}; scripts in {ex.provider.script_dir}")
            time.sleep(0.02)
        return time.monotonic() - t0
    finally:
        ex.shutdown(wait=False)
        wait_until(queue_empty, 60, "the latency block's job to leave the queue")


def run_real(cluster: Cluster, case: str = "bag") -> tuple[Timeline, str]:
    """The case's workload on a freshly started executor built from ``REAL_SETTINGS``, its waves submitted
    at their offsets from the executor's start; and the executor's directory (its monitoring database)."""
    wait_until(queue_empty, 60, "the queue to be empty before the validation run")
    ex = make_executor(cluster, case)
    ex.start()
    try:
        return real_timeline(ex, schedule=schedule(case)), ex.logdir
    finally:
        ex.shutdown(wait=False)
        wait_until(queue_empty, 60, "the validation run's jobs to leave the queue")


#: How far a replay's makespan and node-seconds may be from the recorded run's.
REPLAY_TOLERANCE = 0.10


def replay_check(run_dir: str) -> dict[str, Any]:
    """Replay a recorded run under its own settings and compare it with the recording."""
    from simcluster.engine import run_one
    from simcluster.replay import load, recorded_metrics, scenario

    run = load(run_dir)
    sc = scenario(run, [])
    sim = run_one(sc, sc.executors[0]).metrics
    rec = recorded_metrics(run)
    out: dict[str, Any] = {"run_dir": run_dir, "tasks": len(run.tasks),
                           "job_start_latency": sc.executors[0].job_start_latency, "tolerance": REPLAY_TOLERANCE}
    ok = True
    for name, key, scale in (("makespan_s", "makespan", 1.0), ("node_seconds", "node_hours_allocated", 3600.0)):
        recorded, replayed = rec[key] * scale, sim[key] * scale
        diff = abs(replayed - recorded) / recorded if recorded else float("inf")
        out[name] = {"recorded": recorded, "replay": replayed, "relative_difference": diff}
        ok = ok and diff <= REPLAY_TOLERANCE
    out["within_tolerance"] = ok
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simcluster.validate_real", description=__doc__.split("\n\n")[0])
    p.add_argument("--info", required=True, help="ClusterInfo JSON file of a running Slurm cluster")
    p.add_argument("--out", default="sim-out/validation", help="output folder")
    p.add_argument("--repeats", type=int, default=3, help="job start latency measurements (median taken)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)} (default: all)")
    p.add_argument("--max-load", type=float, default=1.5,
                   help="wait before each real measurement until the 1-minute load average is below this "
                        "(0: do not wait; default 1.5)")
    p.add_argument("--load-wait", type=float, default=600.0,
                   help="seconds of waiting for the load, in all, after which the run goes on (default 600)")
    p.add_argument("--replay", action="store_true",
                   help="also replay each recorded run from its monitoring database and compare (10 %%)")
    p.add_argument("--replay-only", action="store_true", help="only run the cases and replay them")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or any(c not in CASES for c in cases):
        p.error(f"--cases takes a comma-separated list of {', '.join(CASES)}; got {args.cases!r}")
    cluster = Cluster.read(args.info)
    os.environ.update(cluster.env)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gate = LoadGate(args.max_load, args.load_wait)

    latencies = []
    latency_load = latency = 0.0
    if not args.replay_only:
        latency_load = gate.wait("the job start latency measurements")
        for i in range(args.repeats):
            latencies.append(measure_latency(cluster, i))
            print(f"job start latency {i + 1}/{args.repeats}: {latencies[-1]:.2f} s", file=sys.stderr)
        latency = statistics.median(latencies)

    ok = True
    for case in cases:
        prefix = output_prefix(case)
        load = gate.wait(f"the {case} case")
        real, run_dir = run_real(cluster, case)
        (out / f"{prefix}real.json").write_text(real.to_json())
        if args.replay or args.replay_only:
            check = replay_check(run_dir)
            (out / f"{prefix}replay.json").write_text(json.dumps(check, indent=1) + "\n")
            print(f"{case}: replay of the recording: {json.dumps(check, indent=1)}", file=sys.stderr)
            ok = ok and bool(check["within_tolerance"])
            if args.replay_only:
                continue
        print(f"{case}: slurm: makespan {real.makespan:.1f} s, {real.block_seconds():.0f} block-seconds, "
              f"{real.submissions} blocks submitted", file=sys.stderr)
        sim = sim_timeline(latency, case)
        (out / f"{prefix}sim.json").write_text(sim.to_json())
        print(f"{case}: simcluster: makespan {sim.makespan:.1f} s, {sim.block_seconds():.0f} block-seconds, "
              f"{sim.submissions} blocks submitted", file=sys.stderr)
        result: dict[str, Any] = {"case": case, "latencies": latencies, "latency": latency,
                                  "load_1min_at_latency": latency_load, "load_1min_at_start": load,
                                  **compare(real, sim)}
        (out / f"{prefix}comparison.json").write_text(json.dumps(result, indent=1) + "\n")
        plot(real, sim, out / f"{prefix}validation.png", [t for t, _ in schedule(case)])
        print(json.dumps(result, indent=1), file=sys.stderr)
        ok = ok and bool(result["within_tolerance"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
