"""nox sessions: lint, typecheck, tests, docs, fuzz, bench (against Parsl), parsl_adapter and parsl_suite (Parsl's
own tests on the adapter), the Slurm cluster sessions: slurm (a local multi-node Slurm) and docker_slurm (a Docker
Compose cluster), and gridengine (a Grid Engine cluster in network namespaces)."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "htex_ref", "simcluster", "tests", "noxfile.py", "scripts", "examples", "clusters",
                "benchmarks")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("pytest", "-n", "2", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmark htex_ref against Parsl's HTEx in the same run (Parsl gets its own environment)."""
    session.install("-e", ".")
    session.run("htex-ref", "bench", "--compare", "parsl", *session.posargs)


@nox.session
def fuzz(session: nox.Session) -> None:
    """Long property-test run of the affinity planner (hypothesis examples raised through HTEX_FUZZ_EXAMPLES)."""
    session.install("-e", ".[dev]")
    session.run("pytest", "tests/unit/test_affinity.py", "-q", "-p", "no:cacheprovider", *session.posargs,
                env={"HTEX_FUZZ_EXAMPLES": "20000"})


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/ (strict: any warning fails the build)."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", *session.posargs)


#: Parsl (pinned: the adapter drives Parsl's executor interface) and what its test suite needs.
PARSL_REQUIREMENTS = "tests/parsl_suite/requirements.txt"


@nox.session
def parsl_adapter(session: nox.Session) -> None:
    """htex_ref under Parsl's own Config through htex_ref.parsl_adapter: scaling by Parsl's strategy, errors as
    Parsl's classes, monitoring, the seed configs (installs Parsl)."""
    session.install("-e", ".", "-r", PARSL_REQUIREMENTS)
    session.run("pytest", "tests/e2e/test_parsl_adapter.py", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def parsl_suite(session: nox.Session) -> None:
    """Parsl's own test suite on the adapter and on Parsl's HTEx, same selections, compared
    (tests/parsl_suite/run.py). About 8 minutes on 2 cores; --only config takes one."""
    session.install("-e", ".", "-r", PARSL_REQUIREMENTS)
    session.run("python", "tests/parsl_suite/run.py", *session.posargs)


@nox.session
def slurm(session: nox.Session) -> None:
    """Cluster tests on a local multi-node Slurm that the session starts and stops (root; installs Slurm with
    apt when missing). The nodes share this file system, so their worker pools run this session's Python."""
    session.install("-e", ".[dev]")
    python = os.path.join(session.bin, "python")
    session.run("bash", "scripts/test-slurm-local.sh", *session.posargs, env={"PYTHON": python}, external=True)


@nox.session
def docker_slurm(session: nox.Session) -> None:
    """Cluster tests against the Docker Compose Slurm cluster (containers/); root. Installs Docker and Slurm."""
    session.install("-e", ".[dev]")
    python = os.path.join(session.bin, "python")
    session.run("bash", "scripts/test-slurm-compose.sh", *session.posargs, env={"PYTHON": python}, external=True)


@nox.session
def gridengine(session: nox.Session) -> None:
    """Cluster tests of GridEngineProvider on a real Son of Grid Engine that the session starts and stops (a qmaster
    and two execution hosts in network namespaces; root; installs Grid Engine with apt when missing). The hosts share
    this file system, so their worker pools run this session's Python."""
    session.install("-e", ".[dev]")
    python = os.path.join(session.bin, "python")
    session.run("bash", "scripts/test-gridengine.sh", *session.posargs, env={"PYTHON": python}, external=True)


@nox.session
def sim(session: nox.Session) -> None:
    """simcluster's tests, then the smoke scenario through the command line."""
    session.install("-e", ".[dev]")
    session.run("pytest", "tests/sim", "-q", "-p", "no:cacheprovider", *session.posargs)
    session.run("htex-ref", "sim", "examples/scenarios/smoke.toml", "-o", "sim-out/smoke")


@nox.session
def sim_bench(session: nox.Session) -> None:
    """simcluster speed on the 1,000,000-task scenario (goal: under 60 s and 2 GB; run on a quiet machine);
    ``nox -s sim_bench -- examples/scenarios/bench-10k.toml`` for 10,000 nodes x 128 workers (60 s, 4 GB)."""
    session.install("-e", ".[sim]")
    session.run("python", "benchmarks/sim_speed.py", *session.posargs)


@nox.session
def replay_validate(session: nox.Session) -> None:
    """Replay against real Slurm: starts a local 3-node cluster (as ``sim_validate``), runs the validation
    workloads there with monitoring on, replays each recorded run in simcluster from its monitoring
    database alone (``htex-ref sim --replay``'s reading), and fails when the replay's makespan or
    node-seconds differ from the recording by more than 10%; always stops the cluster. Arguments go to
    ``python -m simcluster.validate_real`` (after ``--replay-only``)."""
    session.install("-e", ".[sim]")
    python = os.path.join(session.bin, "python")
    session.run("bash", "scripts/sim-validate.sh", "--replay-only", "--out", "sim-out/replay-validation",
                *session.posargs, env={"PYTHON": python}, external=True)


@nox.session
def sim_validate(session: nox.Session) -> None:
    """simcluster against a real local Slurm cluster (3 nodes, htex_auto_scale; 300 tasks of 1-2 s at once,
    and four waves of them that scale blocks out and in): starts the cluster (root; installs Slurm with apt
    when missing), measures the job start latency, runs both workloads there and in simcluster calibrated
    with it, writes the comparisons and plots (sim-out/validation), fails beyond 15%, and always stops the
    cluster. Arguments go to ``python -m simcluster.validate_real``."""
    session.install("-e", ".[sim]")
    python = os.path.join(session.bin, "python")
    session.run("bash", "scripts/sim-validate.sh", *session.posargs, env={"PYTHON": python}, external=True)


@nox.session
def scale(session: nox.Session) -> None:
    """The interchange at a 10,000-node allocation (issue 21): 10,000 fake managers x 128 slots register at once
    and staggered, within 10 s, none refused or lost, no false ManagerLost, interchange RSS under 1 GiB; then the
    1 / 1,000 / 10,000-manager sweep. Nightly-sized: about 2 minutes on 2 cores (40 s of tests, 75 s of sweep),
    heavy on CPU and memory, so not in CI. Needs a hard open-files limit of about 10,100 for the interchange and
    2 per fake manager per process (the benchmark raises its soft limits), and net.core.somaxconn of a few thousand."""
    session.install("-e", ".[dev]")
    session.run("pytest", "tests/e2e/test_interchange_scale.py", "-q", "-p", "no:cacheprovider", *session.posargs,
                env={"HTEX_SCALE": "1"})
    session.run("htex-ref", "bench", "--fake-managers", "1,1000,10000", "--workers-per-manager", "128", "--tasks",
                "100000", "--rounds", "1")
