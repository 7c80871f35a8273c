"""Large arguments and results: bandwidth and memory of one task at a time, in a fresh process per
executor; prints one JSON line (``PAYLOAD {...}``).

Run by ``htex-ref bench --payloads 1,16,64,256`` as ``python payloads.py --impl htex_ref|process|parsl``.
For each size (MiB) it times a task whose argument is that many bytes (the task returns its length), and
a task that returns that many bytes, from submit to the value in hand, after one warm-up task of each
kind and size; bandwidth is size / time (best of ``--repeat``). Then one more transfer of each kind runs
while a thread samples the resident memory of this process and of every process under it every 2 ms
(apart from the timed ones: the sampling costs CPU, more so with more processes): the peak rise over
the level before the transfer, divided by the size, is how many copies of the payload that process held
at once (``copies``: the most over the processes; the executor's own process counts the caller's object).
Standard library only at module level, so Parsl's environment can run it too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20


def arg_len(data: bytes) -> int:
    return len(data)


def make_bytes(n: int) -> bytes:
    return bytes(n)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _tree(root: int) -> list[int]:
    """``root`` and every process under it (from /proc, children by parent id)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class PeakWatch:
    """Samples the resident memory of a process tree until stopped; ``rise()`` per process."""

    def __init__(self, root: int) -> None:
        self.pids = _tree(root)
        self.base = {p: _rss(p) for p in self.pids}
        self.peak = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            for p in self.pids:
                r = _rss(p)
                if r > self.peak[p]:
                    self.peak[p] = r

    def rise(self) -> dict[int, int]:
        self._stop.set()
        self._thread.join()
        return {p: self.peak[p] - self.base[p] for p in self.pids}


def _role(pid: int) -> str:
    if pid == os.getpid():
        return "executor"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    for key, role in (("interchange", "interchange"), ("worker_pool", "pool"), ("htex-worker-pool", "pool"),
                      ("htex_ref.worker", "worker"), ("process_worker_pool", "pool"), ("multiprocessing", "worker")):
        if key in cmd:
            return role
    return "other"


def _time_one(submit: Any, fn: Any, arg: Any, size: int, watched: bool) -> tuple[float, float, str]:
    """(seconds from submit to result; when ``watched``, the most copies of the payload any process held
    and which process that was)."""
    watch = PeakWatch(os.getpid()) if watched else None
    t0 = time.perf_counter()
    value = submit(fn, arg).result(600)
    took = time.perf_counter() - t0
    rise = watch.rise() if watch is not None else {os.getpid(): 0}
    if fn is arg_len:
        assert value == size, value
    else:
        assert len(value) == size
    del value
    pid = max(rise, key=lambda p: rise[p])
    return took, rise[pid] / size if size else 0.0, _role(pid)


def measure(submit: Any, sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    rows = []
    for mib in sizes:
        n = mib * MIB
        payload = bytes(n)
        submit(arg_len, payload).result(600)  # warm-up of each kind at this size
        submit(make_bytes, n).result(600)
        arg_t: list[float] = []
        res_t: list[float] = []
        arg_c: list[tuple[float, str]] = []
        res_c: list[tuple[float, str]] = []
        for i in range(repeat + 1):
            watched = i == repeat
            t, c, who = _time_one(submit, arg_len, payload, n, watched)
            if watched:
                arg_c.append((c, who))
            else:
                arg_t.append(t)
            t, c, who = _time_one(submit, make_bytes, n, n, watched)
            if watched:
                res_c.append((c, who))
            else:
                res_t.append(t)
        del payload
        ac, rc = min(arg_c), min(res_c)
        rows.append({"mib": mib, "arg_mibps": mib / min(arg_t), "result_mibps": mib / min(res_t),
                     "arg_copies": round(ac[0], 2), "arg_copies_in": ac[1],
                     "result_copies": round(rc[0], 2), "result_copies_in": rc[1]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--impl", choices=["htex_ref", "process", "parsl"], required=True)
    p.add_argument("--sizes", default="1,16,64,256")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--encrypted", action="store_true")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    run_dir = tempfile.mkdtemp(prefix=f"bench-payload-{args.impl}-")
    stop: Any
    if args.impl == "htex_ref":
        from htex_ref import HighThroughputExecutor, LocalProvider

        ex: Any = HighThroughputExecutor(label="payload", provider=LocalProvider(), max_workers_per_node=args.workers,
                                         encrypted=args.encrypted, run_dir=run_dir, address="127.0.0.1",
                                         monitoring=False)
        ex.start()
        submit, stop = ex.submit, ex.shutdown
    elif args.impl == "process":
        from concurrent.futures import ProcessPoolExecutor

        ex = ProcessPoolExecutor(args.workers)
        submit, stop = ex.submit, ex.shutdown
    else:
        sys.path.insert(0, HERE)
        import parsl_peer  # type: ignore[import-not-found]

        ex = parsl_peer.make_executor(args.workers, args.encrypted, run_dir, pythonpath=[HERE])

        def submit(fn: Any, *a: Any) -> Any:
            return ex.submit(fn, {}, *a)

        def stop() -> None:
            parsl_peer.shutdown(ex)

    if args.impl == "parsl":
        # Parsl's workers import this module by name, so the functions must come from it, not __main__.
        import payloads  # type: ignore[import-not-found]

        global arg_len, make_bytes
        arg_len, make_bytes = payloads.arg_len, payloads.make_bytes
    try:
        rows = measure(submit, sizes, args.repeat)
    finally:
        stop()
    print("PAYLOAD " + json.dumps({"impl": args.impl, "encrypted": args.encrypted, "rows": rows}), flush=True)


if __name__ == "__main__":
    main()
