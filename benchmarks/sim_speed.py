"""simcluster speed: wall time, simulated seconds per wall second and peak memory of a scenario.

    python benchmarks/sim_speed.py                       # examples/scenarios/bench-1m.toml
    python benchmarks/sim_speed.py SCENARIO --repeat 3   # best and median of 3 runs, each in a fresh process
    python benchmarks/sim_speed.py examples/scenarios/bench-10k.toml   # 10,000 nodes x 128 workers

Each run is a fresh process (``python -m simcluster ... --no-plots -q`` under ``resource`` accounting), so
peak RSS is that run's alone. The goals, on the project's 2-core machine (measure on a quiet machine):
bench-1m (24 h, 1,024 nodes x 32 workers, 1,000,000 tasks) under 60 s and 2 GB; bench-10k (10,000 nodes x
128 workers, 1,000,000 tasks) under 60 s and 4 GB. For these the last line says whether the goal was met.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Scenario file name -> (wall seconds, peak RSS in MB) to stay under (issue 21 for bench-10k).
GOALS = {"bench-1m.toml": (60.0, 2048.0), "bench-1m-poisson.toml": (60.0, 2048.0), "bench-10k.toml": (60.0, 4096.0)}

CHILD = """
import json, resource, sys, time
import simcluster
sc = simcluster.load_scenario(sys.argv[1])
t = time.perf_counter()
res = simcluster.run(sc, sys.argv[2], plots=False)
wall = time.perf_counter() - t
r = res.runs[0]
print(json.dumps({"wall_total": wall, "wall_sim": r.wall_seconds, "sim_seconds": r.sim_seconds,
                  "tasks": r.metrics["tasks"], "done": r.metrics["done"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", nargs="?", default=str(ROOT / "examples" / "scenarios" / "bench-1m.toml"))
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    rows = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", CHILD, args.scenario, out], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONHASHSEED": "0"})
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["wall_process"] = time.perf_counter() - t
            rows.append(row)
            print(f"run {i + 1}: {row['wall_process']:.1f} s wall in all ({row['wall_sim']:.1f} s simulating; the "
                  f"rest is start-up, drawing the tasks and writing the CSV files), "
                  f"{row['sim_seconds'] / row['wall_sim']:.0f} simulated s per wall s, "
                  f"peak RSS {row['peak_rss_mb']:.0f} MB, {row['done']}/{row['tasks']} tasks done", flush=True)
    walls = [r["wall_process"] for r in rows]
    print(f"best {min(walls):.1f} s, median {statistics.median(walls):.1f} s over {len(rows)} runs; "
          f"max peak RSS {max(r['peak_rss_mb'] for r in rows):.0f} MB; "
          f"(children's max RSS by getrusage: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB)")
    goal = GOALS.get(Path(args.scenario).name)
    if goal is not None:
        # The median run against the goal: one slow run on a shared machine is not a regression.
        met = statistics.median(walls) < goal[0] and max(r["peak_rss_mb"] for r in rows) < goal[1]
        print(f"goal (under {goal[0]:.0f} s and {goal[1] / 1024:.0f} GB): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
