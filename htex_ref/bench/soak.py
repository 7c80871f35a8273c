"""Soak and memory runs: many tasks through a real executor while faults are injected.

``soak``: ``tasks`` echo calls flow through local blocks while, every ``kill_every`` seconds, a worker is
SIGKILLed in the middle of a task, and once (at ``manager_kill_at`` of the run) a whole worker pool
(manager) is SIGKILLed. With ``interchange_kills`` the interchange is SIGKILLed that many times, spread
over the run (``restart_interchange`` replaces it), and with ``pauses`` a pool is stopped (SIGSTOP) for
0.6 of ``heartbeat_threshold`` and resumed, as a short network partition would stall it. Worker kills
hit "victim" tasks that report their pid and then sleep, so every
kill lands on a busy worker and the expected count of ``WorkerLost`` is exact. The run checks that every
future resolves, that each successful echo returns its input, that only victims fail with
``WorkerLost``, that every ``ManagerLost`` names the pool that was killed, and reports how long each
fault took to surface, how long each restart took, and that no future's result was delivered twice.

``memory``: ``tasks`` no-op calls in windows; the RSS of the executor's process and of the interchange
is sampled as it goes, to show that neither grows with the number of tasks run.

Both are reached from ``htex-ref bench --soak N`` and ``htex-ref bench --memory N``; a small soak also
runs in the test suite.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import tempfile
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Futures kept outstanding at once, so that memory does not grow with the run's length.
WINDOW = 5000


def echo(x: int, pause: float) -> int:
    if pause:
        time.sleep(pause)
    return x


def victim(path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(600)


def noop() -> None:
    return None


@dataclass
class SoakReport:
    tasks: int
    succeeded: int = 0
    wrong_results: int = 0
    worker_kills: int = 0
    worker_lost: int = 0
    manager_kills: int = 0
    manager_lost: int = 0
    other_errors: Counter[str] = field(default_factory=Counter)
    unresolved: int = 0
    worker_detect_s: list[float] = field(default_factory=list)
    manager_detect_s: float | None = None
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    #: ManagerLost results among the echo tasks (the rest were victims on the killed pool).
    manager_lost_echo: int = 0
    first_manager_lost_seen: float | None = None
    #: What the monitoring database recorded: tasks, resolved tasks, and resolved tasks by outcome.
    monitored_tasks: int = 0
    monitored_ends: int = 0
    monitored_outcomes: dict[str, int] = field(default_factory=dict)
    interchange_kills: int = 0
    #: ``HighThroughputExecutor.interchange_restarts`` at the end.
    restarts: list[dict[str, Any]] = field(default_factory=list)
    pauses: int = 0
    #: Futures whose done-callbacks ran more than once (a result delivered twice): must be 0.
    doubled: int = 0
    #: Results that reached the executor for tasks already resolved (dropped: the first won).
    late_results: int = 0
    #: Tasks run again after a restart because no pool claimed them (they may have run twice).
    rerun: int = 0

    @property
    def lost(self) -> int:
        """Echo tasks that neither returned their input nor failed for an injected fault."""
        return self.tasks - self.succeeded - self.manager_lost_echo

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        det = sorted(self.worker_detect_s)
        med = det[len(det) // 2] if det else float("nan")
        lines = [
            f"soak: {self.tasks} echo tasks in {self.wall_s:.1f} s",
            f"  succeeded with the right result: {self.succeeded}; wrong results: {self.wrong_results}",
            f"  worker kills {self.worker_kills} -> WorkerLost {self.worker_lost} "
            f"(detected in median {med * 1000:.0f} ms, max {max(det, default=float('nan')) * 1000:.0f} ms)",
            f"  manager kills {self.manager_kills} -> ManagerLost {self.manager_lost} "
            f"({self.manager_lost_echo} echo tasks; detected after "
            + ("n/a" if self.manager_detect_s is None else f"{self.manager_detect_s:.2f} s") + ")",
            f"  interchange kills {self.interchange_kills} -> restarts {len(self.restarts)}: "
            + (", ".join(f"ready after {r.get('gap_s', float('nan')):.2f} s, recovered after "
                         f"{r.get('recovered_s', float('nan')):.2f} s ({r.get('adopted')} claimed, "
                         f"{r.get('requeued')} run again)" for r in self.restarts) or "none"),
            f"  pools paused {self.pauses} times (0.6 x heartbeat_threshold)",
            f"  other errors: {dict(self.other_errors) or 'none'}; unresolved futures: {self.unresolved}",
            f"  tasks lost without an injected cause: {self.lost}; results delivered twice: {self.doubled} "
            f"(late results dropped: {self.late_results}; tasks run again after a restart: {self.rerun})",
            f"  monitoring database: {self.monitored_tasks} tasks, {self.monitored_ends} resolved, "
            f"by outcome {self.monitored_outcomes}",
            "  verdict: " + ("OK" if self.ok else "PROBLEMS: " + "; ".join(self.problems)),
        ]
        return "\n".join(lines)


def _counter(calls: Counter[int], x: int) -> Any:
    def count(_fut: Future[Any]) -> None:
        calls[x] += 1

    return count


def _pool_pids(run_dir: str) -> list[int]:
    import psutil

    pids = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if run_dir in cmd and ("htex-worker-pool" in cmd or "htex_ref.worker_pool" in cmd):
            pids.append(p.pid)
    return pids


def soak(tasks: int = 100_000, workers: int = 2, blocks: int = 2, kill_every: float = 2.0,
         manager_kill_at: float = 0.5, pause: float = 0.0005, seed: int = 1, run_dir: str | None = None,
         heartbeat_threshold: float = 5.0, encrypted: bool = True, timeout: float = 3600.0,
         progress: bool = False, interchange_kills: int = 0, pauses: int = 0) -> SoakReport:
    from htex_ref import HighThroughputExecutor, LocalProvider, ManagerLost, WorkerLost

    own_dir = run_dir is None
    run_dir = run_dir or tempfile.mkdtemp(prefix="htex-soak-")
    rng = random.Random(seed)
    report = SoakReport(tasks=tasks)
    ex = HighThroughputExecutor(
        label="soak", provider=LocalProvider(init_blocks=blocks, min_blocks=blocks, max_blocks=blocks),
        max_workers_per_node=workers, address="127.0.0.1", encrypted=encrypted, run_dir=run_dir,
        heartbeat_period=max(0.5, heartbeat_threshold / 5), heartbeat_threshold=heartbeat_threshold,
        strategy="simple", strategy_period=1.0,
        restart_interchange=interchange_kills > 0, max_interchange_restarts=max(1, interchange_kills),
    )
    # Faults at fractions of the run: interchange kills spread over it (away from the pool kill at
    # ``manager_kill_at``), pauses early.
    kill_at = [round((i + 1) / (interchange_kills + 1) * 0.9 + 0.05, 3) for i in range(interchange_kills)]
    kill_at = [f if abs(f - manager_kill_at) > 0.1 else f + 0.12 for f in kill_at]
    pause_at = [0.1 + 0.3 * i / max(1, pauses) for i in range(pauses)]
    paused: tuple[int, float] | None = None  # (pid, when to resume)
    calls: Counter[int] = Counter()
    t_start = time.monotonic()
    deadline = t_start + timeout
    victims: list[tuple[Future[Any], float]] = []
    #: When each victim's future resolved, stamped by a done-callback on the link thread.
    resolved_at: dict[Future[Any], float] = {}
    killed_pool: int | None = None
    manager_kill_time: float | None = None
    outstanding: dict[Future[Any], int] = {}
    ex.start()
    try:
        next_kill = time.monotonic() + kill_every
        next_report = time.monotonic() + 5.0
        submitted = 0
        done_echo = 0

        def settle(fut: Future[Any], x: int) -> None:
            nonlocal done_echo
            done_echo += 1
            exc = fut.exception(0)
            if exc is None:
                if fut.result() == x:
                    report.succeeded += 1
                else:
                    report.wrong_results += 1
            elif isinstance(exc, ManagerLost):
                report.manager_lost += 1
                report.manager_lost_echo += 1
                if report.first_manager_lost_seen is None:
                    report.first_manager_lost_seen = time.monotonic()
            else:
                report.other_errors[type(exc).__name__] += 1

        while done_echo < tasks:
            if time.monotonic() > deadline:
                report.problems.append(f"gave up after {timeout:.0f} s")
                break
            while submitted < tasks and len(outstanding) < WINDOW:
                new = ex.submit(echo, submitted, pause)
                new.add_done_callback(_counter(calls, submitted))
                outstanding[new] = submitted
                submitted += 1
            for fut in [f for f in outstanding if f.done()]:
                settle(fut, outstanding.pop(fut))
            now = time.monotonic()
            if paused is not None and now >= paused[1]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(paused[0], signal.SIGCONT)
                paused = None
            if kill_at and done_echo >= kill_at[0] * tasks:
                kill_at.pop(0)
                proc = ex.interchange_process
                if proc is not None and proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    report.interchange_kills += 1
            elif pause_at and paused is None and done_echo >= pause_at[0] * tasks:
                pause_at.pop(0)
                pools = [p for p in _pool_pids(run_dir) if p != killed_pool]
                if pools:
                    target = rng.choice(pools)
                    os.kill(target, signal.SIGSTOP)
                    paused = (target, now + 0.6 * heartbeat_threshold)
                    report.pauses += 1
            elif killed_pool is None and done_echo >= manager_kill_at * tasks:
                pools = [p for p in _pool_pids(run_dir) if paused is None or p != paused[0]]
                if pools:
                    killed_pool = rng.choice(pools)
                    os.kill(killed_pool, signal.SIGKILL)
                    manager_kill_time = time.monotonic()
                    report.manager_kills += 1
            elif now >= next_kill and done_echo < 0.9 * tasks:
                marker = os.path.join(run_dir, f"victim-{report.worker_kills}")
                vf = ex.submit(victim, marker, resource_specification={"priority": -1})
                vf.add_done_callback(lambda f: resolved_at.setdefault(f, time.monotonic()))
                t0 = time.monotonic()
                while not os.path.exists(marker) and not vf.done() and time.monotonic() - t0 < 60:
                    for fut in [f for f in outstanding if f.done()]:
                        settle(fut, outstanding.pop(fut))
                    time.sleep(0.002)
                if os.path.exists(marker):
                    os.kill(int(Path(marker).read_text()), signal.SIGKILL)
                    report.worker_kills += 1
                    victims.append((vf, time.monotonic()))
                else:
                    victims.append((vf, float("nan")))
                next_kill = time.monotonic() + kill_every
            if progress and now >= next_report:
                next_report = now + 5.0
                print(f"  {done_echo}/{tasks} done, {report.worker_kills} worker kills", flush=True)
            time.sleep(0.001)
        for rest, x in list(outstanding.items()):
            try:
                rest.exception(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                report.unresolved += 1
                continue
            settle(rest, x)
        for vfut, killed_at in victims:
            if killed_at != killed_at:  # NaN: it never started, so it was never killed; do not wait 600 s
                report.problems.append("a victim task did not start within 60 s")
                continue
            try:
                exc = vfut.exception(max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                report.unresolved += 1
                continue
            if isinstance(exc, WorkerLost):
                report.worker_lost += 1
                report.worker_detect_s.append(resolved_at[vfut] - killed_at)
            elif isinstance(exc, ManagerLost):
                report.manager_lost += 1  # a victim that was running on the pool killed as a whole
            else:
                report.problems.append(f"a victim ended with {exc!r}")
        if manager_kill_time is not None and report.first_manager_lost_seen is not None:
            report.manager_detect_s = report.first_manager_lost_seen - manager_kill_time
        report.doubled = sum(1 for n in calls.values() if n > 1)
        report.late_results = ex.table.late_results
        # A recovery's end may be reported just after the last result.
        end = time.monotonic() + 5
        while time.monotonic() < end and any("recovered_s" not in r for r in ex.interchange_restarts):
            time.sleep(0.05)
        report.restarts = ex.interchange_restarts
        report.rerun = sum(r.get("requeued") or 0 for r in report.restarts)
    finally:
        if paused is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(paused[0], signal.SIGCONT)
        report.wall_s = time.monotonic() - t_start
        ex.shutdown(wait=False, cancel_futures=True)
        if ex.monitoring_store is not None:
            _read_monitoring(report, ex.monitoring_store.path)
        if own_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    _judge(report, len(victims), submitted + len(victims))
    return report


def _read_monitoring(report: SoakReport, path: str) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    try:
        report.monitored_tasks = db.execute("SELECT COUNT(*) FROM task").fetchone()[0]
        report.monitored_ends = db.execute("SELECT COUNT(*) FROM task_end").fetchone()[0]
        report.monitored_outcomes = dict(db.execute("SELECT outcome, COUNT(*) FROM task_end GROUP BY outcome"))
    finally:
        db.close()


def _judge(report: SoakReport, victims: int, submitted: int) -> None:
    if report.monitored_tasks != submitted or report.monitored_ends != submitted:
        report.problems.append(f"{submitted} tasks submitted, but the monitoring database recorded "
                               f"{report.monitored_tasks}, {report.monitored_ends} of them resolved")
    outcomes = report.monitored_outcomes
    if (outcomes.get("OK", 0) != report.succeeded or outcomes.get("WORKER_LOST", 0) != report.worker_lost
            or outcomes.get("MANAGER_LOST", 0) != report.manager_lost):
        report.problems.append(f"the monitoring database's outcomes {outcomes} differ from the futures' "
                               f"(ok {report.succeeded}, WorkerLost {report.worker_lost}, "
                               f"ManagerLost {report.manager_lost})")
    if report.unresolved:
        report.problems.append(f"{report.unresolved} futures never resolved")
    if report.wrong_results:
        report.problems.append(f"{report.wrong_results} wrong results")
    if report.other_errors:
        report.problems.append(f"unexpected errors {dict(report.other_errors)}")
    if report.worker_lost + (report.manager_lost - report.manager_lost_echo) != report.worker_kills:
        report.problems.append(f"{report.worker_kills} worker kills but {report.worker_lost} WorkerLost")
    if report.manager_kills and not report.manager_lost:
        # A pool killed while idle has no tasks to lose; with this load that would be surprising.
        report.problems.append("a pool was killed but no task reported ManagerLost")
    if report.lost:
        report.problems.append(f"{report.lost} echo tasks lost without an injected cause")
    if report.doubled:
        report.problems.append(f"{report.doubled} futures had their result delivered twice")
    if len(report.restarts) != report.interchange_kills:
        report.problems.append(f"{report.interchange_kills} interchange kills but {len(report.restarts)} restarts")


@dataclass
class MemorySample:
    tasks_done: int
    executor_rss_mib: float
    interchange_rss_mib: float


def memory(tasks: int = 1_000_000, workers: int = 2, samples: int = 10, run_dir: str | None = None,
           encrypted: bool = False, progress: bool = False) -> list[MemorySample]:
    """Run ``tasks`` no-op calls in windows of ``WINDOW``; sample both processes' RSS ``samples`` times."""
    import psutil

    from htex_ref import HighThroughputExecutor, LocalProvider

    own_dir = run_dir is None
    run_dir = run_dir or tempfile.mkdtemp(prefix="htex-memory-")
    ex = HighThroughputExecutor(label="memory", provider=LocalProvider(), max_workers_per_node=workers,
                                address="127.0.0.1", encrypted=encrypted, run_dir=run_dir)
    ex.start()
    out: list[MemorySample] = []
    try:
        assert ex.interchange_process is not None
        me, interchange = psutil.Process(), psutil.Process(ex.interchange_process.pid)

        def sample(done: int) -> None:
            s = MemorySample(done, me.memory_info().rss / 2**20, interchange.memory_info().rss / 2**20)
            out.append(s)
            if progress:
                print(f"  {done:>9} tasks: executor {s.executor_rss_mib:.1f} MiB, "
                      f"interchange {s.interchange_rss_mib:.1f} MiB", flush=True)

        every = max(WINDOW, tasks // samples)
        done = 0
        sample(0)
        while done < tasks:
            n = min(WINDOW, tasks - done)
            for f in [ex.submit(noop) for _ in range(n)]:
                f.result(600)
            done += n
            if done % every < WINDOW or done == tasks:
                sample(done)
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        if own_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    return out


def memory_text(samples: list[MemorySample]) -> str:
    lines = ["| tasks done | executor RSS MiB | interchange RSS MiB |", "|---:|---:|---:|"]
    lines += [f"| {s.tasks_done:,} | {s.executor_rss_mib:.1f} | {s.interchange_rss_mib:.1f} |" for s in samples]
    if len(samples) > 2:
        # Growth after the first window (imports and warm-up buffers are not per-task cost).
        first, last = samples[1], samples[-1]
        lines.append(f"\ngrowth from {first.tasks_done:,} to {last.tasks_done:,} tasks: executor "
                     f"{last.executor_rss_mib - first.executor_rss_mib:+.1f} MiB, interchange "
                     f"{last.interchange_rss_mib - first.interchange_rss_mib:+.1f} MiB")
    return "\n".join(lines)
