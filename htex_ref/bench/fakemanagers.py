"""A load generator for the interchange: many fake managers whose workers take zero time.

``htex-ref bench --fake-managers 1,10,100,1000`` measures how the interchange's dispatch rate and its
CPU cost per task change with the number of managers. Each fake manager is one ZeroMQ DEALER socket
that registers with the real interchange like a worker pool does (same ``Registration``, protocol and
Python versions), heartbeats, and answers every batch of tasks at once with a batch of results (the
pickled ``None``, run time 0). A few processes hold all the fake managers, so a thousand managers cost
a thousand sockets, not a thousand processes. Only the interchange and the executor are real.

One measurement (``measure``): start an executor whose provider launches nothing; start the fake
managers, each of which connects and probes the interchange but does not register yet; submit
``tasks`` no-op calls and wait until all of them are queued in the interchange; then release the
managers, which register at once, and wait for every future. Queuing first measures the interchange,
not the rate at which one Python thread can submit (reported separately). Reported: dispatches/s
(tasks / time from the release to the last result, registration of every manager included), the
interchange's CPU seconds per 1,000 tasks (from its process' CPU times, so it does not depend on how
busy the rest of the machine is), and the submit rate. Every fake-manager process writes
the ids of the tasks it received, so a caller can check that each task was dispatched exactly once.

Run as a program (``python -m htex_ref.bench.fakemanagers``), this module is one fake-manager process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import zmq

from htex_ref.framing import encode_body, frame_table
from htex_ref.protocol import Kind, Outcome, Registration, pack_result_header, task_id_at
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__

# ------------------------------------------------------------------------------ one fake process


def serve(url: str, first: int, count: int, workers: int, heartbeat_period: float, ids_path: str | None,
          run_tag: str, gate: bool = False) -> int:
    """Register ``count`` fake managers at ``url`` and answer tasks until the interchange stops them all.

    With ``gate``, every socket first probes the interchange; the process then prints ``probed`` and
    registers all its managers only when a line arrives on stdin, so that a caller can release many
    managers at once onto a queue that is already full.
    """
    ctx = zmq.Context()
    socks: dict[zmq.Socket[bytes], bytes] = {}
    poller = zmq.Poller()
    regs: dict[zmq.Socket[bytes], bytes] = {}
    for i in range(first, first + count):
        uid = f"fake-{run_tag}-{i}"
        s: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, uid.encode())
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect(url)
        regs[s] = Registration(
            protocol_version=PROTOCOL_VERSION, htex_ref_version=__version__, python_version=PYTHON_VERSION,
            uid=uid, block_id=str(i), worker_count=workers, prefetch_capacity=0, hostname=socket.gethostname(),
            pid=os.getpid(), cpu_count=workers, total_memory=0, os=platform.system(),
        ).encode()
        socks[s] = uid.encode()
        poller.register(s, zmq.POLLIN)
    if gate:
        for s in socks:
            s.send_multipart([Kind.PROBE, str(PROTOCOL_VERSION).encode()])
        waiting = set(socks)
        deadline = time.monotonic() + 60
        while waiting:
            if time.monotonic() > deadline:
                print(f"{len(waiting)} fake managers got no probe answer in 60 s", file=sys.stderr)
                return 1
            for s, _ in poller.poll(1000):
                if s.recv_multipart()[0] == Kind.PROBE_OK:
                    waiting.discard(s)
        print("probed", flush=True)
        sys.stdin.readline()
    for s, reg in regs.items():
        s.send_multipart([Kind.REGISTER, reg])
    payload = cloudpickle.dumps(None)
    received: list[int] = []
    # epoll over the sockets' notification descriptors instead of zmq_poll, which costs O(sockets)
    # per call. Such a descriptor only says "look again": a socket is drained until EAGAIN, and after
    # sends made outside that loop (heartbeats) every socket is checked, as zmq's docs require.
    ep = select.epoll()
    by_fd: dict[int, zmq.Socket[bytes]] = {}
    for s in socks:
        fd = int(s.getsockopt(zmq.FD))
        by_fd[fd] = s
        ep.register(fd, select.EPOLLIN)
    ready: list[zmq.Socket[bytes]] = list(socks)
    live = len(socks)
    next_hb = time.monotonic() + heartbeat_period
    rc = 0
    while live:
        for s in ready:
            while not s.closed:
                try:
                    frames = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                kind = frames[0]
                if kind == Kind.TASKS:
                    # Only the task ids are read, straight out of the batch: this process stands in for
                    # hundreds of nodes, so it must cost far less per task than the interchange does.
                    body = frames[1]
                    lengths, offset = frame_table(body)
                    ids = []
                    for j in range(0, len(lengths), 3):
                        ids.append(task_id_at(body, offset))
                        offset += lengths[j] + lengths[j + 1] + lengths[j + 2]
                    received.extend(ids)
                    parts: list[bytes] = []
                    for tid in ids:
                        parts.append(pack_result_header(tid, Outcome.OK))
                        parts.append(payload)
                    s.send_multipart([Kind.RESULTS, encode_body(parts)], copy=False)
                elif kind in (Kind.SHUTDOWN, Kind.REJECTED):
                    if kind == Kind.REJECTED:
                        print(f"fake manager {socks[s]!r} rejected: {frames[1:]!r}", file=sys.stderr)
                        rc = 1
                    ep.unregister(int(s.getsockopt(zmq.FD)))
                    s.close()
                    live -= 1
        now = time.monotonic()
        if now >= next_hb:
            next_hb = now + heartbeat_period
            open_socks = [s for s in socks if not s.closed]
            for s in open_socks:
                s.send_multipart([Kind.HEARTBEAT])
            ready = [s for s in open_socks if int(s.getsockopt(zmq.EVENTS)) & zmq.POLLIN]
            if ready:
                continue
        events = ep.poll(max(0.0, next_hb - time.monotonic()))
        ready = [by_fd[fd] for fd, _ in events]
    ep.close()
    if ids_path:
        tmp = ids_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(received, f)
        os.replace(tmp, ids_path)
    ctx.term()
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="One process of fake managers for the interchange load generator.")
    p.add_argument("--url", required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--heartbeat-period", type=float, default=5.0)
    p.add_argument("--ids", default=None, help="write the ids of the tasks received to this JSON file")
    p.add_argument("--tag", default="0")
    p.add_argument("--gate", action="store_true", help="probe, print 'probed', register after a line on stdin")
    a = p.parse_args(argv)
    from htex_ref.procutil import set_parent_death_signal

    set_parent_death_signal(os.getppid())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return serve(a.url, a.first, a.count, a.workers, a.heartbeat_period, a.ids, a.tag, a.gate)


# --------------------------------------------------------------------------------- measurement


@dataclass
class SweepPoint:
    managers: int
    workers_per_manager: int
    tasks: int
    processes: int
    #: Tasks / seconds from the release of the managers to the interchange's last dispatch.
    dispatches_per_s: float
    #: Tasks / seconds from the release to the last future resolved in the executor.
    completions_per_s: float
    interchange_cpu_s_per_1000: float
    submit_per_s: float
    wall_s: float
    #: Every task id each process received, merged; only filled when asked for.
    received_ids: list[int] | None = None


def _noop() -> None:
    return None


class FakeManagers:
    """Fake-manager processes attached to one executor's interchange; a context manager that stops
    (and, if need be, kills) every process it started."""

    def __init__(self, executor: Any, managers: int, workers: int, processes: int | None = None,
                 workdir: str | None = None, heartbeat_period: float = 5.0, gate: bool = False) -> None:
        port = executor.interchange_worker_port
        if port is None:
            raise RuntimeError("the executor is not started")
        self.managers = managers
        self.processes = max(1, min(processes or min(4, managers), managers))
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="htex-fake-"))
        self._own_workdir = workdir is None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.id_files: list[Path] = []
        tag = f"{os.getpid()}-{id(self):x}"
        per, extra = divmod(managers, self.processes)
        first = 0
        for k in range(self.processes):
            count = per + (1 if k < extra else 0)
            ids = self.workdir / f"ids-{k}.json"
            self.id_files.append(ids)
            cmd = [sys.executable, "-m", "htex_ref.bench.fakemanagers", "--url", f"tcp://127.0.0.1:{port}",
                   "--first", str(first), "--count", str(count), "--workers", str(workers),
                   "--heartbeat-period", str(heartbeat_period), "--ids", str(ids), "--tag", tag]
            if gate:
                cmd.append("--gate")
            self.procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE if gate else subprocess.DEVNULL,
                                               stdout=subprocess.PIPE if gate else None))
            first += count
        self.gated = gate

    def wait_probed(self, timeout: float = 60.0) -> None:
        """With a gate: wait until every process has reached the interchange with all its sockets."""
        import select

        deadline = time.monotonic() + timeout
        for proc in self.procs:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = proc.stdout.readline() if ready else b""
            if line.strip() != b"probed":
                raise RuntimeError(f"fake-manager process {proc.pid} failed before registering (exit {proc.poll()})")

    def release(self) -> None:
        """With a gate: let every process register its managers now."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()

    def received_ids(self, timeout: float = 30.0) -> list[int]:
        """The task ids all processes received; waits for them to exit (after the executor's shutdown)."""
        ids: list[int] = []
        for proc, path in zip(self.procs, self.id_files, strict=True):
            proc.wait(timeout)
            ids.extend(json.loads(path.read_text()))
        return ids

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> FakeManagers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting {timeout:.0f} s for {what}")
        time.sleep(0.02)


