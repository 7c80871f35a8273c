"""The interchange's decisions as a pure state machine: events and ``now`` in, instructions out.

``InterchangeState`` owns the task queue (priority order, FIFO within a priority), the table of
registered managers, dispatch of tasks to managers with free capacity, heartbeat expiry, draining and
holds. It never touches a socket or a clock: the runtime (``htex_ref.interchange``) or a simulator feeds
it events with the current time and carries out the instructions it returns. ``next_deadline()`` says
when it next needs to be called even if nothing arrives.

Rules it keeps:

1. Tasks leave the queue lowest priority value first, and in arrival order within a priority (the
   executor hands out task ids in submit order, so that is also task-id order).
2. A task is in exactly one place: the pending queue, or the task set of one manager.
3. A manager's task set never exceeds its capacity (workers + prefetch), or, with automatic
   prefetch, that plus ``AUTO_PREFETCH_MAX_PER_WORKER`` per worker (see ``_prefetch``).
4. Held, draining or expired managers receive no tasks.
5. Every task handed to a manager ends in exactly one forwarded result: the manager's, or a
   ``MANAGER_LOST`` result made here when the manager expires or says goodbye. Late messages from a
   forgotten manager are ignored, never fatal.
6. Time comes only from ``now`` arguments.
7. Dispatch never scans the manager table: managers that can take work are kept in candidate pools
   (``htex_ref.core.selectors``) updated by events, so a task costs the same with 1 or 1,000 managers.
8. A cancelled task still in the queue is dropped here (the executor has already resolved its future,
   so nothing is sent back); one held by a manager stays counted against that manager until the
   manager reports its outcome, and the manager is told to cancel it. Cancels are rare, so finding a
   task may scan the queue and the managers; nothing on the dispatch path pays for them.
9. Every result a registered manager sends is acknowledged (``AckResults``), accepted or dropped; the
   runtime sends the acknowledgement only once the executor has the bytes, so a manager forgets a
   result only after it is safe, and re-sends the unacknowledged ones when it registers again.
10. A manager that registers again (its connection dropped, or this interchange was restarted) names
    the tasks it holds. Matched against what this interchange knows: a task it still counts on that
    manager continues; one it counts there but the manager does not name never arrived and goes back
    to the front of the queue; one waiting in recovery (below) or in the queue is adopted by the
    manager (so it does not run twice); any other, including one this interchange declared lost with
    that manager (and so already failed or retried), is dropped there (``DropOnManager``): it stops
    and is never reported. A silent-then-returning manager that was declared lost is asked to register
    again (``RegisterAgain``) rather than stopped; one that was told to stop, or whose block ended, is
    stopped or refused.
11. Recovery after a restart: the executor sends the new interchange every outstanding task
    (``RecoverTask``) and then ``RecoveryStart``. Those tasks wait for managers to claim them for the
    recovery window, or until as many managers as the executor last knew have registered; then the
    unclaimed ones join the queue in id order, and ``Recovered`` names them (they may have run before).
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from htex_ref.core.notes import DEBUG, ERROR, INFO, WARNING, Note
from htex_ref.core.selectors import ManagerSelector, RandomManagerSelector
from htex_ref.protocol import Outcome, Registration, ResultTuple
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__, python_minor

_EXCEPTION = Outcome.EXCEPTION
_isfinite = math.isfinite

#: Automatic prefetch lets a manager queue about this many seconds of work per worker.
AUTO_PREFETCH_BUFFER_S = 0.05
#: ... and at most this many extra tasks per worker.
AUTO_PREFETCH_MAX_PER_WORKER = 64


# ----------------------------------------------------------------------------------------------- data


@dataclass(slots=True)
class QueuedTask:
    """A task as the interchange sees it: an id, a priority and frames it never opens."""

    task_id: int
    priority: float
    frames: tuple[Any, ...]


@dataclass(slots=True)
class ManagerRecord:
    manager_id: bytes
    registration: Registration
    registered_at: float
    last_seen: float
    #: Tasks handed to this manager and not yet ended, with their frames (to queue again should a
    #: re-registration show that they never arrived).
    tasks: dict[int, QueuedTask] = field(default_factory=dict)
    #: Moving average of the time calls ran on this manager's workers; None until a result came back.
    avg_task_time: float | None = None
    #: Distinguishes this registration from an earlier one with the same manager id (for timers).
    generation: int = 0
    active: bool = True
    draining: bool = False
    drain_at: float | None = None
    idle_since: float | None = None
    #: The running totals of this manager's block (None without a block id).
    load: BlockTotals | None = None
    # Copies of the (frozen) registration's values, read on every dispatch and result.
    block_id: str | None = field(init=False, default=None)
    capacity: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.block_id = self.registration.block_id
        self.capacity = self.registration.capacity

    @property
    def free(self) -> int:
        return self.capacity - len(self.tasks)

    @property
    def worker_count(self) -> int:
        return self.registration.worker_count

    def snapshot(self, now: float) -> dict[str, Any]:
        reg = self.registration
        return {
            "manager": reg.uid,
            "block_id": reg.block_id,
            "hostname": reg.hostname,
            "worker_count": reg.worker_count,
            "prefetch_capacity": reg.prefetch_capacity,
            "tasks": len(self.tasks),
            "idle_duration": (now - self.idle_since) if self.idle_since is not None else 0.0,
            "active": self.active,
            "draining": self.draining,
            "python_version": reg.python_version,
            "htex_ref_version": reg.htex_ref_version,
            "last_heartbeat_age": now - self.last_seen,
            "avg_task_time": self.avg_task_time,
        }


@dataclass(frozen=True, slots=True)
class BlockLoad:
    """What the interchange knows about one block's registered managers (``InterchangeState.block_loads``),
    as block control reads it."""

    #: Registered managers of the block now.
    managers: int
    #: Those of them not held.
    active: int
    #: Workers they run.
    workers: int
    #: Tasks they hold (running or prefetched).
    tasks: int
    #: Seconds since the last of them became idle, when none holds a task; None while any is busy.
    idle_for: float | None


@dataclass(slots=True)
class BlockTotals:
    """Running totals over one block's registered managers, kept up to date by events so that the
    executor's strategy reads each block in O(1) rather than walking the manager table."""

    managers: int = 0
    active: int = 0
    workers: int = 0
    tasks: int = 0
    #: The latest ``idle_since`` of its managers (times only grow, so the last one set is the latest).
    idle_since: float | None = None
    #: ``idle_since`` may be too late: the manager that set it is gone. Recomputed when it is next read
    #: (``block_loads``), so that a block of n managers ending costs O(n), not O(n^2).
    idle_stale: bool = False
    #: Ids of its registered managers (to hold a block, or recompute ``idle_since``, without a table walk).
    members: set[bytes] = field(default_factory=set)


