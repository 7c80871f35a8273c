"""The worker pool's (manager's) decisions as a pure state machine.

``ManagerState`` tracks each worker slot (starting, idle, busy), the tasks the interchange handed over
but no worker has started yet (up to ``prefetch_capacity`` of them), the heartbeat timers in both
directions, and worker deaths. The runtime (``htex_ref.worker_pool``) feeds it events and carries out
its instructions.

Rules it keeps:

1. A worker runs at most one task and holds at most one more, handed over in advance; a task runs on
   at most one worker. Tasks are handed over in advance only while recent calls ran shorter than
   ``advance_max_task_time``, every worker is busy, and the worker's current task started less than
   ``advance_max_task_time`` ago, so the next task is already waiting in the worker's socket when a
   short task ends, and a long task never has another stuck behind it.
2. Tasks waiting here run lowest priority value first, in arrival order within a priority (the
   interchange's order). A task handed over in advance is committed to its worker, which is why rule 1
   only hands one to a worker that should finish soon: a task of higher priority that arrives later
   waits at most about ``advance_max_task_time`` behind it.
3. A worker that dies while running a task produces exactly one ``WORKER_LOST`` result for that task,
   and the slot is restarted; a task it held but had not started goes back to the front of its priority.
4. A worker slot that dies ``max_startup_failures`` times in a row before it ever becomes ready stops
   the pool with an error naming the slot and exit code, instead of a restart loop.
5. The pool rides out a lost interchange: its tasks keep running and their results are kept. It exits
   when the interchange has been silent for ``reconnect_timeout`` seconds (a network partition), or
   when the connection has been down (refused or reset: the interchange process is gone) for
   ``reconnect_grace`` seconds without coming back (a restarted interchange is back within a second or
   two). When the connection comes back after being down, or the interchange asks (it does not know
   this pool: it declared it lost, or it was restarted), the pool registers again naming every task it
   holds (``Register``: queued, running, or finished and not acknowledged).
12. A result is kept until the interchange acknowledges it (``ResultsAcked``, sent once the executor
    has it), and every unacknowledged result is sent again after registering again. Tasks the
    interchange says to drop (``DropTasks``: they were declared lost and failed or retried, or ended
    elsewhere) are stopped or removed without a result, and their kept results forgotten.
6. A worker killed by SIGTERM is not reported at once: a batch system ending a job (``scancel``,
   walltime) sends SIGTERM to the pool and its workers together, in no set order, and the task should
   fail as lost with its pool (ManagerLost), not as a worker's own death. If the pool's own stop
   arrives within ``term_grace`` seconds, the task goes out with the pool's goodbye; otherwise it is
   reported as ``WORKER_LOST`` when the grace ends.
7. In MPI mode (``mpi`` given) the waiting tasks live in an ``MpiScheduler``: a task starts when a
   worker is idle and the scheduler's policy gives it its nodes; the nodes come back when its result
   arrives or its worker dies. A task that no state of the block's nodes could run, or whose MPI
   request cannot be read, is refused at once (``REFUSED``) rather than left waiting. Nothing is
   handed over in advance in MPI mode: nodes are given when a task starts, not before.
8. Results go back at once when no task is waiting here for a worker (someone may be waiting on
   them); while tasks wait, results are held up to ``result_batch_delay`` seconds or
   ``result_batch_size`` results, so that under load they travel in batches.
9. Stopping a task (its ``walltime`` ran out, it was cancelled with ``kill_running``, or its worker went
   over ``memory_limit``) stops its worker: SIGTERM to the worker's process group, SIGKILL to it
   ``kill_grace`` seconds later if the worker still lives. The task then produces exactly one result:
   ``TIMEOUT``, ``CANCELLED`` or ``MEMORY_EXCEEDED`` when the worker exits, or its own result if that
   came first. Every stopped worker is replaced, and a task it held in advance goes back to the front
   of its priority. A worker running a task with a time limit is handed nothing in advance, so that
   stopping it never takes a second task with it.
10. A cancelled task waiting here is dropped (``CANCELLED``); one running is left to finish unless the
    cancel asks to stop it; one already handed to a worker in advance runs (its result is ignored
    upstream). A cancel for a task this pool no longer holds does nothing.
11. Whenever a worker process exits, its process group is sent SIGKILL, so no child a task started
    (a bash app's commands, a subprocess) outlives its worker. A worker that the kernel's OOM killer
    ended (the runtime tells, from its cgroup's counter) fails its task as ``MEMORY_EXCEEDED``.
"""

