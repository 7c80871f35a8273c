"""A load generator for the interchange: many fake managers whose workers take zero time.

``htex-ref bench --fake-managers 1,1000,10000 --workers-per-manager 128`` measures how the interchange
behaves from one manager to a 10,000-node allocation. Each fake manager is one ZeroMQ DEALER socket that
connects, probes and registers with the real interchange like a worker pool does (same ``Registration``,
protocol 5 and Python versions), heartbeats, answers every batch of tasks at once with a batch of results
(the pickled ``None``, run time 0), counts the acknowledgements the interchange sends back for each batch
(``ack``) and obeys ``register_again``. A few processes hold all the fake managers (one per 2,500 beyond
10,000), so 10,000 managers cost 10,000 sockets, not 10,000 processes. Only the interchange and the
executor are real.

One measurement (``measure``), with one executor whose provider launches nothing and the executor's
default heartbeat settings:

1. The registration storm: every fake manager connects, probes and registers at once (or spread over
   ``stagger`` seconds) onto an empty queue. Reported: the time from the release to the last manager's
   ``registered``, the managers refused and those the interchange does not count, the interchange's CPU
   per manager, and its RSS before and after (RSS per manager).
2. Throughput: every manager says goodbye on its open connection, ``tasks`` no-op calls are queued in the
   interchange, and every manager registers again at once: the window holds their registrations (a block
   starting onto a full queue) but not their connections. Queuing first measures the interchange, not the
   rate at which one Python thread can submit (reported separately). Reported: dispatches/s (tasks / time
   to the interchange's last dispatch), completions/s (to the last future resolved in the executor), CPU
   per 1,000 tasks of the interchange, the executor and the fake managers, futures failed with
   ``ManagerLost`` (every fake manager answers, so each would be a false loss), acknowledgements received.
3. The result path alone, when the managers have room for every task at once: the managers keep the results
   of a second round of tasks until all are dispatched, then send them all together. Reported: results/s
   and CPU per 1,000 results.

Every fake-manager process writes the ids of the tasks it received, so a caller can check that each task
was dispatched exactly once. The benchmark raises its own open-files soft limit to the hard limit (each
fake manager holds a TCP connection and a mailbox descriptor); the interchange raises its own.

Run as a program (``python -m htex_ref.bench.fakemanagers``), this module is one fake-manager process.
"""

from __future__ import annotations

import argparse
import concurrent.futures
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
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import zmq

from htex_ref.framing import encode_body, frame_table
from htex_ref.netutil import recv_message, send_message
from htex_ref.protocol import Kind, Outcome, Registration, pack_result_header, task_id_at
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__

# ------------------------------------------------------------------------------ one fake process

_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)

#: Seconds of quiet after which a fake-manager process checks every socket (see ``serve``) ...
SWEEP_PERIOD = 0.2
#: ... and seconds after which it does so even while busy.
SWEEP_BUSY_PERIOD = 1.0


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process' soft limit on open files to its hard limit (each fake manager holds a ZeroMQ
    socket: a TCP connection and a mailbox descriptor). Returns the (soft, hard) limits now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def _rebuild(socks: dict[zmq.Socket[bytes], int]) -> zmq.Poller:
    """A poller of the sockets still open."""
    fresh = zmq.Poller()
    for s in socks:
        if not s.closed:
            fresh.register(s, zmq.POLLIN)
    return fresh


