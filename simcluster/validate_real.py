"""The real side of the validation run, and the whole run end to end, on a Slurm cluster that is already up.

Given the ClusterInfo file a cluster script wrote (``python -m clusters.local_slurm up --info FILE``; read
here as plain JSON, so that simcluster does not depend on the repository's ``clusters`` package), this:

1. measures the *job start latency* on the idle cluster: an executor with the same SlurmProvider and
   launcher settings as the validation run (``REAL_SETTINGS``) but no scaling strategy submits one block;
   the latency is the time from just before the submission to its first manager registering. Each of
   ``--repeats`` measurements (default 3) waits for the block's job to leave the queue before the next;
   the median is the calibration;
2. runs the validation workload (``simcluster.validate.real_timeline``) on an executor built from
   ``REAL_SETTINGS``, started just before, and writes ``real.json``;
3. runs the simulation calibrated with that median alone and writes ``sim.json``, ``comparison.json``
   (with the measured latencies) and ``validation.png``.

It starts and stops nothing but executors and their blocks: ``scripts/sim-validate.sh`` brings a local
cluster up and down around it (``nox -s sim_validate``). Exits 1 when a difference exceeds the tolerance.

    python -m simcluster.validate_real --info FILE [--out DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simcluster.validate import REAL_SETTINGS, Timeline, compare, plot, real_timeline, sim_timeline


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
    from htex_ref.executor import DEFAULT_LAUNCH_CMD
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


def run_real(cluster: Cluster) -> Timeline:
    """The validation workload on a freshly started executor built from ``REAL_SETTINGS``."""
    wait_until(queue_empty, 60, "the queue to be empty before the validation run")
    ex = make_executor(cluster, "run")
    ex.start()
    try:
        return real_timeline(ex)
    finally:
        ex.shutdown(wait=False)
        wait_until(queue_empty, 60, "the validation run's jobs to leave the queue")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simcluster.validate_real", description=__doc__.split("\n\n")[0])
    p.add_argument("--info", required=True, help="ClusterInfo JSON file of a running Slurm cluster")
    p.add_argument("--out", default="sim-out/validation", help="output folder")
    p.add_argument("--repeats", type=int, default=3, help="job start latency measurements (median taken)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    cluster = Cluster.read(args.info)
    os.environ.update(cluster.env)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    latencies = []
    for i in range(args.repeats):
        latencies.append(measure_latency(cluster, i))
        print(f"job start latency {i + 1}/{args.repeats}: {latencies[-1]:.2f} s", file=sys.stderr)
    latency = statistics.median(latencies)
    real = run_real(cluster)
    (out / "real.json").write_text(real.to_json())
    print(f"slurm: makespan {real.makespan:.1f} s, {real.block_seconds():.0f} block-seconds", file=sys.stderr)

    sim = sim_timeline(latency)
    (out / "sim.json").write_text(sim.to_json())
    print(f"simcluster: makespan {sim.makespan:.1f} s, {sim.block_seconds():.0f} block-seconds", file=sys.stderr)
    result: dict[str, Any] = {"latencies": latencies, "latency": latency, **compare(real, sim)}
    (out / "comparison.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(real, sim, out / "validation.png")
    print(json.dumps(result, indent=1), file=sys.stderr)
    return 0 if result["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
