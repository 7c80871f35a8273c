"""A run recorded on the real Slurm cluster, replayed in simcluster from its monitoring database alone."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

from tests.cluster.conftest import ClusterExecutors


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_slurm_run_replays_close_to_what_happened(executors: ClusterExecutors, tmp_path: Path) -> None:
    p = executors.provider(init_blocks=1, min_blocks=0, max_blocks=2)
    ex = executors(p, max_workers_per_node=2, strategy="simple", strategy_period=1, max_idletime=3)
    futures = [ex.submit(nap, 1.0 + (i % 3) * 0.5) for i in range(40)]
    assert all(f.result(300) >= 1.0 for f in futures)
    time.sleep(2)
    ex.shutdown()
    out = tmp_path / "replay"
    run = subprocess.run([sys.executable, "-m", "simcluster", "--replay", ex.logdir, "-o", str(out), "--no-plots",
                          "--alt", "max_blocks=1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    print("\n" + run.stderr)
    rows = {r["label"]: r for r in csv.DictReader((out / "runs.csv").open())}
    recorded, replay = float(rows["recorded"]["makespan"]), float(rows["replay"]["makespan"])
    assert int(rows["replay"]["done"]) == 40
    # A short run on a busy 2-core machine: a wide margin (nox -s replay_validate checks 10 % on longer runs).
    assert abs(replay - recorded) <= 0.3 * recorded, (recorded, replay)
    assert float(rows["max_blocks-1"]["makespan"]) >= 0.9 * replay