def serve(url: str, first: int, count: int, workers: int, heartbeat_period: float, ids_path: str | None,
          run_tag: str, gate: bool = False, stagger: float = 0.0, block_size: int = 0) -> int:
    """Register ``count`` fake managers at ``url`` and answer tasks until the interchange stops them all.

    Each manager connects a DEALER socket, probes the interchange and registers when the probe is
    answered (protocol 5: acknowledgements are counted, a ``register_again`` is obeyed). With ``gate``,
    the process prints ``ready`` and opens no socket until a line arrives on stdin, so that a caller can
    release every manager at once: the whole connect, probe and register storm is then measured. With
    ``stagger``, the managers connect evenly spread over that many seconds instead of all at once. Manager
    ``i`` belongs to block ``i // block_size`` (0: all to block 0, as the nodes of one allocation). Once
    every manager has an answer to its registration, the process prints ``registered OK REFUSED FIRST
    LAST`` (the monotonic times of the first and last acceptance). Later lines on stdin: ``bye`` makes
    every manager say goodbye (the interchange forgets them; the process prints ``gone``), ``register``
    registers them again on the same connections (and prints ``registered ...`` again), ``hold`` keeps the
    results of the tasks that arrive from then on, and ``answer`` sends every result kept and answers at once
    again.
    """
    raise_fd_limit()
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, count + 64)
    payload = cloudpickle.dumps(None)
    hostname = socket.gethostname()
    if gate:
        print("ready", flush=True)
        sys.stdin.readline()
    t_release = time.monotonic()
    socks: dict[zmq.Socket[bytes], int] = {}
    regs: dict[zmq.Socket[bytes], bytes] = {}
    ep = select.epoll()
    by_fd: dict[int, zmq.Socket[bytes]] = {}
    # Every open socket, for the checks of all of them at once (see below): one zmq_poll over 2,500
    # sockets costs 7 ms here, asking each for its events from Python 22 ms.
    sweeper = zmq.Poller()
    sweeper_stale = False
    probe = [Kind.PROBE, str(PROTOCOL_VERSION).encode()]

    def open_manager(i: int) -> zmq.Socket[bytes]:
        uid = f"fake-{run_tag}-{i}"
        s: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, uid.encode())
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect(url)
        regs[s] = Registration(
            protocol_version=PROTOCOL_VERSION, htex_ref_version=__version__, python_version=PYTHON_VERSION,
            uid=uid, block_id=str(i // block_size if block_size > 0 else 0), worker_count=workers, prefetch_capacity=0,
            hostname=hostname,
            pid=os.getpid(), cpu_count=workers, total_memory=0, os=platform.system(),
        ).encode()
        socks[s] = i
        fd = int(s.getsockopt(zmq.FD))
        by_fd[fd] = s
        ep.register(fd, select.EPOLLIN)
        sweeper.register(s, zmq.POLLIN)
        send_message(s, probe)
        return s

    stdin_fd = sys.stdin.fileno()
    if gate:
        ep.register(stdin_fd, select.EPOLLIN)
    bye = [Kind.BYE, b'{"reason": "the load generator re-registers"}']
    # After "hold": result batches kept instead of sent, until "answer".
    holding: list[tuple[zmq.Socket[bytes], Any]] | None = None
    to_open = list(range(first, first + count))
    opened = 0
    registered: set[zmq.Socket[bytes]] = set()
    refused = 0
    answered = 0
    t_first = t_last = 0.0
    reported = False
    received: list[int] = []
    acks = acked = register_again = 0
    # epoll over the sockets' notification descriptors instead of zmq_poll, which costs O(sockets)
    # per call. Such a descriptor only says "look again": a socket is drained until EAGAIN, and after
    # sends made outside that loop (heartbeats, new sockets) every socket touched is checked, as zmq's
    # docs require.
    ready: list[zmq.Socket[bytes]] = []
    live = count
    next_hb = time.monotonic() + heartbeat_period
    swept = time.monotonic()
    rc = 0
    while live:
        if opened < count:
            now = time.monotonic()
            upto = count if stagger <= 0 else min(count, int((now - t_release) / stagger * count) + 1)
            if upto > opened:
                ready.extend(open_manager(i) for i in to_open[opened:upto])
                opened = upto
        for s in ready:
            # Asked first (3 us here) rather than read until zmq.Again (7.5 us to raise and catch): most
            # sockets looked at hold one message. Asking also makes ZeroMQ process the socket's pending
            # commands, as its docs require after a notification.
            while not s.closed and int(s.get(_EVENTS)) & _POLLIN:
                try:
                    frames = recv_message(s)
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
                    if holding is None:
                        send_message(s, [Kind.RESULTS, encode_body(parts)], copy=False)
                    else:
                        holding.append((s, encode_body(parts)))
                elif kind == Kind.ACK:
                    # Protocol 5: the results this manager sent are safe with the executor. A fake keeps
                    # no results, so it only counts them.
                    acks += 1
                    acked += len(frames[1]) // 8
                elif kind == Kind.HEARTBEAT:
                    pass
                elif kind == Kind.PROBE_OK:
                    send_message(s, [Kind.REGISTER, regs[s]])
                elif kind == Kind.REGISTERED:
                    if s not in registered:
                        registered.add(s)
                        answered += 1
                        t_last = time.monotonic()
                        t_first = t_first or t_last
                elif kind == Kind.REGISTER_AGAIN:
                    # Declared lost (or the interchange restarted): a fake holds no task, so it names none.
                    register_again += 1
                    send_message(s, [Kind.REGISTER, regs[s]])
                elif kind in (Kind.SHUTDOWN, Kind.REJECTED):
                    if kind == Kind.REJECTED:
                        print(f"fake manager {socks[s]} rejected: {frames[1:]!r}", file=sys.stderr)
                        refused += 1
                        answered += s not in registered
                        rc = 1
                    registered.discard(s)
                    ep.unregister(int(s.getsockopt(zmq.FD)))
                    s.close()
                    sweeper_stale = True  # rebuilt before its next use: Poller.unregister is O(sockets)
                    live -= 1
        if not reported and answered >= count:
            reported = True
            if gate:
                print(f"registered {count - refused} {refused} {t_first:.6f} {t_last:.6f}", flush=True)
        now = time.monotonic()
        if now >= next_hb:
            next_hb = now + heartbeat_period
            beating = [s for s in registered if not s.closed]
            for s in beating:
                send_message(s, [Kind.HEARTBEAT])
            if sweeper_stale:
                sweeper, sweeper_stale = _rebuild(socks), False
            ready = [s for s, _ in sweeper.poll(0)]
            if ready:
                continue
        wait = min(next_hb - now, SWEEP_PERIOD)
        if opened < count:
            wait = min(wait, stagger / count)
        events = ep.poll(max(0.0, wait))
        ready = [by_fd[fd] for fd, _ in events if fd != stdin_fd]
        since = time.monotonic() - swept
        if (since >= SWEEP_PERIOD and not events) or since >= SWEEP_BUSY_PERIOD:
            # A notification descriptor can stay silent for a message that arrived (seen: the stop
            # messages at the end of a run waited for the next heartbeat), so every socket is checked
            # after SWEEP_PERIOD seconds of quiet, and every SWEEP_BUSY_PERIOD seconds while busy. One
            # zmq_poll over 2,500 sockets takes 7 ms here; this used to ask each socket for its events
            # (22 ms) every 0.2 s, busy or not: at 10,000 managers, half a core of the two that the
            # interchange and the executor measured here share.
            swept = time.monotonic()
            if sweeper_stale:
                sweeper, sweeper_stale = _rebuild(socks), False
            ready.extend(s for s, _ in sweeper.poll(0))
        if gate and len(ready) < len(events):
            command = sys.stdin.readline().strip()
            if command == "bye":
                for s in registered:
                    send_message(s, bye)
                ready.extend(registered)
                registered.clear()
                print("gone", flush=True)
            elif command == "register":
                answered, reported, t_first = refused, False, 0.0
                for s in socks:
                    if not s.closed:
                        send_message(s, [Kind.REGISTER, regs[s]])
                        ready.append(s)
            elif command == "hold":
                holding = []
                print("holding", flush=True)
            elif command == "answer":
                for s, body in holding or ():
                    if not s.closed:
                        send_message(s, [Kind.RESULTS, body], copy=False)
                        ready.append(s)
                holding = None
            elif not command:
                ep.unregister(stdin_fd)

    ep.close()
    if ids_path:
        tmp = ids_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"received": received, "acks": acks, "acked": acked, "register_again": register_again,
                       "refused": refused}, f)
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
    p.add_argument("--ids", default=None, help="write the ids of the tasks received (and ack counts) to this JSON file")
    p.add_argument("--tag", default="0")
    p.add_argument("--gate", action="store_true",
                   help="print 'ready', open the managers after a line on stdin, print 'registered ...'")
    p.add_argument("--stagger", type=float, default=0.0, help="spread the connections over this many seconds")
    p.add_argument("--block-size", type=int, default=0, help="managers per block (0: all in one block)")
    a = p.parse_args(argv)
    from htex_ref.procutil import set_parent_death_signal

    set_parent_death_signal(os.getppid())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # For work on the load generator itself: HTEX_FAKE_PROFILE=PATH writes a cProfile of each process to PATH.PID.
    profile_path = os.environ.get("HTEX_FAKE_PROFILE")
    if not profile_path:
        return serve(a.url, a.first, a.count, a.workers, a.heartbeat_period, a.ids, a.tag, a.gate, a.stagger,
                     a.block_size)
    import cProfile

    profiler = cProfile.Profile()
    try:
        return int(profiler.runcall(serve, a.url, a.first, a.count, a.workers, a.heartbeat_period, a.ids, a.tag,
                                    a.gate, a.stagger, a.block_size))
    finally:
        profiler.dump_stats(f"{profile_path}.{os.getpid()}")