from __future__ import annotations

import heapq
import json
import math
import signal
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from htex_ref.core.mpi import MpiRequest, MpiScheduler, compose_prefixes, parse_mpi_request
from htex_ref.core.notes import INFO, WARNING, Note
from htex_ref.errors import InvalidResourceSpecification
from htex_ref.framing import Frame
from htex_ref.protocol import Outcome, ResultTuple


@dataclass(frozen=True, slots=True)
class PoolTask:
    task_id: int
    frames: tuple[Any, ...]
    #: Lower runs first (the task header's priority; infinity when the task has none).
    priority: float = math.inf
    #: What an MPI task asks for (None: not an MPI task).
    request: MpiRequest | None = None
    #: Why the task's MPI request could not be read (it is refused on arrival).
    refused: str | None = None
    #: Seconds the task may run before its worker is stopped (None: no limit).
    walltime: float | None = None


def check_walltime(value: Any) -> float:
    """A task's ``walltime``: a finite number of seconds > 0 (``InvalidResourceSpecification`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise InvalidResourceSpecification({"walltime"}, f"walltime must be a finite number of seconds > 0, "
                                                         f"got {value!r}")
    return float(value)


def make_pool_task(task_id: int, frames: tuple[Any, ...], priority: float, spec: dict[str, Any] | None) -> PoolTask:
    """A task as the pool holds it, its time limit and MPI request (the task header's specification) checked."""
    if spec is None:
        return PoolTask(task_id, frames, priority)
    try:
        walltime = check_walltime(spec["walltime"]) if "walltime" in spec else None
        return PoolTask(task_id, frames, priority, parse_mpi_request(spec), walltime=walltime)
    except InvalidResourceSpecification as e:
        return PoolTask(task_id, frames, priority, refused=str(e))


@dataclass(slots=True)
class StopOrder:
    """A worker being stopped because of its task (rule 9)."""

    task_id: int
    #: None: the task was dropped (rule 12) and its worker stops without a result.
    outcome: Outcome | None
    #: What the task's result says (JSON): worker, host, detail, and the limit that was passed.
    report: dict[str, Any]
    #: When SIGKILL follows the SIGTERM.
    kill_at: float
    killed: bool = False


@dataclass(slots=True)
class WorkerSlot:
    rank: int
    state: str = "starting"  # starting | idle | busy | stopped
    task_id: int | None = None
    #: When the worker was given its current task (``now`` of that call).
    started_at: float = 0.0
    #: A task handed over in advance, which the worker starts as soon as ``task_id`` ends.
    next_task: PoolTask | None = None
    startup_failures: int = 0
    starts: int = 1
    #: When the current task's time limit ends (None: no limit), and the limit in seconds.
    deadline: float | None = None
    limit: float = 0.0
    #: Set while the worker is being stopped.
    stop: StopOrder | None = None
    #: The current task (and the one handed over in advance) was dropped (rule 12): no result goes out.
    silent: bool = False
    next_silent: bool = False


class LocalQueue:
    """Tasks the interchange handed over that no worker has started: lowest priority value first, in
    arrival order within a priority. One deque per priority and a heap of the priorities present; when a
    single priority is in use (the usual case) its emptied deque is kept, so a task costs no heap work."""

    __slots__ = ("_levels", "_priorities", "count")

    def __init__(self) -> None:
        self._levels: dict[float, deque[PoolTask]] = {}
        self._priorities: list[float] = []
        #: Tasks queued (an attribute rather than ``len()``: the manager's core reads it on every call).
        self.count = 0

    def _level(self, priority: float) -> deque[PoolTask]:
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = deque()
            heapq.heappush(self._priorities, priority)
        return level

    def append(self, task: PoolTask) -> None:
        self._level(task.priority).append(task)
        self.count += 1

    def extend(self, tasks: list[PoolTask]) -> None:
        if len(self._priorities) == 1 and all(t.priority == self._priorities[0] for t in tasks):
            self._levels[self._priorities[0]].extend(tasks)  # the usual case: one priority in use
        else:
            for task in tasks:
                self._level(task.priority).append(task)
        self.count += len(tasks)

    def appendleft(self, task: PoolTask) -> None:
        """Put a task back in front of its priority (one a dead worker held but never started)."""
        self._level(task.priority).appendleft(task)
        self.count += 1

    def popleft(self) -> PoolTask:
        priorities = self._priorities
        levels = self._levels
        while True:
            priority = priorities[0]
            level = levels[priority]
            if level:
                break
            # An emptied level kept for reuse, now in the way of another priority.
            del levels[priority]
            heapq.heappop(priorities)
        task = level.popleft()
        self.count -= 1
        if not level and len(priorities) > 1:
            del levels[priority]
            heapq.heappop(priorities)
        return task

    def clear(self) -> None:
        self._levels.clear()
        self._priorities.clear()
        self.count = 0

    def remove(self, task_ids: frozenset[int] | set[int]) -> list[PoolTask]:
        """Take the tasks whose ids are in ``task_ids`` out of the queue (order kept); returns them."""
        gone: list[PoolTask] = []
        for priority, level in self._levels.items():
            if any(t.task_id in task_ids for t in level):
                gone.extend(t for t in level if t.task_id in task_ids)
                self._levels[priority] = deque(t for t in level if t.task_id not in task_ids)
        self.count -= len(gone)
        return gone

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[PoolTask]:
        """In the order they would run."""
        for priority in sorted(self._levels):
            yield from self._levels[priority]


# events


@dataclass(frozen=True, slots=True)
class TasksArrived:
    tasks: list[PoolTask]


@dataclass(frozen=True, slots=True)
class WorkerReady:
    rank: int


@dataclass(frozen=True, slots=True)
class WorkerResult:
    rank: int
    task_id: int
    outcome: Outcome
    payload: Frame
    run_time: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkerExited:
    rank: int
    exit_code: int | None
    #: The runtime saw the kernel's OOM killer end it (its cgroup's oom_kill counter rose).
    oom: bool = False


@dataclass(frozen=True, slots=True)
class WorkerMemory:
    """A sample of the memory (bytes, resident) a busy worker and its children use."""

    rank: int
    rss: int


@dataclass(frozen=True, slots=True)
class CancelTasks:
    task_ids: tuple[int, ...]
    #: Stop the workers of those that are running (otherwise they finish).
    kill_running: bool = False


@dataclass(frozen=True, slots=True)
class InterchangeContact:
    pass


@dataclass(frozen=True, slots=True)
class InterchangeDisconnected:
    pass


@dataclass(frozen=True, slots=True)
class InterchangeConnected:
    pass


@dataclass(frozen=True, slots=True)
class StopRequested:
    reason: str
    error: bool = False


@dataclass(frozen=True, slots=True)
class ResultsAcked:
    """The interchange (and so the executor) has the results of these tasks."""

    task_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DropTasks:
    """The interchange says these tasks ended elsewhere: stop them, report nothing (rule 12)."""

    task_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RegisterAgainRequested:
    """The interchange does not know this pool (rule 5)."""

    reason: str


@dataclass(frozen=True, slots=True)
class RegistrationAccepted:
    pass


Event = (
    TasksArrived
    | WorkerReady
    | WorkerResult
    | WorkerExited
    | WorkerMemory
    | CancelTasks
    | InterchangeContact
    | InterchangeDisconnected
    | InterchangeConnected
    | StopRequested
    | ResultsAcked
    | DropTasks
    | RegisterAgainRequested
    | RegistrationAccepted
)


# instructions


@dataclass(frozen=True, slots=True)
class RunTask:
    rank: int
    task: PoolTask
    #: Variables the worker sets for this task only (an MPI task's prefixes and nodes).
    env: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class SendResults:
    results: list[ResultTuple]


@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    pass


@dataclass(frozen=True, slots=True)
class StartWorker:
    rank: int


@dataclass(frozen=True, slots=True)
class SignalWorker:
    """Send ``signum`` to the process group of the worker in slot ``rank`` (its current process, or the
    one that just exited when this comes before the slot's ``StartWorker``)."""

    rank: int
    signum: int


@dataclass(frozen=True, slots=True)
class Exit:
    reason: str
    error: bool
    #: Tasks the pool held but could not finish; the interchange learns of them through "bye".
    unfinished: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Register:
    """Register again, naming the tasks this pool holds (rule 5)."""

    held: tuple[int, ...]


Instruction = RunTask | SendResults | SendHeartbeat | StartWorker | SignalWorker | Exit | Register | Note


class ManagerState:
    def __init__(
        self,
        worker_count: int,
        heartbeat_period: float,
        heartbeat_threshold: float,
        now: float,
        hostname: str = "localhost",
        max_startup_failures: int = 3,
        result_batch_delay: float = 0.002,
        result_batch_size: int = 256,
        reconnect_grace: float = 10.0,
        advance_max_task_time: float = 0.1,
        term_grace: float = 2.0,
        mpi: MpiScheduler | None = None,
        mpi_launcher: str = "mpiexec",
        kill_grace: float = 2.0,
        memory_limit: int | None = None,
        reconnect_timeout: float | None = None,
    ) -> None:
        self.kill_grace = kill_grace
        #: Bytes a worker (with its children) may hold while running a task (None: not enforced).
        self.memory_limit = memory_limit
        #: (when, sequence, rank): when a slot's time limit or kill time may be due. Checked against the
        #: slot when it comes due, so entries left by tasks that ended cost nothing but a pop.
        self._task_timers: list[tuple[float, int, int]] = []
        self._timer_seq = 0
        self.mpi = mpi
        self.mpi_launcher = mpi_launcher
        self.term_grace = term_grace
        #: (deadline, result) of tasks whose worker was killed by SIGTERM, held for ``term_grace``.
        self._deferred: list[tuple[float, ResultTuple]] = []
        self.advance_max_task_time = advance_max_task_time
        #: Moving average of how long calls ran here; None until the first result.
        self.avg_task_time: float | None = None
        #: How long the interchange may be silent before this pool gives up (rule 5).
        self.reconnect_timeout = 2 * heartbeat_threshold if reconnect_timeout is None else reconnect_timeout
        self.reconnect_grace = min(reconnect_grace, self.reconnect_timeout)
        self.disconnected_since: float | None = None
        #: Results sent and not yet acknowledged (rule 12), by task id.
        self.unacked: dict[int, ResultTuple] = {}
        #: When this pool last asked to register again (None: not waiting for an answer).
        self.registering_since: float | None = None
        self.hostname = hostname
        self.result_batch_delay = result_batch_delay
        self.result_batch_size = result_batch_size
        #: When the oldest result held for batching arrived (None: none held). Read-only outside.
        self.results_since: float | None = None
        self.heartbeat_period = heartbeat_period
        self.heartbeat_threshold = heartbeat_threshold
        self.max_startup_failures = max_startup_failures
        self.workers = {rank: WorkerSlot(rank) for rank in range(worker_count)}
        self.queue: LocalQueue | MpiScheduler = mpi if mpi is not None else LocalQueue()
        self._busy = 0
        self.last_contact = now
        self.last_heartbeat = now
        self.exiting = False
        self._idle: deque[int] = deque()
        self._out: list[Instruction] = []
        self._results: list[ResultTuple] = []

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def held(self) -> int:
        """Tasks the pool holds: queued here, running, or handed to a worker in advance."""
        return len(self.queue) + self.busy + sum(1 for w in self.workers.values() if w.next_task is not None)

    def handle(self, *events: Event, now: float) -> list[Instruction]:
        handlers = self._handlers
        for ev in events:
            if self.exiting:
                break
            handlers[type(ev)](self, ev, now)
        if not self.exiting:
            if self.queue.count:
                self._assign(now)
            self._timers(now)
        if self._results:
            if self.results_since is None:
                self.results_since = now
            if (self.exiting or not self.queue.count or len(self._results) >= self.result_batch_size
                    or now >= self.results_since + self.result_batch_delay):
                # Results come before an Exit so the runtime sends them before saying goodbye.
                results = self._results
                self._out.insert(0, SendResults(results))
                unacked = self.unacked
                for r in results:
                    unacked[r[0]] = r
                self._results = []
                self.results_since = None
        out, self._out = self._out, []
        return out

    def results_due(self) -> float | None:
        """When results held for batching must go out even if nothing else happens (None: none held)."""
        return None if self.results_since is None else self.results_since + self.result_batch_delay

    def task_timer_due(self) -> float | None:
        """When a task's time limit or a stopped worker's SIGKILL may be due (None: no such timer)."""
        return self._task_timers[0][0] if self._task_timers else None

    def held_ids(self) -> tuple[int, ...]:
        """Every task this pool holds: queued, running, handed over in advance, or finished with its result
        not yet acknowledged (what a registration names, rule 5)."""
        ids = {t.task_id for t in self.queue}
        for w in self.workers.values():
            if w.task_id is not None and not w.silent and (w.stop is None or w.stop.outcome is not None):
                ids.add(w.task_id)
            if w.next_task is not None and not w.next_silent:
                ids.add(w.next_task.task_id)
        ids.update(lost[0] for _, lost in self._deferred)
        ids.update(r[0] for r in self._results)
        ids.update(self.unacked)
        return tuple(sorted(ids))

    def next_deadline(self) -> float:
        deadline = min(self.last_heartbeat + self.heartbeat_period, self.last_contact + self.reconnect_timeout)
        if self.results_since is not None:
            deadline = min(deadline, self.results_since + self.result_batch_delay)
        if self.disconnected_since is not None:
            deadline = min(deadline, self.disconnected_since + self.reconnect_grace)
        if self._deferred:
            deadline = min(deadline, self._deferred[0][0])
        if self._task_timers:
            deadline = min(deadline, self._task_timers[0][0])
        return deadline

    # events

    def _on_tasks(self, ev: TasksArrived, now: float) -> None:
        if self.mpi is None and not any(t.request is not None or t.refused for t in ev.tasks):
            self.queue.extend(ev.tasks)
            return
        for task in ev.tasks:
            why = task.refused
            if why is None and task.request is not None:
                why = ("this worker pool is not in MPI mode" if self.mpi is None
                       else self.mpi.unsatisfiable(task.request))
            if why is None:
                self.queue.append(task)
            else:
                detail = f"MPI task refused by the worker pool on {self.hostname}: {why}"
                self._out.append(Note(WARNING, f"Task {task.task_id}: {detail}"))
                payload = json.dumps({"host": self.hostname, "detail": detail}).encode()
                self._results.append((task.task_id, Outcome.REFUSED, payload, 0.0))

    def _on_ready(self, ev: WorkerReady, now: float) -> None:
        slot = self.workers.get(ev.rank)
        if slot is None or slot.state != "starting":
            self._out.append(Note(WARNING, f"Unexpected ready from worker {ev.rank}"))
            return
        slot.state = "idle"
        slot.startup_failures = 0
        self._idle.append(ev.rank)

    def _on_result(self, ev: WorkerResult, now: float) -> None:
        slot = self.workers.get(ev.rank)
        if slot is None or slot.state != "busy" or slot.task_id != ev.task_id:
            self._out.append(Note(WARNING, f"Dropping result for task {ev.task_id} from worker {ev.rank} "
                                           "that was not running it"))
            return
        if slot.silent or (slot.stop is not None and slot.stop.outcome is None):
            slot.silent = False  # a dropped task (rule 12): its result goes nowhere
        else:
            self._results.append((ev.task_id, ev.outcome, ev.payload, ev.run_time))
        if self.mpi is not None:
            self.mpi.release(ev.task_id)
        avg = self.avg_task_time
        self.avg_task_time = ev.run_time if avg is None else 0.9 * avg + 0.1 * ev.run_time
        if slot.stop is not None:
            # The task finished before its stop took effect: its own result stands (rule 9), and the
            # worker, already signalled, is replaced when it exits.
            slot.state = "stopping"
            slot.task_id = None
            slot.deadline = None
            self._busy -= 1
            return
        if ev.outcome is Outcome.MEMORY_EXCEEDED:
            # The worker hit its memory limit and exits after this result; it is replaced then.
            slot.state = "stopping"
            slot.task_id = None
            slot.deadline = None
            self._busy -= 1
            self._requeue_next(slot)
            return
        if slot.next_task is not None:
            # The worker already has its next task and has started it.
            task, slot.next_task = slot.next_task, None
            self._begin(slot, task, now)
            slot.silent, slot.next_silent = slot.next_silent, False
            return
        slot.state = "idle"
        slot.task_id = None
        slot.deadline = None
        self._busy -= 1
        self._idle.append(ev.rank)

    def _on_exit(self, ev: WorkerExited, now: float) -> None:
        slot = self.workers.get(ev.rank)
        if slot is None:
            return
        stop, slot.stop = slot.stop, None
        silent, slot.silent = slot.silent or (stop is not None and stop.outcome is None), False
        if slot.state == "busy" and slot.task_id is not None and silent:
            if self.mpi is not None:
                self.mpi.release(slot.task_id)  # a dropped task (rule 12): no result
        elif slot.state == "busy" and slot.task_id is not None and stop is not None:
            if self.mpi is not None:
                self.mpi.release(slot.task_id)
            assert stop.outcome is not None
            report = dict(stop.report, exit_code=ev.exit_code, killed=stop.killed)
            self._results.append((slot.task_id, stop.outcome, json.dumps(report).encode(), 0.0))
        elif slot.state == "busy" and slot.task_id is not None and ev.oom:
            if self.mpi is not None:
                self.mpi.release(slot.task_id)
            report = {"worker": ev.rank, "host": self.hostname, "limit": self.memory_limit, "peak_rss": None,
                      "detail": "the kernel's OOM killer ended the worker (SIGKILL; its cgroup's oom_kill "
                                "counter rose) while it ran the task"}
            self._results.append((slot.task_id, Outcome.MEMORY_EXCEEDED, json.dumps(report).encode(), 0.0))
        elif slot.state == "busy" and slot.task_id is not None:
            if self.mpi is not None:
                self.mpi.release(slot.task_id)
            detail = f"worker process exited with code {ev.exit_code} while running the task"
            payload = json.dumps({"worker": ev.rank, "host": self.hostname, "detail": detail}).encode()
            lost: ResultTuple = (slot.task_id, Outcome.WORKER_LOST, payload, 0.0)
            if ev.exit_code == -signal.SIGTERM and self.term_grace > 0:
                self._out.append(Note(INFO, f"Worker {ev.rank} got SIGTERM while running task {slot.task_id}; "
                                            f"reporting it in {self.term_grace:.1f} s unless this pool is "
                                            "stopped first"))
                self._deferred.append((now + self.term_grace, lost))
            else:
                self._results.append(lost)
        elif slot.state == "starting":
            slot.startup_failures += 1
            if slot.startup_failures >= self.max_startup_failures:
                self._exit(
                    f"worker {ev.rank} died {slot.startup_failures} times in a row before it became ready "
                    f"(last exit code {ev.exit_code}); see the worker logs of this pool",
                    error=True,
                )
                return
        # Handed over in advance but never started: it goes back to the front of its priority.
        self._requeue_next(slot)
        if ev.rank in self._idle:
            self._idle.remove(ev.rank)
        if slot.state == "busy":
            self._busy -= 1
        slot.state = "starting"
        slot.task_id = None
        slot.deadline = None
        slot.starts += 1
        # Rule 11: whatever the worker's children were doing ends with it.
        self._out.append(SignalWorker(ev.rank, signal.SIGKILL))
        self._out.append(StartWorker(ev.rank))

    def _on_memory(self, ev: WorkerMemory, now: float) -> None:
        slot = self.workers.get(ev.rank)
        limit = self.memory_limit
        if (limit is None or slot is None or slot.state != "busy" or slot.task_id is None or slot.stop is not None
                or ev.rss <= limit):
            return
        self._stop(slot, now, Outcome.MEMORY_EXCEEDED, {
            "limit": limit, "peak_rss": ev.rss,
            "detail": f"the worker and its children held {ev.rss / 2**20:.0f} MiB, over its memory limit of "
                      f"{limit / 2**20:.0f} MiB (mem_per_worker)"})

    def _on_cancel(self, ev: CancelTasks, now: float) -> None:
        ids = frozenset(ev.task_ids)
        dropped = self.queue.remove(ids) if self.queue.count else []
        for task in dropped:
            report = {"worker": None, "host": self.hostname, "detail": "cancelled while queued on the worker pool"}
            self._results.append((task.task_id, Outcome.CANCELLED, json.dumps(report).encode(), 0.0))
        if not ev.kill_running:
            return
        for slot in self.workers.values():
            if slot.state == "busy" and slot.task_id in ids and slot.stop is None:
                self._stop(slot, now, Outcome.CANCELLED, {"detail": "cancelled while running; its worker was stopped"})

    def _on_contact(self, ev: InterchangeContact, now: float) -> None:
        self.last_contact = now

    def _on_acked(self, ev: ResultsAcked, now: float) -> None:
        unacked = self.unacked
        for tid in ev.task_ids:
            unacked.pop(tid, None)

    def _on_drop(self, ev: DropTasks, now: float) -> None:
        ids = frozenset(ev.task_ids)
        for tid in ids:
            self.unacked.pop(tid, None)
        if self._results:
            self._results = [r for r in self._results if r[0] not in ids]
        if self._deferred:
            self._deferred = [d for d in self._deferred if d[1][0] not in ids]
        if self.queue.count:
            self.queue.remove(ids)
        for slot in self.workers.values():
            if slot.next_task is not None and slot.next_task.task_id in ids:
                slot.next_silent = True
            if slot.state == "busy" and slot.task_id in ids and not slot.silent:
                if slot.stop is None:
                    self._stop(slot, now, None, {"detail": "dropped: the interchange says it ended elsewhere"})
                else:
                    slot.stop.outcome = None
        self._out.append(Note(WARNING, f"Dropped {len(ids)} tasks the interchange says ended elsewhere"))

    def _on_register_again(self, ev: RegisterAgainRequested, now: float) -> None:
        if self.registering_since is not None and now - self.registering_since < self.heartbeat_period:
            return  # asked already; the answer is on its way
        self._out.append(Note(INFO, f"The interchange asks this pool to register again: {ev.reason}"))
        self._register(now)

    def _register(self, now: float) -> None:
        self.registering_since = now
        self._out.append(Register(self.held_ids()))

    def _on_registered(self, ev: RegistrationAccepted, now: float) -> None:
        self.registering_since = None
        self.last_contact = now
        if self.unacked:
            # Rule 12: the interchange may never have had these (or the executor may not).
            self._out.append(SendResults(list(self.unacked.values())))

    def _on_stop(self, ev: StopRequested, now: float) -> None:
        self._exit(ev.reason, error=ev.error)

    def _on_disconnected(self, ev: InterchangeDisconnected, now: float) -> None:
        if self.disconnected_since is None:
            self.disconnected_since = now

    def _on_connected(self, ev: InterchangeConnected, now: float) -> None:
        if self.disconnected_since is not None:
            # The connection came back: to the same interchange or a restarted one (rule 5).
            self.disconnected_since = None
            self._out.append(Note(INFO, "The connection to the interchange is back; registering again"))
            self._register(now)

    _handlers: dict[type, Any] = {
        TasksArrived: _on_tasks,
        WorkerReady: _on_ready,
        WorkerResult: _on_result,
        WorkerExited: _on_exit,
        WorkerMemory: _on_memory,
        CancelTasks: _on_cancel,
        InterchangeContact: _on_contact,
        InterchangeDisconnected: _on_disconnected,
        InterchangeConnected: _on_connected,
        StopRequested: _on_stop,
        ResultsAcked: _on_acked,
        DropTasks: _on_drop,
        RegisterAgainRequested: _on_register_again,
        RegistrationAccepted: _on_registered,
    }

    # helpers

    def _assign(self, now: float) -> None:
        if self.mpi is not None:
            self._assign_mpi(now, self.mpi)
            return
        queue = self.queue
        assert isinstance(queue, LocalQueue)
        while queue.count and self._idle:
            rank = self._idle.popleft()
            task = queue.popleft()
            slot = self.workers[rank]
            self._begin(slot, task, now)
            self._busy += 1
            self._out.append(RunTask(rank, task))
        avg = self.avg_task_time
        limit = self.advance_max_task_time
        if queue.count and avg is not None and avg <= limit and self._busy == len(self.workers):
            # Only to a worker whose task should end soon: one running longer is not short, and what it
            # would be handed now could not give way to a task of higher priority arriving meanwhile.
            for slot in self.workers.values():
                if not queue.count:
                    break
                if (slot.next_task is None and now - slot.started_at < limit and slot.deadline is None
                        and slot.stop is None):
                    slot.next_task = queue.popleft()
                    self._out.append(RunTask(slot.rank, slot.next_task))

    def _assign_mpi(self, now: float, mpi: MpiScheduler) -> None:
        while self._idle:
            picked = mpi.pop_next()
            if picked is None:
                return
            task, nodes = picked
            rank = self._idle.popleft()
            slot = self.workers[rank]
            self._begin(slot, task, now)
            self._busy += 1
            env = None
            if nodes is not None and task.request is not None:
                env = compose_prefixes(self.mpi_launcher, nodes, task.request)
                self._out.append(Note(INFO, f"Task {task.task_id} runs on worker {rank} with nodes {','.join(nodes)}"))
            self._out.append(RunTask(rank, task, env))

    def _begin(self, slot: WorkerSlot, task: PoolTask, now: float) -> None:
        """``slot``'s worker starts ``task`` now (the caller counts it busy): its time limit starts too."""
        slot.state = "busy"
        slot.task_id = task.task_id
        slot.started_at = now
        slot.deadline = None
        if task.walltime is not None:
            slot.deadline = now + task.walltime
            slot.limit = task.walltime
            self._push_timer(slot.deadline, slot.rank)

    def _requeue_next(self, slot: WorkerSlot) -> None:
        """The task handed to ``slot`` in advance will not run there: back to the front of its priority
        (unless it was dropped, rule 12)."""
        if slot.next_task is not None and not slot.next_silent:
            self.queue.appendleft(slot.next_task)
        slot.next_task = None
        slot.next_silent = False

    def _push_timer(self, when: float, rank: int) -> None:
        self._timer_seq += 1
        heapq.heappush(self._task_timers, (when, self._timer_seq, rank))

    def _stop(self, slot: WorkerSlot, now: float, outcome: Outcome | None, report: dict[str, Any]) -> None:
        """Rule 9: stop the worker running ``slot.task_id``, whose outcome will be ``outcome``."""
        assert slot.task_id is not None
        report = {"worker": slot.rank, "host": self.hostname, **report}
        slot.stop = StopOrder(slot.task_id, outcome, report, kill_at=now + self.kill_grace)
        slot.deadline = None
        self._requeue_next(slot)
        self._out.append(Note(WARNING, f"Stopping worker {slot.rank} (task {slot.task_id}): {report['detail']}"))
        if self.kill_grace > 0:
            self._out.append(SignalWorker(slot.rank, signal.SIGTERM))
            self._push_timer(slot.stop.kill_at, slot.rank)
        else:
            slot.stop.killed = True
            self._out.append(SignalWorker(slot.rank, signal.SIGKILL))

    def _fire_task_timers(self, now: float) -> None:
        timers = self._task_timers
        while timers and timers[0][0] <= now:
            _, _, rank = heapq.heappop(timers)
            slot = self.workers[rank]
            stop = slot.stop
            if stop is not None:
                if not stop.killed and now >= stop.kill_at:
                    stop.killed = True
                    self._out.append(Note(WARNING, f"Worker {rank} still alive {self.kill_grace:g} s after SIGTERM; "
                                                   "sending SIGKILL"))
                    self._out.append(SignalWorker(rank, signal.SIGKILL))
            elif slot.state == "busy" and slot.deadline is not None and now >= slot.deadline:
                walltime = slot.limit
                self._stop(slot, now, Outcome.TIMEOUT, {
                    "limit": walltime,
                    "detail": "its worker, with every process the task started, was stopped and replaced"})

    def _timers(self, now: float) -> None:
        # Each test compares ``now`` with the same sum next_deadline() reports, so a call at the
        # reported deadline always fires (no float rounding gap).
        if self._task_timers and now >= self._task_timers[0][0]:
            self._fire_task_timers(now)
        if self._deferred and now >= self._deferred[0][0]:
            # Deadlines are appended in time order, so the due ones are a prefix.
            due = [lost for deadline, lost in self._deferred if now >= deadline]
            self._deferred = self._deferred[len(due):]
            self._results.extend(due)
        if self.disconnected_since is not None and now >= self.disconnected_since + self.reconnect_grace:
            self._exit(
                f"the connection to the interchange has been down for {now - self.disconnected_since:.1f} s "
                f"(reconnect grace {self.reconnect_grace} s); it has most likely exited",
                error=True,
            )
            return
        if now >= self.last_contact + self.reconnect_timeout:
            self._exit(
                f"no message from the interchange for {now - self.last_contact:.1f} s "
                f"(reconnect_timeout={self.reconnect_timeout:g} s)",
                error=True,
            )
            return
        if now >= self.last_heartbeat + self.heartbeat_period:
            self.last_heartbeat = now
            self._out.append(SendHeartbeat())

    def _exit(self, reason: str, error: bool) -> None:
        unfinished = [t.task_id for t in self.queue]
        unfinished += [w.task_id for w in self.workers.values() if w.state == "busy" and w.task_id is not None]
        unfinished += [w.next_task.task_id for w in self.workers.values() if w.next_task is not None]
        # Their workers' SIGTERM was part of this stop: they are lost with the pool, not on their own.
        unfinished += [lost[0] for _, lost in self._deferred]
        self._deferred = []
        self.queue.clear()
        self.exiting = True
        self._out.append(Exit(reason, error, sorted(unfinished)))