class PendingQueue:
    """Tasks waiting for a manager: lowest priority value first, in arrival order within a priority.

    One list per distinct priority, with a read position, and a heap of the priorities present. Taking
    n tasks is a slice of one or a few lists, not n heap operations: most runs use one priority (none),
    and this is the interchange's hottest structure.
    """

    __slots__ = ("_count", "_heads", "_levels", "_priorities")

    #: A level's list is compacted when this many taken tasks lie before its read position.
    COMPACT_AT = 4096

    def __init__(self) -> None:
        self._levels: dict[float, list[QueuedTask]] = {}
        self._heads: dict[float, int] = {}
        self._priorities: list[float] = []
        self._count = 0

    def push(self, task: QueuedTask) -> None:
        level = self._levels.get(task.priority)
        if level is None:
            level = self._levels[task.priority] = []
            self._heads[task.priority] = 0
            heapq.heappush(self._priorities, task.priority)
        level.append(task)
        self._count += 1

    def take(self, n: int) -> list[QueuedTask]:
        """Remove and return up to ``n`` tasks in order."""
        out: list[QueuedTask] | None = None
        priorities = self._priorities
        while n > 0 and priorities:
            priority = priorities[0]
            level = self._levels[priority]
            head = self._heads[priority]
            if head >= len(level):
                # An emptied level kept for the next push (below), now in the way of another priority.
                del self._levels[priority], self._heads[priority]
                heapq.heappop(priorities)
                continue
            # A whole level is handed out as it is (it is replaced or dropped below), a part of one as a slice.
            chunk = level if head == 0 and n >= len(level) else level[head : head + n]
            taken = len(chunk)
            if out is None:
                out = chunk
            else:
                out.extend(chunk)
            head += taken
            n -= taken
            if head >= len(level):
                if len(priorities) == 1:
                    # The only priority (the usual case): an empty level stays, so that the next push
                    # needs no new entries; at most one empty level exists, and a take drops it in passing.
                    self._levels[priority] = []
                    self._heads[priority] = 0
                else:
                    del self._levels[priority], self._heads[priority]
                    heapq.heappop(priorities)
            elif head >= self.COMPACT_AT and 2 * head >= len(level):
                del level[:head]
                self._heads[priority] = 0
            else:
                self._heads[priority] = head
        if out is None:
            return []
        self._count -= len(out)
        return out

    def __len__(self) -> int:
        return self._count

    def counts(self) -> dict[float, int]:
        """Tasks waiting at each priority."""
        return {p: len(level) - self._heads[p] for p, level in self._levels.items() if len(level) > self._heads[p]}

    def remove(self, task_ids: set[int] | frozenset[int]) -> list[int]:
        """Drop the queued tasks whose ids are in ``task_ids`` (order of the rest kept); returns their ids."""
        return [t.task_id for t in self.take_ids(task_ids)]

    def take_ids(self, task_ids: set[int] | frozenset[int]) -> list[QueuedTask]:
        """Remove and return the queued tasks whose ids are in ``task_ids`` (order of the rest kept)."""
        gone: list[QueuedTask] = []
        for priority, level in self._levels.items():
            head = self._heads[priority]
            waiting = level[head:]
            if any(t.task_id in task_ids for t in waiting):
                gone.extend(t for t in waiting if t.task_id in task_ids)
                self._levels[priority] = [t for t in waiting if t.task_id not in task_ids]
                self._heads[priority] = 0
        self._count -= len(gone)
        return gone

    def push_front(self, tasks: list[QueuedTask]) -> None:
        """Put ``tasks`` back ahead of the others of their priority (in id order): they were handed out
        first. Rare (a manager that never received them), so a list insert is fine."""
        for task in sorted(tasks, key=lambda t: t.task_id, reverse=True):
            level = self._levels.get(task.priority)
            if level is None:
                self.push(task)
                continue
            head = self._heads[task.priority]
            level.insert(head, task)
            self._count += 1


