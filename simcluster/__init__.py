"""simcluster: "what would this executor configuration do with this workload on this cluster?", in seconds.

A simulated batch cluster (simpy: partitions, FCFS with EASY backfill, other users' jobs, walltime kills,
node failures) exposed as an htex_ref provider, driven by htex_ref's own interchange, block control,
scaling strategy and block error handlers on the simulated clock. See ``docs/simcluster.md``.

    import simcluster

    scenario = simcluster.load_scenario("examples/scenarios/smoke.toml")
    results = simcluster.run(scenario, "sim-out")
    for row in results.metrics():
        print(row["label"], row["makespan"], row["idle_node_hours"])

Modules: ``scenario`` (the TOML format), ``workload`` (tasks and background jobs), ``scheduler`` (the batch
system), ``provider`` (``SimProvider``), ``pilot`` (the executor on the simulated clock), ``engine``
(``run``), ``metrics`` (CSV files), ``plots``, ``validate`` (against a real cluster), ``cli``.
"""

from __future__ import annotations

from simcluster.engine import Results, RunResult, run, run_one
from simcluster.scenario import (
    Background,
    Choice,
    Cluster,
    Distribution,
    ExecutorConfig,
    Partition,
    Phase,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
)

__all__ = [
    "Background",
    "Choice",
    "Cluster",
    "Distribution",
    "ExecutorConfig",
    "Partition",
    "Phase",
    "Results",
    "RunResult",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "parse_scenario",
    "run",
    "run_one",
]