# --------------------------------------------------------------------------------- measurement


@dataclass
class SweepPoint:
    managers: int
    workers_per_manager: int
    tasks: int
    processes: int
    #: Tasks / seconds from the release of the managers to the interchange's last dispatch (registration
    #: of every manager included).
    dispatches_per_s: float
    #: Tasks / seconds from the release to the last future resolved in the executor.
    completions_per_s: float
    interchange_cpu_s_per_1000: float
    submit_per_s: float
    wall_s: float
    #: Seconds from the release to the last manager's registration accepted (connect, probe and register).
    registration_s: float = 0.0
    #: Seconds from the second release (tasks queued, connections open) to the last registration accepted.
    reregistration_s: float = 0.0
    #: Interchange CPU microseconds per manager during the registration storm (accept, probe, register).
    registration_cpu_us: float = 0.0
    #: The same for the fake-manager processes together (their sockets, connections and messages).
    registration_fakes_cpu_us: float = 0.0
    #: Managers whose registration was accepted, and refused.
    registered: int = 0
    refused: int = 0
    #: Managers the interchange no longer counted at the end of the run (lost, stopped or never registered).
    lost: int = 0
    #: Futures that failed with ManagerLost (every fake manager answers, so each is a false loss).
    manager_lost: int = 0
    #: ``register_again`` messages the fake managers received (none expected).
    register_again: int = 0
    #: Acknowledgement messages the fake managers received, and the task ids they covered.
    acks: int = 0
    acked: int = 0
    #: Interchange RSS (bytes) before the managers connect, once they have registered (no task yet), at
    #: its peak during the run, and at the end with every manager still registered.
    rss_before: int = 0
    rss_registered: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    #: CPU seconds per 1,000 tasks over the same window: the executor's process (every thread), and the
    #: fake-manager processes together.
    executor_cpu_s_per_1000: float = 0.0
    fakes_cpu_s_per_1000: float = 0.0
    #: The result path alone (when the managers have room for every task at once): tasks / seconds from
    #: the moment every manager sends the results it kept to the last future resolved, and the
    #: interchange's CPU seconds per 1,000 results over that window (0: not measured).
    results_per_s: float = 0.0
    #: Steady state, every manager registered and answering: tasks / seconds from the first submit (one
    #: thread submitting as fast as it can) to the last future resolved, and the interchange's CPU ms
    #: per 1,000 tasks over that window (0: not measured).
    steady_per_s: float = 0.0
    steady_cpu_s_per_1000: float = 0.0
    results_cpu_s_per_1000: float = 0.0
    results_executor_cpu_s_per_1000: float = 0.0
    results_fakes_cpu_s_per_1000: float = 0.0
    #: Every task id each process received, merged; only filled when asked for.
    received_ids: list[int] | None = None

    @property
    def rss_per_manager(self) -> float:
        """Bytes of interchange RSS per registered manager: registered (before any task) less before."""
        return max(0, self.rss_registered - self.rss_before) / max(1, self.managers)