# --------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class TaskSubmitted:
    task: QueuedTask


@dataclass(frozen=True, slots=True)
class ManagerRegistered:
    manager_id: bytes
    registration: Registration


@dataclass(frozen=True, slots=True)
class ManagerHeartbeat:
    manager_id: bytes


@dataclass(frozen=True, slots=True)
class ResultsReceived:
    manager_id: bytes
    results: list[ResultTuple]
    #: The batch as it arrived (one frame, or a split batch's table and parts); forwarded unchanged when
    #: every result in it is accepted.
    raw: bytes | memoryview | list[Any] | None = None


@dataclass(frozen=True, slots=True)
class ManagerGoodbye:
    manager_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class HoldManager:
    manager_id: bytes


@dataclass(frozen=True, slots=True)
class HoldBlock:
    """Send no more tasks to any manager of the block, registered now (their running tasks finish)."""

    block_id: str


@dataclass(frozen=True, slots=True)
class ShutdownAll:
    reason: str


@dataclass(frozen=True, slots=True)
class BlockCancelled:
    """The executor cancelled this block's job, or saw it end: its managers are gone, whether or not they
    said so. ``reason`` says which; empty means cancelled by the executor."""

    block_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CancelTasks:
    """The executor cancelled these tasks; ``kill_running`` asks managers to stop the running ones."""

    task_ids: tuple[int, ...]
    kill_running: bool = False


@dataclass(frozen=True, slots=True)
class RecoverTask:
    """After a restart: a task the executor still waits for (rule 11); it waits for a manager to claim it."""

    task: QueuedTask


@dataclass(frozen=True, slots=True)
class RecoveryStart:
    """After a restart: every outstanding task has been sent; wait up to ``window`` seconds for managers to
    claim them, or until ``managers`` have registered (None: the whole window)."""

    window: float
    managers: int | None = None


Event = (
    TaskSubmitted
    | CancelTasks
    | RecoverTask
    | RecoveryStart
    | ManagerRegistered
    | ManagerHeartbeat
    | ResultsReceived
    | ManagerGoodbye
    | HoldManager
    | HoldBlock
    | ShutdownAll
    | BlockCancelled
)


# ------------------------------------------------------------------------------------- instructions


@dataclass(frozen=True, slots=True)
class SendTasks:
    manager_id: bytes
    tasks: list[QueuedTask]


@dataclass(frozen=True, slots=True)
class ForwardResults:
    results: list[ResultTuple]
    #: Batches to forward byte for byte, in addition to ``results`` (a list: a split batch's parts).
    raw: list[Any] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AcceptRegistration:
    manager_id: bytes


@dataclass(frozen=True, slots=True)
class RejectRegistration:
    manager_id: bytes
    reason: str
    #: Set when the refusal is a version mismatch, which the executor treats as fatal.
    mismatch: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ReplyHeartbeat:
    manager_id: bytes


@dataclass(frozen=True, slots=True)
class StopManager:
    manager_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class ManagerChanged:
    """For monitoring: a manager registered, drains, was held, or is gone (``lost``, ``goodbye``,
    ``stopped``); rare, so always emitted."""

    uid: str
    block_id: str | None
    host: str
    workers: int
    event: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CancelOnManager:
    manager_id: bytes
    task_ids: tuple[int, ...]
    kill_running: bool


@dataclass(frozen=True, slots=True)
class AckResults:
    """The results of these tasks reached this interchange: the runtime tells the manager once the
    executor has them (rule 9)."""

    manager_id: bytes
    task_ids: list[int]


@dataclass(frozen=True, slots=True)
class DropOnManager:
    """The manager must stop these tasks and never report them (rule 10)."""

    manager_id: bytes
    task_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RegisterAgain:
    """A manager this interchange does not know (declared lost, or registered with an earlier
    interchange) should register again, naming its tasks (rule 10)."""

    manager_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Recovered:
    """Recovery ended (rule 11): ``requeued`` tasks were claimed by no manager and were queued again
    (they may have run before the restart); ``adopted`` were claimed; ``managers`` registered meanwhile."""

    requeued: list[int]
    adopted: int
    managers: int


Instruction = (SendTasks | ForwardResults | AcceptRegistration | RejectRegistration | ReplyHeartbeat | StopManager
               | CancelOnManager | ManagerChanged | AckResults | DropOnManager | RegisterAgain | Recovered | Note)


def lost_payload(manager_id: str, hostname: str, detail: str) -> bytes:
    return json.dumps({"manager": manager_id, "host": hostname, "detail": detail}).encode()


# ------------------------------------------------------------------------------------------- machine