def measure(managers: int, workers: int = 64, tasks: int = 50_000, processes: int | None = None,
            keep_ids: bool = False, run_dir: str | None = None, timeout: float = 300.0,
            prefetch_capacity: int | None = 0) -> SweepPoint:
    """One point of the sweep (see the module docstring)."""
    import psutil

    from htex_ref import HighThroughputExecutor
    from htex_ref.providers.local import LocalProvider

    own_dir = run_dir is None
    run_dir = run_dir or tempfile.mkdtemp(prefix="htex-fakebench-")
    ex = HighThroughputExecutor(
        label="fake-managers", provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0),
        address="127.0.0.1", encrypted=False, heartbeat_threshold=120, heartbeat_period=30,
        run_dir=run_dir, prefetch_capacity=prefetch_capacity,
    )
    ex.start()
    try:
        assert ex.interchange_process is not None
        interchange = psutil.Process(ex.interchange_process.pid)
        with FakeManagers(ex, managers, workers, processes, workdir=os.path.join(run_dir, "fake"),
                          gate=True) as fm:
            fm.wait_probed()
            t_sub0 = time.perf_counter()
            futures = [ex.submit(_noop) for _ in range(tasks)]
            t_sub = time.perf_counter()
            _wait_for(lambda: ex.interchange_stats()["pending"] >= tasks, 60.0, "tasks to reach the interchange")
            cpu0 = sum(interchange.cpu_times()[:2])
            t0 = time.perf_counter()
            m0 = time.monotonic()
            fm.release()
            deadline = t0 + timeout
            # The last task tends to finish last: waiting on it first means the loop below rarely
            # blocks, so this thread does not compete with the executor's link thread for the GIL.
            futures[-1].exception(timeout=timeout)
            for f in futures:
                left = deadline - time.perf_counter()
                if f.result(timeout=max(0.0, left)) is not None:
                    raise AssertionError("a no-op task returned something")
            t1 = time.perf_counter()
            cpu1 = sum(interchange.cpu_times()[:2])
            last_dispatch = ex.interchange_stats()["last_dispatch_at"]
            ex.shutdown()
            ids = fm.received_ids() if keep_ids else None
        return SweepPoint(
            managers=managers, workers_per_manager=workers, tasks=tasks, processes=fm.processes,
            dispatches_per_s=tasks / (last_dispatch - m0), completions_per_s=tasks / (t1 - t0),
            interchange_cpu_s_per_1000=(cpu1 - cpu0) / tasks * 1000,
            submit_per_s=tasks / (t_sub - t_sub0), wall_s=t1 - t0, received_ids=ids,
        )
    finally:
        # On an error path tasks may be left with no manager to run them: do not wait for them.
        ex.shutdown(wait=False, cancel_futures=True)
        if own_dir:
            shutil.rmtree(run_dir, ignore_errors=True)


