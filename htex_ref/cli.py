"""The ``htex-ref`` command: ``htex-ref demo``, ``htex-ref bench``, ``htex-ref status``, ``htex-ref report``,
and commands other packages add by entry point (``htex-ref sim``, from simcluster)."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any


def square(x: int) -> int:
    return x * x


def fail(x: int) -> int:
    raise ValueError(f"cannot handle {x}")


def whoami(delay: float) -> tuple[int, str, str]:
    """Report which worker ran this task; ``delay`` keeps the worker busy so the others get tasks too."""
    time.sleep(delay)
    return os.getpid(), os.environ.get("PARSL_WORKER_RANK", "?"), socket.gethostname()


def demo() -> int:
    from htex_ref import HighThroughputExecutor

    print("htex-ref demo: a HighThroughputExecutor with 2 local workers")
    t0 = time.perf_counter()
    with HighThroughputExecutor(max_workers_per_node=2) as ex:
        print(f"  started in {time.perf_counter() - t0:.3f} s: {ex!r}")

        t1 = time.perf_counter()
        first = ex.submit(square, 7).result(timeout=60)
        print(f"  first result square(7) = {first} after {time.perf_counter() - t1:.3f} s "
              f"({time.perf_counter() - t0:.3f} s after start)")

        t1 = time.perf_counter()
        futures = [ex.submit(square, i) for i in range(10)]
        squares = [f.result(timeout=60) for f in futures]
        print(f"  squares of 0..9 = {squares} in {time.perf_counter() - t1:.3f} s")

        t1 = time.perf_counter()
        n = 1000
        total = sum(ex.map(square, range(n), timeout=120))
        elapsed = time.perf_counter() - t1
        print(f"  sum of squares of 0..{n - 1} via map = {total} "
              f"in {elapsed:.3f} s ({n / elapsed:.0f} tasks/s)")

        print("  a task that raises ValueError:")
        try:
            ex.submit(fail, 3).result(timeout=60)
            print("    (unexpectedly, no exception)")
        except ValueError as e:
            print(f"    caught {type(e).__name__}: {e}")
            cause: Any = e.__cause__
            if cause is not None:
                print("    remote traceback:")
                text = getattr(cause, "tb", str(cause))
                for line in str(text).rstrip().splitlines():
                    print(f"      {line}")

        print("  which worker ran each task (pid, PARSL_WORKER_RANK, host):")
        t1 = time.perf_counter()
        reports = [f.result(timeout=60) for f in [ex.submit(whoami, 0.2) for _ in range(6)]]
        for i, (pid, rank, host) in enumerate(reports):
            print(f"    task {i}: pid {pid}, rank {rank}, host {host}")
        workers = sorted({(pid, rank) for pid, rank, _ in reports}, key=lambda w: w[1])
        print(f"  {len(workers)} distinct worker(s): "
              + ", ".join(f"rank {rank} (pid {pid})" for pid, rank in workers)
              + f"; 6 tasks of 0.2 s took {time.perf_counter() - t1:.3f} s")
        t1 = time.perf_counter()
    print(f"  shut down in {time.perf_counter() - t1:.3f} s; total {time.perf_counter() - t0:.3f} s")
    return 0


#: Commands other packages add to ``htex-ref`` (simcluster adds ``sim``), by entry point, so that htex_ref
#: does not import them: ``[project.entry-points."htex_ref.commands"]`` in their pyproject.toml.
PLUGIN_GROUP = "htex_ref.commands"


def _plugin(name: str) -> Callable[[list[str]], int] | None:
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        if ep.name == name:
            command: Callable[[list[str]], int] = ep.load()
            return command
    return None


def _parser() -> argparse.ArgumentParser:
    from htex_ref.version import __version__

    p = argparse.ArgumentParser(prog="htex-ref", description="htex_ref: a pilot-job executor for Python.")
    p.add_argument("--version", action="version", version=f"htex-ref {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("demo", help="run a small local demo", description="Run a small local demo.")
    sub.add_parser("bench", add_help=False,
                   help="benchmark htex_ref, optionally against Parsl (see htex-ref bench --help)")
    sub.add_parser("status", add_help=False,
                   help="what a run is doing or did, or why a task waits (see htex-ref status --help)")
    sub.add_parser("report", add_help=False,
                   help="a self-contained HTML report of a run (see htex-ref report --help)")
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        summary = ((ep.load().__doc__ or "").strip().splitlines() or [ep.value])[0].rstrip(".")
        sub.add_parser(ep.name, add_help=False, help=f"{summary} (see htex-ref {ep.name} --help)")
    return p


def main(argv: list[str] | None = None) -> None:
    args_in = sys.argv[1:] if argv is None else list(argv)
    if args_in and args_in[0] == "bench":
        # Everything after "bench" belongs to the bench command's own parser (its --help included).
        from htex_ref.bench import runner

        sys.exit(runner.main(args_in[1:]))
    if args_in and args_in[0] == "status":
        from htex_ref import status

        sys.exit(status.main(args_in[1:]))
    if args_in and args_in[0] == "report":
        from htex_ref import report

        sys.exit(report.main(args_in[1:]))
    command = _plugin(args_in[0]) if args_in else None
    if command is not None:
        sys.exit(command(args_in[1:]))
    parser = _parser()
    args = parser.parse_args(args_in)
    if args.command == "demo":
        sys.exit(demo())
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover


if __name__ == "__main__":
    main()