class InterchangeState:
    """All interchange bookkeeping; see the module docstring for the rules it keeps."""

    def __init__(
        self,
        heartbeat_threshold: float,
        selector: ManagerSelector | None = None,
        check_python_version: bool = True,
        python_version: str = PYTHON_VERSION,
        protocol_version: int = PROTOCOL_VERSION,
        auto_prefetch: bool = False,
        auto_prefetch_max_task_time: float = 1.0,
    ) -> None:
        self.heartbeat_threshold = heartbeat_threshold
        self.auto_prefetch = auto_prefetch
        self.auto_prefetch_max_task_time = auto_prefetch_max_task_time
        self.selector: ManagerSelector = selector or RandomManagerSelector()
        self.check_python_version = check_python_version
        self.python_version = python_version
        self.protocol_version = protocol_version
        self.managers: dict[bytes, ManagerRecord] = {}
        self.block_history: list[str] = []
        self._blocks_seen: set[str] = set()
        self._block_totals: dict[str, BlockTotals] = {}
        self.tasks_dispatched = 0
        #: ``now`` of the last pass that dispatched a task (for load measurements); None before.
        self.last_dispatch_at: float | None = None
        self._pending = PendingQueue()
        # Managers that could take work now (registered, active, not draining, free > 0), and, with
        # automatic prefetch, those full ones that may queue more. Both are kept up to date by events
        # (``_refresh_free``), so choosing a manager never scans the table.
        self._free = self.selector.new_pool()
        self._prefetchable = self.selector.new_pool()
        self._in_flight = 0
        # Lazy timer queue: (when, seq, kind, manager id). An entry is checked against the record
        # when it comes due, so contacts never touch the heap.
        self._timers: list[tuple[float, int, str, bytes, int]] = []
        self._generation = itertools.count(1)
        self._seq = itertools.count()
        self._out: list[Instruction] = []
        self._results: list[ResultTuple] = []
        self._raw_results: list[Any] = []
        #: Managers registered during the current ``handle`` call, logged together at its end.
        self._registered_now: list[Registration] = []
        #: Rule 10: tasks declared lost with a manager that went silent (task id -> manager id), managers
        #: told to stop, and blocks that ended; a manager that comes back is matched against them.
        self._lost: dict[int, bytes] = {}
        self._stopped: set[bytes] = set()
        self._ended_blocks: set[str] = set()
        #: Blocks held (scaling in): a pool of one that registers later is held too.
        self._held_blocks: set[str] = set()
        #: Rule 11: tasks waiting to be claimed after a restart, until ``_recover_until``.
        self._recovering: dict[int, QueuedTask] = {}
        self._recover_until: float | None = None
        self._recover_expect: int | None = None
        self._recover_adopted = 0
        self._recover_managers = 0

    # ------------------------------------------------------------------------------- public API

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def in_flight_count(self) -> int:
        return self._in_flight

    def handle(self, *events: Event, now: float) -> list[Instruction]:
        """Apply ``events`` in order, fire due timers, dispatch; return what the runtime must do."""
        handlers = self._handlers
        for ev in events:
            handlers[type(ev)](self, ev, now)
        # The checks the two calls start with, made here: most calls have no timer due or no task waiting.
        timers = self._timers
        if timers and timers[0][0] <= now:
            self._fire_timers(now)
        if self._recover_until is not None and (
                now >= self._recover_until
                or (self._recover_expect is not None and self._recover_managers >= self._recover_expect)):
            self._end_recovery()
        if self._pending._count:
            self._dispatch(now)
        if self._results or self._raw_results:
            self._out.append(ForwardResults(self._results, self._raw_results))
            self._results = []
            self._raw_results = []
        if self._registered_now:
            self._note_registrations()
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        timers = self._timers
        while timers:
            _, _, _, mid, generation = timers[0]
            rec = self.managers.get(mid)
            if rec is not None and rec.generation == generation:
                due = timers[0][0]
                return due if self._recover_until is None else min(due, self._recover_until)
            heapq.heappop(timers)  # left by a manager that is gone
        return self._recover_until

    @property
    def recovering(self) -> bool:
        return self._recover_until is not None

    def managers_snapshot(self, now: float) -> list[dict[str, Any]]:
        return [m.snapshot(now) for m in self.managers.values()]

    def connected_blocks(self) -> list[str]:
        return list(self.block_history)

    def block_loads(self, now: float) -> dict[str, BlockLoad]:
        """For each block with registered managers now: how many, how many not held, their workers and
        tasks, and how long since the last of them became idle (None while any holds a task)."""
        for t in self._block_totals.values():
            if t.idle_stale:
                since = [m.idle_since for m in map(self.managers.__getitem__, t.members) if m.idle_since is not None]
                t.idle_since = max(since) if since else None
                t.idle_stale = False
        return {
            b: BlockLoad(t.managers, t.active, t.workers, t.tasks,
                         now - t.idle_since if t.tasks == 0 and t.idle_since is not None else None)
            for b, t in self._block_totals.items()
        }

    # ---------------------------------------------------------------------------------- events

    def _on_task(self, ev: TaskSubmitted, now: float) -> None:
        self._pending.push(ev.task)

    def _on_recover_task(self, ev: RecoverTask, now: float) -> None:
        self._recovering[ev.task.task_id] = ev.task

    def _on_recovery_start(self, ev: RecoveryStart, now: float) -> None:
        self._recover_until = now + max(0.0, ev.window)
        self._recover_expect = ev.managers
        self._out.append(Note(INFO, f"Recovering {len(self._recovering)} outstanding tasks: waiting up to "
                                    f"{ev.window:g} s for worker pools to claim them"
                                    + (f" ({ev.managers} pools were registered before)" if ev.managers else "")))

    def _end_recovery(self) -> None:
        requeued = sorted(self._recovering)
        for tid in requeued:
            self._pending.push(self._recovering[tid])
        self._recovering = {}
        self._recover_until = None
        self._out.append(Note(INFO, f"Recovery ended: {self._recover_adopted} tasks claimed by "
                                    f"{self._recover_managers} worker pools, {len(requeued)} queued again"))
        self._out.append(Recovered(requeued, self._recover_adopted, self._recover_managers))

    def _on_cancel(self, ev: CancelTasks, now: float) -> None:
        ids = set(ev.task_ids)
        if self._recovering:
            for tid in list(ids):
                if self._recovering.pop(tid, None) is not None:
                    ids.discard(tid)
        if self._pending._count:
            ids.difference_update(self._pending.remove(ids))
        if not ids:
            return
        for rec in self.managers.values():
            held = rec.tasks.keys() & ids if rec.tasks else None
            if held:
                self._out.append(CancelOnManager(rec.manager_id, tuple(sorted(held)), ev.kill_running))
                ids -= held
                if not ids:
                    break

    def _on_register(self, ev: ManagerRegistered, now: float) -> None:
        reg = ev.registration
        mid = ev.manager_id
        if mid in self._stopped:
            self._out.append(RejectRegistration(mid, f"manager {reg.uid} was told to stop"))
            return
        if reg.block_id is not None and reg.block_id in self._ended_blocks:
            self._out.append(RejectRegistration(mid, f"block {reg.block_id} of manager {reg.uid} has ended"))
            return
        old = self.managers.get(mid)
        if old is not None:
            if old.registration.uid != reg.uid or old.worker_count != reg.worker_count:
                self._out.append(RejectRegistration(mid, f"manager id {reg.uid} is already registered"))
                return
            self._register_again(old, reg, now)
            return
        ours = f"protocol={self.protocol_version} python={self.python_version} htex_ref={__version__}"
        theirs = f"protocol={reg.protocol_version} python={reg.python_version} htex_ref={reg.htex_ref_version}"
        mismatch = reg.protocol_version != self.protocol_version or (
            self.check_python_version and python_minor(reg.python_version) != python_minor(self.python_version)
        )
        if mismatch:
            reason = f"version mismatch: manager {reg.uid} on {reg.hostname} has {theirs}; interchange has {ours}"
            self._out.append(Note(ERROR, f"Refusing registration: {reason}"))
            self._out.append(RejectRegistration(mid, reason, mismatch=(theirs, ours)))
            return
        if reg.worker_count <= 0:
            self._out.append(RejectRegistration(mid, "manager has no workers"))
            return
        rec = ManagerRecord(manager_id=mid, registration=reg, registered_at=now, last_seen=now, idle_since=now,
                            generation=next(self._generation))
        self.managers[mid] = rec
        if reg.block_id is not None:
            if reg.block_id not in self._blocks_seen:
                self._blocks_seen.add(reg.block_id)
                self.block_history.append(reg.block_id)
            totals = self._block_totals.get(reg.block_id)
            if totals is None:
                totals = self._block_totals[reg.block_id] = BlockTotals()
            totals.managers += 1
            totals.active += 1
            totals.workers += reg.worker_count
            totals.idle_since = now
            totals.idle_stale = False
            totals.members.add(mid)
            rec.load = totals
        self._push_timer(now + self.heartbeat_threshold, "expire", rec)
        if reg.drain_in is not None:
            rec.drain_at = now + max(0.0, reg.drain_in)
            self._push_timer(rec.drain_at, "drain", rec)
        if self._recover_until is not None:
            self._recover_managers += 1
        if reg.block_id is not None and reg.block_id in self._held_blocks:
            self._hold(rec)
        if reg.held:
            self._match_held(rec, reg.held)
        self._refresh_free(rec)
        self._changed(rec, "registered", f"capacity {reg.capacity}" + (f", holds {len(reg.held)} tasks"
                                                                         if reg.held else ""))
        self._registered_now.append(reg)
        self._out.append(AcceptRegistration(mid))

    def _note_registrations(self) -> None:
        """The log lines for the managers registered in this call: one per block and size rather than
        one per manager (a block of 10,000 nodes starting at once made 10,000 lines, and writing them was
        the largest share of the interchange's cost per registration)."""
        regs, self._registered_now = self._registered_now, []
        if len(regs) == 1:
            reg = regs[0]
            self._out.append(Note(INFO, f"Registered manager {reg.uid} (block {reg.block_id}, host {reg.hostname}, "
                                        f"{reg.worker_count} workers, capacity {reg.capacity}"
                                        + (f", holding {len(reg.held)} tasks" if reg.held else "") + ")"))
            return
        groups: dict[tuple[str | None, int, int], list[str]] = {}
        for reg in regs:
            groups.setdefault((reg.block_id, reg.worker_count, reg.capacity), []).append(
                f"{reg.uid} on {reg.hostname}" + (f" holding {len(reg.held)} tasks" if reg.held else ""))
        for (block_id, workers, capacity), names in groups.items():
            self._out.append(Note(INFO, f"Registered {len(names)} manager{'s' if len(names) > 1 else ''} of block "
                                        f"{block_id} ({workers} workers, capacity {capacity} each): "
                                        + ", ".join(names)))

    def _register_again(self, rec: ManagerRecord, reg: Registration, now: float) -> None:
        """A registered manager registers again (its connection dropped and came back): rule 10."""
        rec.last_seen = now
        held = set(reg.held)
        missing = [t for tid, t in rec.tasks.items() if tid not in held]
        if missing:
            # Handed to it while its connection was down: they never arrived.
            for t in missing:
                del rec.tasks[t.task_id]
            self._in_flight -= len(missing)
            if rec.load is not None:
                rec.load.tasks -= len(missing)
            self._pending.push_front(missing)
            self._out.append(Note(WARNING, f"Manager {reg.uid} never received {len(missing)} tasks sent while its "
                                           "connection was down; queued again"))
        unknown = tuple(tid for tid in reg.held if tid not in rec.tasks)
        if unknown:
            self._match_held(rec, unknown)
        if not rec.tasks:
            rec.idle_since = now
        self._refresh_free(rec)
        self._out.append(Note(INFO, f"Manager {reg.uid} registered again holding {len(reg.held)} tasks"))
        self._out.append(AcceptRegistration(rec.manager_id))

    def _match_held(self, rec: ManagerRecord, held: Iterable[int]) -> None:
        """Tasks a (re-)registering manager names that it is not known to hold: adopt those waiting for
        recovery or in the queue, drop the rest there (rule 10)."""
        mid = rec.manager_id
        adopt: list[QueuedTask] = []
        queued: set[int] = set()
        drop: list[int] = []
        for tid in held:
            lost_with = self._lost.pop(tid, None)
            if lost_with is not None:
                drop.append(tid)
                continue
            task = self._recovering.pop(tid, None)
            if task is not None:
                adopt.append(task)
                self._recover_adopted += 1
            else:
                queued.add(tid)
        if queued and self._pending._count:
            taken = self._pending.take_ids(queued)
            adopt.extend(taken)
            queued.difference_update(t.task_id for t in taken)
        drop.extend(sorted(queued))
        if adopt:
            for t in adopt:
                rec.tasks[t.task_id] = t
            rec.idle_since = None
            self._in_flight += len(adopt)
            if rec.load is not None:
                rec.load.tasks += len(adopt)
                rec.load.idle_since = None
                rec.load.idle_stale = False
        if drop:
            self._out.append(Note(WARNING, f"Manager {rec.registration.uid} holds {len(drop)} tasks that ended "
                                           "elsewhere (declared lost, run by another manager, or already "
                                           "delivered); telling it to drop them"))
            self._out.append(DropOnManager(mid, tuple(drop)))

    def _on_heartbeat(self, ev: ManagerHeartbeat, now: float) -> None:
        rec = self.managers.get(ev.manager_id)
        if rec is None:
            self._unknown(ev.manager_id, "heartbeat")
            return
        rec.last_seen = now
        self._out.append(ReplyHeartbeat(ev.manager_id))

    def _on_results(self, ev: ResultsReceived, now: float) -> None:
        rec = self.managers.get(ev.manager_id)
        if rec is None:
            # Not acknowledged: the manager keeps them and sends them again once it has registered.
            self._unknown(ev.manager_id, f"{len(ev.results)} results")
            return
        rec.last_seen = now
        avg = rec.avg_task_time
        accepted = []
        held = rec.tasks
        self._out.append(AckResults(ev.manager_id, [r[0] for r in ev.results]))
        for result in ev.results:
            if held.pop(result[0], None) is None:
                self._out.append(Note(DEBUG, f"Dropping result for task {result[0]} not held by manager "
                                             f"{rec.registration.uid}"))
                continue
            run_time = result[3]
            # Only calls that ran count: a lost task says nothing about how long tasks take.
            if result[1] <= _EXCEPTION and _isfinite(run_time) and run_time >= 0:
                avg = run_time if avg is None else 0.9 * avg + 0.1 * run_time
            accepted.append(result)
        self._in_flight -= len(accepted)
        rec.avg_task_time = avg
        totals = rec.load
        if totals is not None:
            totals.tasks -= len(accepted)
        if ev.raw is not None and len(accepted) == len(ev.results):
            self._raw_results.append(ev.raw)
        else:
            self._results.extend(accepted)
        if not rec.tasks:
            rec.idle_since = now
            if totals is not None:
                totals.idle_since = now
                totals.idle_stale = False
            if rec.draining:
                self._forget(rec, stop_reason="drained")
                return
        self._refresh_free(rec)

    def _unknown(self, mid: bytes, what: str) -> None:
        if mid in self._stopped:
            self._out.append(Note(DEBUG, f"{what} from stopped manager {mid!r}; telling it to stop again"))
            self._out.append(StopManager(mid, "this manager was told to stop"))
            return
        # Declared lost while silent, or registered with an interchange before a restart: it may hold
        # tasks; registering again matches them (rule 10).
        self._out.append(Note(INFO, f"{what} from unregistered manager {mid!r}; asking it to register again"))
        self._out.append(RegisterAgain(mid, "this manager is not registered here (declared lost, or the "
                                            "interchange was restarted)"))

    def _on_goodbye(self, ev: ManagerGoodbye, now: float) -> None:
        rec = self.managers.get(ev.manager_id)
        if rec is None:
            return
        self._out.append(Note(INFO, f"Manager {rec.registration.uid} said goodbye: {ev.reason}"))
        self._fail_tasks(rec, f"the worker pool exited: {ev.reason}")
        self._forget(rec, why=f"exited: {ev.reason}")

    def _on_hold(self, ev: HoldManager, now: float) -> None:
        rec = self.managers.get(ev.manager_id)
        if rec is None:
            self._out.append(Note(WARNING, f"Cannot hold unknown manager {ev.manager_id!r}"))
            return
        self._hold(rec)

    def _on_hold_block(self, ev: HoldBlock, now: float) -> None:
        self._held_blocks.add(ev.block_id)
        totals = self._block_totals.get(ev.block_id)
        for mid in sorted(totals.members) if totals is not None else ():
            self._hold(self.managers[mid])

    def _hold(self, rec: ManagerRecord) -> None:
        if rec.active:
            self._changed(rec, "held")
        if rec.active and rec.load is not None:
            rec.load.active -= 1
        rec.active = False
        self._refresh_free(rec)

    def _on_shutdown(self, ev: ShutdownAll, now: float) -> None:
        for rec in list(self.managers.values()):
            self._fail_tasks(rec, f"the interchange is shutting down: {ev.reason}")
            self._forget(rec, stop_reason=ev.reason)

    def _on_block_cancelled(self, ev: BlockCancelled, now: float) -> None:
        why = ev.reason or "was cancelled by the executor"
        self._ended_blocks.add(ev.block_id)
        totals = self._block_totals.get(ev.block_id)
        for rec in [self.managers[mid] for mid in sorted(totals.members)] if totals is not None else []:
            self._fail_tasks(rec, f"its block {ev.block_id} {why}")
            self._forget(rec, stop_reason=f"block {ev.block_id} {why}")

    _handlers: dict[type, Any] = {
        TaskSubmitted: _on_task,
        CancelTasks: _on_cancel,
        RecoverTask: _on_recover_task,
        RecoveryStart: _on_recovery_start,
        ManagerRegistered: _on_register,
        ManagerHeartbeat: _on_heartbeat,
        ResultsReceived: _on_results,
        ManagerGoodbye: _on_goodbye,
        HoldManager: _on_hold,
        HoldBlock: _on_hold_block,
        ShutdownAll: _on_shutdown,
        BlockCancelled: _on_block_cancelled,
    }

    # ---------------------------------------------------------------------------------- timers

    def _push_timer(self, when: float, kind: str, rec: ManagerRecord) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), kind, rec.manager_id, rec.generation))

    def _fire_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, mid, generation = heapq.heappop(self._timers)
            rec = self.managers.get(mid)
            if rec is None or rec.generation != generation:
                continue  # left by a manager that is gone (its id may have registered again)
            if kind == "expire":
                due = rec.last_seen + self.heartbeat_threshold
                if due > now:
                    self._push_timer(due, "expire", rec)
                    continue
                self._out.append(Note(WARNING, f"Manager {rec.registration.uid} on {rec.registration.hostname} "
                                               f"missed heartbeats for {now - rec.last_seen:.1f} s; failing its "
                                               f"{len(rec.tasks)} tasks"))
                why = f"no heartbeat for {now - rec.last_seen:.1f} s (heartbeat_threshold={self.heartbeat_threshold} s)"
                self._fail_tasks(rec, why, may_return=True)
                self._forget(rec, why=f"lost: {why}")
            elif kind == "drain" and not rec.draining:
                rec.draining = True
                self._changed(rec, "draining")
                self._refresh_free(rec)
                if not rec.tasks:
                    self._forget(rec, stop_reason="drained")

    # -------------------------------------------------------------------------------- dispatch

    def _refresh_free(self, rec: ManagerRecord) -> None:
        """Put ``rec`` in the candidate pool its state calls for; called whenever that state changes."""
        mid = rec.manager_id
        if rec.active and not rec.draining and mid in self.managers:
            if rec.capacity > len(rec.tasks):
                self._free.add(mid, rec.block_id)
                self._prefetchable.discard(mid)
                return
            self._free.discard(mid)
            if self.auto_prefetch and self._prefetch_room(rec) > 0:
                self._prefetchable.add(mid, rec.block_id)
                return
        else:
            self._free.discard(mid)
        self._prefetchable.discard(mid)

    def _dispatch(self, now: float) -> None:
        pending = self._pending
        if not pending._count:
            return
        batches: dict[bytes, list[QueuedTask]] = {}
        free = self._free
        managers = self.managers
        while pending._count and free:
            rec = managers[free.choose()]
            n = rec.capacity - len(rec.tasks)
            if n > pending._count:
                n = pending._count
            self._hand_over(rec, pending.take(n), batches)
            self._refresh_free(rec)
        if pending._count and self.auto_prefetch:
            self._prefetch(batches)
        # One message per manager per pass, whatever mix of slots and prefetch filled it.
        if batches:
            self.last_dispatch_at = now
            out = self._out
            for mid, batch in batches.items():
                out.append(SendTasks(mid, batch))

    def _hand_over(self, rec: ManagerRecord, batch: list[QueuedTask], batches: dict[bytes, list[QueuedTask]]) -> None:
        """Give ``batch`` (a list of its own, which becomes part of the message) to ``rec``."""
        n = len(batch)
        if n == 1:
            t = batch[0]
            rec.tasks[t.task_id] = t
        else:
            rec.tasks.update([(t.task_id, t) for t in batch])
        rec.idle_since = None
        if rec.load is not None:
            rec.load.tasks += n
        self.tasks_dispatched += n
        self._in_flight += n
        have = batches.get(rec.manager_id)
        if have is None:
            batches[rec.manager_id] = batch
        else:
            have.extend(batch)

    def _prefetch_room(self, rec: ManagerRecord) -> int:
        """How many tasks automatic prefetch would queue on ``rec`` now (0: none).

        A manager whose recent calls were short (where the round trip would leave its workers idle
        between tasks) may queue about ``AUTO_PREFETCH_BUFFER_S`` of work per worker: at least one task
        and at most ``AUTO_PREFETCH_MAX_PER_WORKER`` per worker. Calls longer than
        ``auto_prefetch_max_task_time`` never prefetch, so a long task never waits behind another on a
        node while a worker elsewhere is free, and at the end of a run no worker is left with more than
        about ``AUTO_PREFETCH_BUFFER_S`` of queued work while others idle. It tops up in batches of at
        least half the allowance: fewer, larger messages.
        """
        avg = rec.avg_task_time
        if avg is None or avg > self.auto_prefetch_max_task_time:
            return 0
        # Compared before dividing: a tiny average (a run time of 5e-324 s is a valid header) would make
        # the quotient infinite.
        if avg <= AUTO_PREFETCH_BUFFER_S / AUTO_PREFETCH_MAX_PER_WORKER:
            per_worker = AUTO_PREFETCH_MAX_PER_WORKER
        else:
            per_worker = int(AUTO_PREFETCH_BUFFER_S / avg)
        per_worker = max(1, min(AUTO_PREFETCH_MAX_PER_WORKER, per_worker))
        allowance = rec.worker_count * per_worker
        room = rec.capacity + allowance - len(rec.tasks)
        return room if room > 0 and room >= allowance // 2 else 0

    def _prefetch(self, batches: dict[bytes, list[QueuedTask]]) -> None:
        """Automatic prefetch: reached only when every worker slot of every manager is taken and tasks
        still wait; see ``_prefetch_room``."""
        pending = self._pending
        pool = self._prefetchable
        while pending and pool:
            rec = self.managers[pool.choose()]
            room = self._prefetch_room(rec)
            batch = pending.take(room)
            self._hand_over(rec, batch, batches)
            self._refresh_free(rec)

    # ------------------------------------------------------------------------------- forgetting

    def _changed(self, rec: ManagerRecord, event: str, detail: str = "") -> None:
        reg = rec.registration
        self._out.append(ManagerChanged(reg.uid, reg.block_id, reg.hostname, reg.worker_count, event, detail))

    def pending_by_priority(self) -> dict[float, int]:
        return self._pending.counts()

    def _fail_tasks(self, rec: ManagerRecord, detail: str, may_return: bool = False) -> None:
        if not rec.tasks:
            return
        if may_return:
            # A silent manager may come back with these; it is told to drop them then (rule 10).
            self._lost.update(dict.fromkeys(rec.tasks, rec.manager_id))
        payload = lost_payload(rec.registration.uid, rec.registration.hostname, detail)
        self._results.extend((tid, Outcome.MANAGER_LOST, payload, 0.0) for tid in sorted(rec.tasks))
        self._in_flight -= len(rec.tasks)
        if rec.load is not None:
            rec.load.tasks -= len(rec.tasks)
        rec.tasks.clear()

    def _forget(self, rec: ManagerRecord, stop_reason: str | None = None, why: str = "") -> None:
        if rec.manager_id in self.managers:
            self._changed(rec, "gone", why or stop_reason or "")
        if self.managers.pop(rec.manager_id, None) is not None and rec.load is not None:
            totals = rec.load
            totals.managers -= 1
            totals.active -= rec.active
            totals.workers -= rec.worker_count
            totals.tasks -= len(rec.tasks)
            totals.members.discard(rec.manager_id)
            block_id = rec.block_id
            assert block_id is not None
            if totals.managers == 0:
                del self._block_totals[block_id]
            elif rec.idle_since is not None and totals.idle_since is not None and rec.idle_since >= totals.idle_since:
                # The one that went may have been the last to become idle: recomputed when next read.
                totals.idle_stale = True
        self._free.discard(rec.manager_id)
        self._prefetchable.discard(rec.manager_id)
        if stop_reason is not None:
            self._stopped.add(rec.manager_id)
            self._out.append(StopManager(rec.manager_id, stop_reason))


def replay(state: InterchangeState, timeline: Iterable[tuple[float, Event]]) -> list[Instruction]:
    """Feed ``(now, event)`` pairs one by one; handy for tests that replay a race as a list."""
    out: list[Instruction] = []
    for now, ev in timeline:
        out.extend(state.handle(ev, now=now))
    return out
