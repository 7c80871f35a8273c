"""Small scenarios for the simulation tests, built as TOML-shaped dicts."""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Any

from simcluster import Scenario, parse_scenario, run_one
from simcluster.engine import RunResult
from simcluster.pilot import Pilot

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "examples" / "scenarios" / "smoke.toml"

BASE: dict[str, Any] = {
    "name": "t",
    "seed": 3,
    "cluster": {"partitions": [{"name": "compute", "nodes": 4, "cores": 4, "memory_gb": 16}]},
    "workload": [{"kind": "bag", "tasks": 20, "duration": {"dist": "fixed", "value": 10}}],
    "executor": [{"label": "x", "strategy": "htex_auto_scale", "nodes_per_block": 1, "max_blocks": 2,
                  "walltime": 3600, "max_workers_per_node": 4, "job_start_latency": 5, "max_idletime": 60,
                  "prefetch_capacity": 0}],
}


def scenario(**changes: Any) -> Scenario:
    """BASE with top-level keys replaced; ``executor=`` / ``cluster=`` dicts are merged into the first one."""
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if key == "executor" and isinstance(value, dict):
            data["executor"][0].update(value)
        elif key == "partition":
            data["cluster"]["partitions"][0].update(value)
        elif key == "cluster" and isinstance(value, dict):
            data["cluster"].update(value)
        else:
            data[key] = value
    return parse_scenario(data)


def simulate(sc: Scenario) -> tuple[RunResult, Pilot]:
    r = run_one(sc, sc.executors[0], keep=True)
    assert r.pilot is not None
    return r, r.pilot


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))
