"""What a simulation run gives back: ``RunResult`` per executor configuration, ``Results`` per scenario."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simcluster.pilot import Pilot, Sample
from simcluster.scenario import ExecutorConfig, Scenario


@dataclass
class RunResult:
    label: str
    config: ExecutorConfig
    #: The ``runs.csv`` row: see ``simcluster.metrics``.
    metrics: dict[str, Any]
    timeline: list[Sample]
    #: Simulated seconds (from the start of the background warm-up) and the wall seconds they took.
    sim_seconds: float
    wall_seconds: float
    #: The finished simulation (tasks, blocks, managers), when ``run(..., keep=True)``.
    pilot: Pilot | None = None

    @property
    def speed(self) -> float:
        """Simulated seconds per wall-clock second."""
        return self.sim_seconds / self.wall_seconds if self.wall_seconds > 0 else math.inf


@dataclass
class Results:
    scenario: Scenario
    runs: list[RunResult] = field(default_factory=list)
    out_dir: Path | None = None

    def metrics(self) -> list[dict[str, Any]]:
        return [r.metrics for r in self.runs]

    def __getitem__(self, label: str) -> RunResult:
        for r in self.runs:
            if r.label == label:
                return r
        raise KeyError(label)
