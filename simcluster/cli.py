"""``htex-ref sim SCENARIO`` and ``python -m simcluster SCENARIO``: run a scenario, write its report."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path


def parser(prog: str = "htex-ref sim") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Simulate a scenario (TOML): a cluster, other users' load, a workload and executor "
                    "configurations; write CSV files and plots to the output folder.")
    p.add_argument("scenario", nargs="?", help="scenario TOML file (see examples/scenarios/ and docs/simcluster.md)")
    p.add_argument("--replay", metavar="RUN_DIR", help="instead of a scenario: simulate a recorded run (its "
                   "monitoring database) under its own settings and under each --alt")
    p.add_argument("--alt", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="with --replay: an alternative configuration, as changes to the recorded one "
                        "(e.g. strategy=simple or max_idletime=30,max_blocks=4); repeat for more")
    p.add_argument("-o", "--out", help="output folder (default: sim-out/<scenario name>)")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--only", action="append", metavar="LABEL", help="run only this executor configuration "
                   "(repeat for more)")
    p.add_argument("--no-plots", action="store_true", help="write CSV files only (no matplotlib needed)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    return p


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None, prog: str = "htex-ref sim") -> int:
    """Simulate a scenario on a simulated batch cluster."""
    p = parser(prog)
    args = p.parse_args(argv)
    from simcluster.engine import run
    from simcluster.scenario import ScenarioError, load_scenario

    if args.replay is not None:
        return _replay(args, prog)
    if args.scenario is None:
        p.error("a scenario file is needed (or --replay RUN_DIR)")
    if args.alt:
        p.error("--alt goes with --replay")

    try:
        scenario = load_scenario(args.scenario)
    except (ScenarioError, OSError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if args.seed is not None:
        scenario = scenario.with_seed(args.seed)
    if args.only:
        unknown = sorted(set(args.only) - {e.label for e in scenario.executors})
        if unknown:
            print(f"{prog}: no executor configuration labelled {unknown}; the scenario has "
                  f"{[e.label for e in scenario.executors]}", file=sys.stderr)
            return 2
        scenario = dataclasses.replace(scenario, executors=tuple(e for e in scenario.executors
                                                                 if e.label in args.only))
    out = Path(args.out) if args.out else Path("sim-out") / scenario.name
    # Plots are the one part that needs an extra: without matplotlib the CSV files are the report.
    plots = not args.no_plots and _have_matplotlib()
    try:
        results = run(scenario, out, progress=None if not args.quiet else False, plots=plots)
    except ScenarioError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        for r in results.runs:
            m = r.metrics
            mk = m["makespan"]
            mpi = ""
            if m["mpi_policy"] and not math.isnan(m["wait_max"]):
                shared = ", shared nodes" if r.config.mpi_share_nodes else ""
                mpi = (f"MPI {m['mpi_policy']}{shared}: node utilization {m['utilization']:.0%}, longest wait "
                       f"{m['wait_max']:.0f} s; ")
            print(f"{r.label}: makespan {'-' if math.isnan(mk) else f'{mk:.0f} s'}, {m['done']}/{m['tasks']} done, "
                  f"{m['node_hours_allocated']:.1f} node-hours allocated ({m['idle_node_hours']:.1f} idle), "
                  f"{m['blocks_submitted']} blocks; {mpi}simulated {r.sim_seconds:.0f} s in {r.wall_seconds:.2f} s "
                  f"({r.speed:.0f}x)", file=sys.stderr)
            if scenario.faults:
                print(f"  faults: {m['interchange_restarts']} interchange restarts ({m['requeued_after_restart']} "
                      f"tasks queued again, {m['adopted_after_restart']} claimed by pools), {m['partitions']} "
                      f"partitions ({m['dropped_on_pools']} tasks dropped by returning pools); {m['retries']} "
                      f"retries, {m['duplicate_runs']} duplicate runs, "
                      f"{m['late_results']} late results dropped, {m['delivered_twice']} delivered twice, "
                      f"{m['never_resolved']} never resolved", file=sys.stderr)
        print(f"report in {out}/", file=sys.stderr)
        if not plots and not args.no_plots:
            print("no plots: matplotlib is not installed (pip install 'htex-ref[sim]' adds timeline.png and "
                  "comparison.png)", file=sys.stderr)
    return 0


def _replay(args: argparse.Namespace, prog: str) -> int:
    from simcluster.replay import replay
    from simcluster.scenario import ScenarioError

    out = Path(args.out) if args.out else Path("sim-out") / f"replay-{Path(args.replay).name}"
    try:
        recorded, runs = replay(args.replay, out, args.alt, plots=not args.no_plots and _have_matplotlib())
    except ScenarioError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"recorded: makespan {recorded['makespan']:.1f} s, {recorded['node_hours_allocated'] * 3600:.0f} "
              f"block-node-seconds, {recorded['blocks_submitted']} blocks", file=sys.stderr)
        for r in runs:
            m = r.metrics
            print(f"{r.label}: makespan {m['makespan']:.1f} s, {m['node_hours_allocated'] * 3600:.0f} "
                  f"block-node-seconds, {m['blocks_submitted']} blocks, {m['done']}/{m['tasks']} done",
                  file=sys.stderr)
        print(f"report in {out}/", file=sys.stderr)
    return 0
