"""One worker process: receives one task at a time from its manager, runs it, sends the outcome back.

Started by the manager with fork+exec (``python -m htex_ref.worker``). It dies with its manager (Linux
parent-death signal), so no worker outlives its pool. A task that raises ``SystemExit`` or calls
``os._exit`` ends the process; the manager then reports ``WorkerLost`` for that task and starts a new
worker in the slot.

When the pool enforces a memory limit it sets this process's ``RLIMIT_DATA``; a task that raises
``MemoryError`` under a limit is reported as ``MEMORY_EXCEEDED`` (with the limit and this process's peak
resident size), and the worker then exits, since a process that ran out of memory may be left broken;
the manager starts a fresh one. Each worker leads its own process group, which is how the manager stops
a task together with every process it started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import time

import cloudpickle

from htex_ref.framing import Frame
from htex_ref.memory import data_limit, peak_rss
from htex_ref.procutil import set_parent_death_signal
from htex_ref.protocol import Kind, Outcome, pack_result_header, unpack_task_header
from htex_ref.serialize import FunctionCache, dumps_exception, dumps_result
from htex_ref.streams import BlockingChannel

logger = logging.getLogger("htex_ref.worker")

def memory_report(rank: int, limit: int, error: BaseException) -> bytes:
    """The payload of a ``MEMORY_EXCEEDED`` result."""
    peak = peak_rss()
    return json.dumps({
        "worker": rank, "host": socket.gethostname(), "limit": limit, "peak_rss": peak,
        "detail": f"MemoryError under the worker's memory limit of {limit / 2**20:.0f} MiB (mem_per_worker; "
                  f"peak resident {peak / 2**20:.0f} MiB): {error}".rstrip(": "),
    }).encode()


def serve(fd: int, rank: int = 0) -> None:
    """Serve tasks over the socketpair end ``fd`` until the manager says stop or goes away."""
    chan = BlockingChannel(socket.socket(fileno=fd))
    chan.send([Kind.READY, json.dumps({"pid": os.getpid()}).encode()])
    cache = FunctionCache()
    loads = cloudpickle.loads
    try:
        frames: list[Frame] | None = None
        while True:
            # Dropped first: a big argument is a view into a map the next big message can then reuse.
            frames = None
            frames = chan.recv()
            if frames is None:
                return
            kind = frames[0]
            if kind == Kind.STOP:
                return
            if kind != Kind.TASK or len(frames) not in (4, 5):
                logger.warning("Ignoring unexpected message %r with %d frames", kind[:32], len(frames))
                continue
            task_id = unpack_task_header(frames[1])[0]
            started = time.perf_counter()
            saved: dict[str, str | None] = {}
            out_of_memory = False
            try:
                if len(frames) == 5:
                    # This task's own variables (an MPI task's nodes and prefixes): set now, undone below,
                    # so that nothing leaks into the next task this worker runs.
                    task_env = {str(k): str(v) for k, v in json.loads(bytes(frames[4])).items()}
                    saved = {k: os.environ.get(k) for k in task_env}
                    os.environ.update(task_env)
                fn = cache.load(frames[2])
                args, kwargs = loads(frames[3])
                outcome, payload = dumps_result(fn(*args, **kwargs))
            except MemoryError as e:
                limit = data_limit()
                if limit is None:
                    outcome, payload = Outcome.EXCEPTION, dumps_exception(e)
                else:
                    outcome, payload, out_of_memory = Outcome.MEMORY_EXCEEDED, memory_report(rank, limit, e), True
            except Exception as e:
                outcome, payload = Outcome.EXCEPTION, dumps_exception(e)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            chan.send([Kind.RESULT, pack_result_header(task_id, outcome, time.perf_counter() - started), payload])
            if out_of_memory:
                logger.warning("Task %d ran out of memory under the limit; this worker exits", task_id)
                return
    finally:
        chan.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="htex_ref worker process (started by htex-worker-pool)")
    parser.add_argument("--fd", type=int, required=True, help="socketpair end shared with the manager")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--manager-pid", type=int, required=True)
    parser.add_argument("--logfile", default=None)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--cpus", default=None, help="comma-separated hardware threads to pin to")
    args = parser.parse_args()
    set_parent_death_signal(args.manager_pid)
    if args.cpus:
        # Before anything runs: every task, and every process it starts, inherits this.
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    if args.logfile:
        logging.basicConfig(
            filename=args.logfile,
            level=logging.DEBUG if args.debug else logging.INFO,
            format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        )
    logger.info("Worker %d pid %d starting", args.rank, os.getpid())
    serve(args.fd, args.rank)


if __name__ == "__main__":
    main()
