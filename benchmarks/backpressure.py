"""Backpressure: memory and speed of a producer that submits many tasks, with and without ``max_outstanding``.

    python benchmarks/backpressure.py                # 200,000 no-op tasks with 2 KB arguments; no limit vs 10,000
    python benchmarks/backpressure.py --tasks 1000000 --limits none,1000,10000 --payload 0

Each configuration runs in a fresh process on this machine (one LocalProvider block, 2 workers,
unencrypted). The producer submits every task from one thread and keeps only a running count of
results (as a streaming workflow would), so the executor's and interchange's own memory is what grows.
Reported: wall time, tasks/s, and the peak RSS of the executor's process and of the interchange.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, sys, tempfile, threading, time
import psutil
from htex_ref import HighThroughputExecutor, LocalProvider

def noop(x, payload, seconds=0.0):
    if seconds:
        time.sleep(seconds)
    return x

tasks, limit = int(sys.argv[1]), None if sys.argv[2] == "none" else int(sys.argv[2])
payload = b"x" * int(sys.argv[3])
seconds = float(sys.argv[4])
me = psutil.Process()
peak = {"executor": 0, "interchange": 0}
done = threading.Event()

def sample(interchange):
    while not done.wait(0.05):
        peak["executor"] = max(peak["executor"], me.memory_info().rss)
        peak["interchange"] = max(peak["interchange"], interchange.memory_info().rss)

with tempfile.TemporaryDirectory() as run_dir:
    ex = HighThroughputExecutor(provider=LocalProvider(), max_workers_per_node=2, encrypted=False,
                                run_dir=run_dir, max_outstanding=limit)
    with ex:
        ex.submit(noop, 0, b"").result(60)
        sampler = threading.Thread(target=sample, args=(psutil.Process(ex.interchange_process.pid),), daemon=True)
        sampler.start()
        finished = [0]
        def count(_f):
            finished[0] += 1
        t0 = time.perf_counter()
        for i in range(tasks):
            ex.submit(noop, i, payload, seconds).add_done_callback(count)
        while finished[0] < tasks:
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
print(json.dumps({"limit": limit, "tasks": tasks, "wall_s": wall, "tasks_per_s": tasks / wall,
                  "executor_peak_mib": peak["executor"] / 2**20,
                  "interchange_peak_mib": peak["interchange"] / 2**20}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200_000)
    ap.add_argument("--payload", type=int, default=2048, help="bytes of argument data per task")
    ap.add_argument("--seconds", type=float, default=0.0, help="seconds each task sleeps")
    ap.add_argument("--limits", default="none,10000", help="comma-separated max_outstanding values ('none': no limit)")
    args = ap.parse_args(argv)
    print(f"{'max_outstanding':>16} {'tasks':>9} {'wall s':>8} {'tasks/s':>9} {'executor peak MiB':>18} "
          f"{'interchange peak MiB':>21}")
    for limit in args.limits.split(","):
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.tasks), limit.strip(), str(args.payload),
                              str(args.seconds)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['limit']!s:>16} {r['tasks']:>9} {r['wall_s']:>8.1f} {r['tasks_per_s']:>9.0f} "
              f"{r['executor_peak_mib']:>18.0f} {r['interchange_peak_mib']:>21.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