def format_sweep(points: list[SweepPoint]) -> str:
    base = points[0] if points else None
    lines = [
        "| managers | workers each | tasks | dispatches/s | vs first | completions/s | vs first "
        "| interchange CPU ms / 1,000 tasks |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        assert base is not None
        lines.append(
            f"| {p.managers} | {p.workers_per_manager} | {p.tasks} | {p.dispatches_per_s:,.0f} | "
            f"{p.dispatches_per_s / base.dispatches_per_s:.2f} | {p.completions_per_s:,.0f} | "
            f"{p.completions_per_s / base.completions_per_s:.2f} | {p.interchange_cpu_s_per_1000 * 1000:.1f} |"
        )
    return "\n".join(lines)


def sweep_main(managers: list[int], workers: int, tasks: int, rounds: int, out: str | None,
               processes: int | None = None, prefetch_capacity: int | None = 0) -> int:
    """``htex-ref bench --fake-managers ...``: medians over ``rounds`` of each point, as a table."""
    import statistics

    pf = "auto" if prefetch_capacity is None else prefetch_capacity
    print(f"interchange load: fake managers {managers}, {workers} workers each, prefetch_capacity={pf}, "
          f"{tasks} no-op tasks, {rounds} round(s), unencrypted; {platform.node()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}", flush=True)
    medians: list[SweepPoint] = []
    raw: list[dict[str, Any]] = []
    for m in managers:
        runs = []
        for r in range(rounds):
            p = measure(m, workers, tasks, processes=processes, prefetch_capacity=prefetch_capacity)
            print(f"  managers={m} round {r + 1}: {p.dispatches_per_s:,.0f} dispatches/s, "
                  f"{p.completions_per_s:,.0f} completions/s, interchange "
                  f"{p.interchange_cpu_s_per_1000 * 1000:.1f} CPU ms/1000 tasks, submit {p.submit_per_s:,.0f}/s",
                  flush=True)
            runs.append(p)
            raw.append(asdict(p))
        medians.append(SweepPoint(
            managers=m, workers_per_manager=workers, tasks=tasks, processes=runs[0].processes,
            dispatches_per_s=statistics.median(x.dispatches_per_s for x in runs),
            completions_per_s=statistics.median(x.completions_per_s for x in runs),
            interchange_cpu_s_per_1000=statistics.median(x.interchange_cpu_s_per_1000 for x in runs),
            submit_per_s=statistics.median(x.submit_per_s for x in runs),
            wall_s=statistics.median(x.wall_s for x in runs),
        ))
    print()
    print(format_sweep(medians))
    if len(medians) > 1:
        first, last = medians[0], medians[-1]
        ratio = last.dispatches_per_s / first.dispatches_per_s
        print(f"\n{last.managers} managers vs {first.managers}: {ratio:.2f} of the dispatch rate "
              f"(target >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'}); "
              f"{last.dispatches_per_s:,.0f} dispatches/s at {last.managers} managers "
              f"(target >= 20,000: {'met' if last.dispatches_per_s >= 20_000 else 'NOT met'}); "
              f"completions {last.completions_per_s / first.completions_per_s:.2f} of the first")
    if out:
        Path(out).write_text(json.dumps({"rounds": raw, "medians": [asdict(p) for p in medians]}, indent=1))
        print(f"raw results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