def _noop() -> None:
    return None


class _CountDown:
    """``one`` called ``n`` times (as a future's done-callback, in whichever thread resolves it) sets an
    event that ``wait`` waits for."""

    def __init__(self, n: int) -> None:
        self.left = n
        self._lock = threading.Lock()
        self._done = threading.Event()
        if n <= 0:
            self._done.set()

    def one(self, _: Any = None) -> None:
        with self._lock:
            self.left -= 1
            if self.left == 0:
                self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


def default_processes(managers: int) -> int:
    """Processes for ``managers`` fake managers: up to four, and one per 2,500 managers beyond that."""
    return max(min(4, managers), -(-managers // 2500))


@dataclass
class Registered:
    """What one fake-manager process reported once each of its managers had an answer."""

    ok: int
    refused: int
    first: float
    last: float


class FakeManagers:
    """Fake-manager processes attached to one executor's interchange; a context manager that stops
    (and, if need be, kills) every process it started."""

    def __init__(self, executor: Any, managers: int, workers: int, processes: int | None = None,
                 workdir: str | None = None, heartbeat_period: float = 5.0, gate: bool = False,
                 stagger: float = 0.0, block_size: int = 0) -> None:
        port = executor.interchange_worker_port
        if port is None:
            raise RuntimeError("the executor is not started")
        self.managers = managers
        self.processes = max(1, min(processes or default_processes(managers), managers))
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="htex-fake-"))
        self._own_workdir = workdir is None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.id_files: list[Path] = []
        self.released_at: float | None = None
        tag = f"{os.getpid()}-{id(self):x}"
        per, extra = divmod(managers, self.processes)
        first = 0
        for k in range(self.processes):
            count = per + (1 if k < extra else 0)
            ids = self.workdir / f"ids-{k}.json"
            self.id_files.append(ids)
            cmd = [sys.executable, "-m", "htex_ref.bench.fakemanagers", "--url", f"tcp://127.0.0.1:{port}",
                   "--first", str(first), "--count", str(count), "--workers", str(workers),
                   "--heartbeat-period", str(heartbeat_period), "--ids", str(ids), "--tag", tag,
                   "--stagger", str(stagger), "--block-size", str(block_size)]
            if gate:
                cmd.append("--gate")
            self.procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE if gate else subprocess.DEVNULL,
                                               stdout=subprocess.PIPE if gate else None))
            first += count
        self.gated = gate

    def _line(self, proc: subprocess.Popen[bytes], deadline: float) -> bytes:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        return proc.stdout.readline().strip() if ready else b""

    def wait_ready(self, timeout: float = 60.0) -> None:
        """With a gate: wait until every process is up (its managers not yet connected)."""
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            if self._line(proc, deadline) != b"ready":
                raise RuntimeError(f"fake-manager process {proc.pid} failed before registering (exit {proc.poll()})")

    def release(self) -> float:
        """With a gate: let every process connect and register its managers now; returns the monotonic time."""
        self.released_at = time.monotonic()
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        return self.released_at

    def tell(self, command: str) -> float:
        """With a gate: send every process a command line (``bye``, ``register``); returns the monotonic time."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(command.encode() + b"\n")
            proc.stdin.flush()
        return time.monotonic()

    def expect(self, word: str, timeout: float = 60.0) -> None:
        """With a gate: wait for every process to print ``word``."""
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            if self._line(proc, deadline) != word.encode():
                raise RuntimeError(f"fake-manager process {proc.pid} did not say {word!r} (exit {proc.poll()})")

    def registrations(self, timeout: float = 60.0) -> list[Registered]:
        """With a gate, after the release: each process' report once all its managers had an answer
        (a process that gives none in ``timeout`` is missing from the list)."""
        deadline = time.monotonic() + timeout
        out = []
        for proc in self.procs:
            fields = self._line(proc, deadline).split()
            if len(fields) == 5 and fields[0] == b"registered":
                out.append(Registered(int(fields[1]), int(fields[2]), float(fields[3]), float(fields[4])))
        return out

    def reports(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """What each process received (task ids, acks); waits for them to exit (after the executor's shutdown)."""
        out = []
        for proc, path in zip(self.procs, self.id_files, strict=True):
            proc.wait(timeout)
            out.append(json.loads(path.read_text()))
        return out

    def received_ids(self, timeout: float = 30.0) -> list[int]:
        """The task ids all processes received; waits for them to exit (after the executor's shutdown)."""
        return [tid for r in self.reports(timeout) for tid in r["received"]]

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


class _RssSampler:
    """The peak RSS of one process, sampled every ``period`` seconds on a thread."""

    def __init__(self, proc: Any, period: float = 0.05) -> None:
        import threading

        self.proc = proc
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._thread.start()

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except Exception:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def measure(managers: int, workers: int = 64, tasks: int = 50_000, processes: int | None = None,
            keep_ids: bool = False, run_dir: str | None = None, timeout: float = 300.0,
            prefetch_capacity: int | None = 0, stagger: float = 0.0, heartbeat_period: float = 30.0,
            heartbeat_threshold: float = 120.0, block_size: int = 0, result_path: bool = True,
            monitoring: bool = True) -> SweepPoint:
    """One point of the sweep (see the module docstring). The heartbeat settings are the executor's
    defaults; the fake managers heartbeat every ``heartbeat_period`` seconds."""
    import psutil

    from htex_ref import HighThroughputExecutor
    from htex_ref.errors import ManagerLost
    from htex_ref.providers.local import LocalProvider

    raise_fd_limit()  # the interchange inherits it
    own_dir = run_dir is None
    run_dir = run_dir or tempfile.mkdtemp(prefix="htex-fakebench-")
    ex = HighThroughputExecutor(
        label="fake-managers", provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0),
        address="127.0.0.1", encrypted=False, heartbeat_threshold=heartbeat_threshold,
        heartbeat_period=heartbeat_period, run_dir=run_dir, prefetch_capacity=prefetch_capacity,
        monitoring=monitoring,
    )
    # The managers come from outside the provider, as blocks do under Parsl's strategy: without this,
    # tasks that wait 5 s with no block would fail with NoBlocks while a slow registration storm runs.
    ex._external_scaling = True
    ex.start()
    try:
        assert ex.interchange_process is not None
        pid = ex.interchange_process.pid
        interchange = psutil.Process(pid)
        with FakeManagers(ex, managers, workers, processes, workdir=os.path.join(run_dir, "fake"),
                          gate=True, stagger=stagger, heartbeat_period=heartbeat_period,
                          block_size=block_size) as fm:
            fm.wait_ready()
            # Phase 1, the registration storm: every manager connects, probes and registers at once (or
            # staggered), onto an empty queue.
            rss_before = interchange.memory_info().rss
            sampler = _RssSampler(interchange)
            me = psutil.Process()
            fakes = [psutil.Process(proc.pid) for proc in fm.procs]
            rcpu0 = sum(interchange.cpu_times()[:2])
            rfcpu0 = sum(sum(f.cpu_times()[:2]) for f in fakes)
            m_reg = fm.release()
            regs = fm.registrations(timeout=min(timeout, 120.0))
            rcpu1 = sum(interchange.cpu_times()[:2])
            rfcpu1 = sum(sum(f.cpu_times()[:2]) for f in fakes)
            registration_s = (max(r.last for r in regs) - m_reg) if len(regs) == fm.processes else float("inf")
            registered = sum(r.ok for r in regs)
            if registered == 0:
                raise RuntimeError(f"no fake manager registered ({len(regs)} of {fm.processes} processes reported)")
            _wait_for(lambda: ex.interchange_stats()["managers"] >= registered, 30.0, "the interchange to count "
                      "the managers")
            rss_registered = interchange.memory_info().rss
            # Phase 2, throughput: the tasks must wait in the interchange when the clock starts, or the rate
            # measured is the rate one thread submits. So every manager says goodbye (on the same
            # connections), the tasks are queued, and the managers register again all at once: the window
            # holds their registration (as a block that starts onto a full queue), not their connections.
            fm.tell("bye")
            fm.expect("gone")
            _wait_for(lambda: ex.interchange_stats()["managers"] == 0, 30.0, "the managers' goodbyes")
            t_sub0 = time.perf_counter()
            futures = [ex.submit(_noop) for _ in range(tasks)]
            t_sub = time.perf_counter()
            _wait_for(lambda: ex.interchange_stats()["pending"] >= tasks, 60.0, "tasks to reach the interchange")
            # The clock stops when the last future resolves: a callback on each, set before the clock
            # starts, counts them in the executor's link thread and wakes this thread once. Waiting on
            # the futures in order woke this thread for each one that resolved out of order (with many
            # managers, most of them), and each wake-up took the GIL from the link thread resolving them;
            # checking every future also ran inside the window. Both are measurement, not the executor.
            all_done = _CountDown(tasks)
            for f in futures:
                f.add_done_callback(all_done.one)
            cpu0 = sum(interchange.cpu_times()[:2])
            ecpu0 = sum(me.cpu_times()[:2])
            fcpu0 = sum(sum(f.cpu_times()[:2]) for f in fakes)
            t0 = time.perf_counter()
            m0 = fm.tell("register")
            deadline = t0 + timeout
            if not all_done.wait(timeout):
                raise TimeoutError(f"{all_done.left} of {tasks} tasks did not complete in {timeout:.0f} s")
            t1 = time.perf_counter()
            cpu1 = sum(interchange.cpu_times()[:2])
            ecpu1 = sum(me.cpu_times()[:2])
            fcpu1 = sum(sum(f.cpu_times()[:2]) for f in fakes)
            lost_futures = 0
            for f in futures:
                exc = f.exception(timeout=0)
                if isinstance(exc, ManagerLost):
                    lost_futures += 1
                elif exc is not None:
                    raise exc
                elif f.result() is not None:
                    raise AssertionError("a no-op task returned something")
            regs2 = fm.registrations(timeout=max(1.0, deadline - time.perf_counter()))
            stats = ex.interchange_stats()
            rss_after = interchange.memory_info().rss
            # Steady state: every manager registered and answering, the tasks submitted by this thread as
            # fast as it can (so every manager count shares the same submit rate), the clock from the first
            # submit to the last future resolved. Registration is outside this window: it is what a long
            # run sees after its blocks have started, with tasks reaching many managers a few at a time.
            steady = _CountDown(tasks)
            c0 = sum(interchange.cpu_times()[:2])
            t3 = time.perf_counter()
            futures = []
            for _ in range(tasks):
                f = ex.submit(_noop)
                f.add_done_callback(steady.one)
                futures.append(f)
            if not steady.wait(timeout):
                raise TimeoutError(f"{steady.left} of {tasks} steady-state tasks did not complete in {timeout:.0f} s")
            steady_per_s = tasks / (time.perf_counter() - t3)
            steady_cpu = (sum(interchange.cpu_times()[:2]) - c0) / tasks * 1000
            for f in futures:
                if f.result(timeout=0) is not None:
                    raise AssertionError("a no-op task returned something")
            results_per_s = results_cpu = results_ecpu = results_fcpu = 0.0
            if result_path and managers * workers >= tasks:
                # Phase 3, the result path alone: every task is dispatched to managers that keep the
                # results, then all of them answer at once.
                fm.tell("hold")
                fm.expect("holding")
                futures = [ex.submit(_noop) for _ in range(tasks)]
                _wait_for(lambda: (ex.interchange_stats()["in_flight"] >= tasks), 60.0,
                          "every task to be dispatched to managers that hold them")
                time.sleep(0.5)  # the last batches reach their managers
                c0 = sum(interchange.cpu_times()[:2])
                e0 = sum(me.cpu_times()[:2])
                f0 = sum(sum(f.cpu_times()[:2]) for f in fakes)
                t2 = time.perf_counter()
                fm.tell("answer")
                # Results come back in no particular order: one waiter on all of them wakes this thread once.
                _, not_done = concurrent.futures.wait(futures, timeout=timeout)
                if not_done:
                    raise TimeoutError(f"{len(not_done)} of {tasks} results did not come back in {timeout:.0f} s")
                results_per_s = tasks / (time.perf_counter() - t2)
                results_cpu = (sum(interchange.cpu_times()[:2]) - c0) / tasks * 1000
                for f in futures:
                    if f.result() is not None:
                        raise AssertionError("a no-op task returned something")
                results_ecpu = (sum(me.cpu_times()[:2]) - e0) / tasks * 1000
                results_fcpu = (sum(sum(f.cpu_times()[:2]) for f in fakes) - f0) / tasks * 1000
            rss_peak = max(sampler.stop(), rss_after)
            last_dispatch = stats["last_dispatch_at"]
            ex.shutdown()
            reports = fm.reports()
        return SweepPoint(
            managers=managers, workers_per_manager=workers, tasks=tasks, processes=fm.processes,
            dispatches_per_s=tasks / (last_dispatch - m0), completions_per_s=tasks / (t1 - t0),
            interchange_cpu_s_per_1000=(cpu1 - cpu0) / tasks * 1000,
            executor_cpu_s_per_1000=(ecpu1 - ecpu0) / tasks * 1000, fakes_cpu_s_per_1000=(fcpu1 - fcpu0) / tasks * 1000,
            submit_per_s=tasks / (t_sub - t_sub0), wall_s=t1 - t0,
            registration_s=registration_s, registered=registered,
            reregistration_s=(max(r.last for r in regs2) - m0) if len(regs2) == fm.processes else float("inf"),
            rss_registered=rss_registered, results_per_s=results_per_s, steady_per_s=steady_per_s,
            steady_cpu_s_per_1000=steady_cpu,
            results_cpu_s_per_1000=results_cpu, results_executor_cpu_s_per_1000=results_ecpu,
            results_fakes_cpu_s_per_1000=results_fcpu, refused=sum(r.refused for r in regs),
            registration_cpu_us=(rcpu1 - rcpu0) / max(1, registered) * 1e6,
            registration_fakes_cpu_us=(rfcpu1 - rfcpu0) / max(1, registered) * 1e6,
            lost=managers - int(stats["managers"]), manager_lost=lost_futures,
            register_again=sum(r["register_again"] for r in reports),
            acks=sum(r["acks"] for r in reports), acked=sum(r["acked"] for r in reports),
            rss_before=rss_before, rss_peak=rss_peak, rss_after=rss_after,
            received_ids=[tid for r in reports for tid in r["received"]] if keep_ids else None,
        )
    finally:
        # On an error path tasks may be left with no manager to run them: do not wait for them.
        ex.shutdown(wait=False, cancel_futures=True)
        if own_dir:
            shutil.rmtree(run_dir, ignore_errors=True)


