"""One benchmark round for one executor, in a fresh process; prints one JSON line.

Run by ``htex-ref bench`` as ``python child.py --impl htex_ref|parsl``. Standard library at module level,
so Parsl's environment can run it too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--impl", choices=["htex_ref", "parsl"], required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tasks", type=int, default=10000)
    p.add_argument("--encrypted", action="store_true")
    p.add_argument("--prefetch", type=int, default=None, help="htex_ref prefetch_capacity (default: automatic)")
    p.add_argument("--no-monitoring", action="store_true", help="htex_ref with monitoring=False")
    args = p.parse_args()
    run_dir = tempfile.mkdtemp(prefix=f"bench-{args.impl}-")
    ex: Any
    if args.impl == "htex_ref":
        from htex_ref import HighThroughputExecutor, LocalProvider
        from htex_ref.bench import workloads

        t0 = time.perf_counter()
        ex = HighThroughputExecutor(
            label="bench", provider=LocalProvider(), max_workers_per_node=args.workers,
            encrypted=args.encrypted, run_dir=run_dir, prefetch_capacity=args.prefetch,
            address="127.0.0.1", monitoring=not args.no_monitoring,
        )
        ex.start()
        stop = ex.shutdown
    else:
        sys.path.insert(0, HERE)
        import parsl_peer  # type: ignore[import-not-found]
        import workloads  # type: ignore[import-not-found,no-redef]

        t0 = time.perf_counter()
        ex = parsl_peer.make_executor(args.workers, args.encrypted, run_dir, pythonpath=[HERE])

        def stop() -> None:
            parsl_peer.shutdown(ex)

    try:
        result = workloads.measure(ex, t0, args.workers, args.tasks)
    finally:
        stop()
    print("BENCH " + json.dumps({**result, "impl": args.impl}), flush=True)


if __name__ == "__main__":
    main()