#: The goals of issue 21 for the largest point of a sweep.
GOAL_REGISTRATION_S = 10.0
GOAL_DISPATCHES_PER_S = 100_000
GOAL_COMPLETIONS_RATIO = 0.8
GOAL_RSS_TOTAL = 1 << 30


def format_sweep(points: list[SweepPoint]) -> str:
    base = points[0] if points else None
    lines = [
        "| managers | workers each | tasks | registration s | refused / lost | dispatches/s | completions/s "
        "| vs first | steady completions/s | vs first | result path results/s | interchange CPU ms / 1,000 tasks "
        "| interchange RSS MiB (peak) | RSS KiB / manager | ManagerLost |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        assert base is not None
        results = f"{p.results_per_s:,.0f}" if p.results_per_s else "-"
        lines.append(
            f"| {p.managers} | {p.workers_per_manager} | {p.tasks} | {p.registration_s:.2f} | "
            f"{p.refused} / {p.lost} | {p.dispatches_per_s:,.0f} | {p.completions_per_s:,.0f} | "
            f"{p.completions_per_s / base.completions_per_s:.2f} | {p.steady_per_s:,.0f} | "
            f"{p.steady_per_s / base.steady_per_s if base.steady_per_s else 0:.2f} | {results} | "
            f"{p.interchange_cpu_s_per_1000 * 1000:.1f} | {p.rss_after / 2**20:.0f} ({p.rss_peak / 2**20:.0f}) | "
            f"{p.rss_per_manager / 1024:.1f} | {p.manager_lost} |"
        )
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def goals(points: list[SweepPoint]) -> str:
    """The issue's goals checked on the largest point against the first (one manager) of the same run."""
    first, last = points[0], points[-1]
    paths = ", ".join(f"{p.managers}: {p.results_per_s:,.0f}" for p in points if p.results_per_s)
    ratio = last.completions_per_s / first.completions_per_s
    steady = last.steady_per_s / first.steady_per_s if first.steady_per_s else 0.0
    return "\n".join([
        f"{last.managers} managers vs {first.managers}: {last.dispatches_per_s / first.dispatches_per_s:.2f} of "
        f"the dispatch rate; completions in steady state {steady:.2f} of the first (target >= "
        f"{GOAL_COMPLETIONS_RATIO}: {_met(steady >= GOAL_COMPLETIONS_RATIO)}); with every manager registering "
        f"inside the window {ratio:.2f} (target >= {GOAL_COMPLETIONS_RATIO}: {_met(ratio >= GOAL_COMPLETIONS_RATIO)})",
        f"  registration of {last.managers} managers at once: {last.registration_s:.2f} s (target <= "
        f"{GOAL_REGISTRATION_S:.0f} s: {_met(last.registration_s <= GOAL_REGISTRATION_S)}); "
        f"{last.registered} registered, {last.refused} refused, {last.lost} lost "
        f"(target 0: {_met(last.refused == 0 and last.lost == 0 and last.registered == last.managers)})",
        f"  {last.dispatches_per_s:,.0f} dispatches/s (target >= {GOAL_DISPATCHES_PER_S:,}: "
        f"{_met(last.dispatches_per_s >= GOAL_DISPATCHES_PER_S)})",
        f"  interchange RSS {last.rss_after / 2**20:.0f} MiB, peak {last.rss_peak / 2**20:.0f} MiB, "
        f"{last.rss_per_manager / 1024:.1f} KiB per manager (target total < 1 GiB: "
        f"{_met(last.rss_peak < GOAL_RSS_TOTAL)})",
        *([f"  result path alone: {paths} (managers: results/s)"] if paths else []),
        f"  false ManagerLost: {last.manager_lost} futures, register_again {last.register_again} "
        f"(target 0: {_met(last.manager_lost == 0 and last.register_again == 0)}); acks: {last.acks:,} messages "
        f"for {last.acked:,} results",
    ])


def sweep_main(managers: list[int], workers: int, tasks: int, rounds: int, out: str | None,
               processes: int | None = None, prefetch_capacity: int | None = 0, stagger: float = 0.0,
               heartbeat_period: float = 30.0, block_size: int = 0) -> int:
    """``htex-ref bench --fake-managers ...``: medians over ``rounds`` of each point, as a table."""
    import statistics

    soft, _ = raise_fd_limit()
    how = f"staggered over {stagger:g} s" if stagger > 0 else "simultaneous"
    pf = "auto" if prefetch_capacity is None else prefetch_capacity
    print(f"interchange load: fake managers {managers}, {workers} workers each, prefetch_capacity={pf}, "
          f"{tasks} no-op tasks, {rounds} round(s), unencrypted, registration "
          f"{how}, heartbeats every "
          f"{heartbeat_period:g} s (threshold 120 s); {platform.node()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, open files limit {soft}", flush=True)
    medians: list[SweepPoint] = []
    raw: list[dict[str, Any]] = []
    for m in managers:
        runs = []
        for r in range(rounds):
            p = measure(m, workers, tasks, processes=processes, prefetch_capacity=prefetch_capacity,
                        stagger=stagger, heartbeat_period=heartbeat_period, block_size=block_size)
            print(f"  managers={m} round {r + 1}: registered in {p.registration_s:.2f} s "
                  f"({p.refused} refused, {p.lost} lost; interchange {p.registration_cpu_us:.0f} us CPU per manager, "
                  f"fake managers {p.registration_fakes_cpu_us:.0f}), again onto the queue in "
                  f"{p.reregistration_s:.2f} s; {p.dispatches_per_s:,.0f} dispatches/s, "
                  f"{p.completions_per_s:,.0f} completions/s; steady state {p.steady_per_s:,.0f}/s "
                  f"(interchange {p.steady_cpu_s_per_1000 * 1000:.1f} CPU ms/1000 tasks); interchange "
                  f"{p.interchange_cpu_s_per_1000 * 1000:.1f} CPU ms/1000 tasks, RSS {p.rss_after / 2**20:.0f} MiB "
                  f"(peak {p.rss_peak / 2**20:.0f}), {p.manager_lost} ManagerLost, submit {p.submit_per_s:,.0f}/s; "
                  f"CPU ms per 1,000 tasks: executor {p.executor_cpu_s_per_1000 * 1000:.1f}, fake managers "
                  f"{p.fakes_cpu_s_per_1000 * 1000:.1f}"
                  + (f"; result path {p.results_per_s:,.0f} results/s, CPU ms per 1,000: interchange "
                     f"{p.results_cpu_s_per_1000 * 1000:.1f}, executor {p.results_executor_cpu_s_per_1000 * 1000:.1f}, "
                     f"fake managers {p.results_fakes_cpu_s_per_1000 * 1000:.1f}" if p.results_per_s else ""),
                  flush=True)
            runs.append(p)
            raw.append(asdict(p))

        def med(name: str, runs: list[SweepPoint] = runs) -> Any:
            return statistics.median(getattr(x, name) for x in runs)

        medians.append(SweepPoint(
            managers=m, workers_per_manager=workers, tasks=tasks, processes=runs[0].processes,
            dispatches_per_s=med("dispatches_per_s"), completions_per_s=med("completions_per_s"),
            interchange_cpu_s_per_1000=med("interchange_cpu_s_per_1000"), submit_per_s=med("submit_per_s"),
            wall_s=med("wall_s"), registration_s=med("registration_s"),
            registered=min(x.registered for x in runs), refused=max(x.refused for x in runs),
            lost=max(x.lost for x in runs), manager_lost=max(x.manager_lost for x in runs),
            register_again=max(x.register_again for x in runs), acks=int(med("acks")), acked=int(med("acked")),
            rss_before=int(med("rss_before")), rss_peak=max(x.rss_peak for x in runs),
            rss_after=int(med("rss_after")), rss_registered=int(med("rss_registered")),
            reregistration_s=med("reregistration_s"), registration_cpu_us=med("registration_cpu_us"),
            registration_fakes_cpu_us=med("registration_fakes_cpu_us"), results_per_s=med("results_per_s"),
            results_cpu_s_per_1000=med("results_cpu_s_per_1000"), steady_per_s=med("steady_per_s"),
            steady_cpu_s_per_1000=med("steady_cpu_s_per_1000"),
            executor_cpu_s_per_1000=med("executor_cpu_s_per_1000"), fakes_cpu_s_per_1000=med("fakes_cpu_s_per_1000"),
        ))
    print()
    print(format_sweep(medians))
    if len(medians) > 1:
        print()
        print(goals(medians))
    if out:
        Path(out).write_text(json.dumps({"rounds": raw, "medians": [asdict(p) for p in medians]}, indent=1))
        print(f"raw results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
