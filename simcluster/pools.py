"""``SimPool``: one node's worker pool in the simulation, decided by htex_ref's own ``ManagerState``.

The pool's rules (which worker runs which task, the local queue in priority order, tasks handed over in
advance, result batching, a dead worker's task reported as ``WORKER_LOST`` and the worker replaced,
heartbeats, exit on a stop) are ``htex_ref.core.manager.ManagerState``'s, as in ``htex-worker-pool``.
What is modelled here is only what the real pool does with its processes: a worker runs its task for
the task's drawn duration; a task marked to crash kills its worker instead of returning; a replaced
worker is ready at once. The pilot (``simcluster.pilot``) carries out the messages: results to the
interchange, heartbeats in one batch per heartbeat period.

In MPI mode (``ExecutorConfig.enable_mpi_mode``) a block has one pool, on its first node, whose core holds
an ``htex_ref.core.mpi.MpiScheduler`` over the block's nodes: the core decides which nodes each task gets
and when, and the nodes each task was given (its ``PARSL_MPI_NODELIST``) are recorded in ``t_nodes``.
"""

from __future__ import annotations

import functools
import heapq
import math
from array import array
from typing import Any

import simpy

from htex_ref.core.interchange import ManagerGoodbye, ManagerHeartbeat, ManagerRegistered, QueuedTask, ResultsReceived
from htex_ref.core.manager import (
    Exit,
    InterchangeContact,
    ManagerState,
    PoolTask,
    RunTask,
    SendHeartbeat,
    SendResults,
    SignalWorker,
    StartWorker,
    TasksArrived,
    WorkerExited,
    WorkerReady,
    WorkerResult,
    make_pool_task,
)
from htex_ref.core.mpi import MpiScheduler, Node, mpi_policy
from htex_ref.core.notes import Note
from htex_ref.core.planning import drain_delay
from htex_ref.protocol import Outcome, Registration
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__
from simcluster.provider import SimProvider
from simcluster.scenario import ExecutorConfig, Partition
from simcluster.scheduler import Job, Scheduler
from simcluster.states import RUNNING
from simcluster.wakes import Wakes
from simcluster.workload import TaskPlan

_NAN = math.nan
_OK = Outcome.OK
#: The exit code of a worker killed by a task drawn to crash (as a task calling ``os._exit(9)`` would).
CRASH_EXIT_CODE = 9


class SimPool:
    """The pool's core and the sim's view of its workers: the task each one runs and the one handed to it
    in advance (task indices, -1 for none)."""

    __slots__ = ("alive", "block", "contact", "current", "died_at", "heartbeat", "index", "mid", "next", "node",
                 "state", "wake_at", "workers")

    def __init__(self, index: int, mid: bytes, block: str, node: int, workers: int, state: ManagerState) -> None:
        self.index = index
        self.mid = mid
        self.block = block
        self.node = node
        self.workers = workers
        self.state = state
        self.current = [-1] * workers
        self.next = [-1] * workers
        self.alive = True
        self.died_at = _NAN
        #: The interchange answered a heartbeat since the last tick (handed to the core at the next one).
        self.contact = False
        #: When a wake-up for the core's result batching is due (inf: none).
        self.wake_at = math.inf
        self.heartbeat = ManagerHeartbeat(mid)


class PoolsMixin:
    """The pilot's side of the worker pools: registering a block's pools, handing each pool's core its
    events (tasks from the interchange, workers' results and deaths, heartbeat ticks) and carrying out
    what it says, and the workers' task completions. Mixed into ``simcluster.pilot.Pilot``, which owns the
    attributes declared here."""

    env: simpy.Environment
    cfg: ExecutorConfig
    label: str
    plan: TaskPlan
    scheduler: Scheduler
    provider: SimProvider
    workers_per_node: int
    prefetch: int
    shut_down: bool
    t_start: array[float]
    t_end: array[float]
    t_mgr: array[int]
    t_worker: array[int]
    t_nodes: dict[int, str]
    partition: Partition
    state: bytearray
    running: int
    busy_seconds: float
    managers: list[SimPool]
    by_mid: dict[bytes, SimPool]
    live: dict[int, SimPool]
    blocks: dict[str, Any]
    job_block: dict[str, str]
    workers: int
    wakes: Wakes
    _heap: list[float]
    _ends: dict[float, int | list[int]]
    _wake_at: float
    _heartbeats_due: list[Any]

    def to_interchange(self, events: list[Any], now: float) -> None:
        raise NotImplementedError

    def _tasks_arrive(self, mid: bytes, tasks: list[QueuedTask], now: float) -> None:
        m = self.by_mid[mid]
        if not m.alive:
            return  # lost in flight: the interchange fails them when it learns the pool is gone
        if m.state.mpi is None and not self.plan.walltime:
            self._pool([TasksArrived([PoolTask(qt.task_id, (), qt.priority) for qt in tasks])], m, now)
            return
        # MPI mode or time limits: the pool reads each task's request and limit from its specification,
        # as htex-worker-pool does.
        spec = self.plan.mpi_spec
        self._pool([TasksArrived([make_pool_task(qt.task_id, (), qt.priority, spec(qt.task_id - 1))
                                  for qt in tasks])], m, now)

    def _pool(self, events: list[Any], m: SimPool, now: float) -> None:
        """Hand ``events`` to a pool's core and carry out what it says."""
        self._carry_out(m.state.handle(*events, now=now), m, now)

    def _carry_out(self, out: list[Any], m: SimPool, now: float) -> None:
        """Carry out a pool core's instructions. Workers are given their tasks before any message leaves,
        so that whatever the interchange sends back meets a consistent pool."""
        sends: list[Any] | None = None
        while out:
            ready: list[Any] | None = None
            for ins in out:
                kind = type(ins)
                if kind is RunTask:
                    if ins.env is not None:
                        self.t_nodes[ins.task.task_id - 1] = ins.env["PARSL_MPI_NODELIST"]
                    self._hand(m, ins.rank, ins.task.task_id - 1, now)
                elif kind is StartWorker:
                    # A replacement worker is ready at once.
                    ready = [WorkerReady(ins.rank)] if ready is None else [*ready, WorkerReady(ins.rank)]
                elif kind is SignalWorker:
                    exited = self._signalled(m, ins, now)
                    if exited is not None:
                        ready = [exited] if ready is None else [*ready, exited]
                elif kind is not Note:
                    sends = [ins] if sends is None else [*sends, ins]
            out = m.state.handle(*ready, now=now) if ready else []
        if sends is not None:
            for ins in sends:
                kind = type(ins)
                if kind is SendResults:
                    self.to_interchange([ResultsReceived(m.mid, ins.results)], now)
                elif kind is SendHeartbeat:
                    self._heartbeats_due.append(m.heartbeat)
                elif kind is Exit and m.alive:
                    self._pool_exits(m, ins, now)
        state = m.state
        if (state.results_since is not None or state.task_timer_due() is not None) and m.alive:
            due = state.results_due()
            timer = state.task_timer_due()
            if timer is not None and (due is None or timer < due):
                due = timer
            if due is not None and due < m.wake_at:
                m.wake_at = due
                self.wakes.call_later(due - now, functools.partial(self._pool_timer, m))

    def _signalled(self, m: SimPool, ins: SignalWorker, now: float) -> WorkerExited | None:
        """The core stops a worker (its task's time limit, a cancel): the simulated worker dies at the first
        signal, its task's run ends now, and the core hears of the exit. A signal to a worker that is no
        longer there (the kill of an exited worker's process group) does nothing."""
        rank = ins.rank
        ti = m.current[rank]
        if ti < 0 or m.state.workers[rank].stop is None:
            return None
        self.busy_seconds += now - self.t_start[ti]
        self.t_end[ti] = now
        self.running -= 1
        # The task it held in advance went back to the core's queue when the stop began.
        m.current[rank] = m.next[rank] = -1
        return WorkerExited(rank, -ins.signum)

    def _pool_timer(self, m: SimPool, now: float) -> None:
        if now != m.wake_at or not m.alive or self.shut_down:
            return
        m.wake_at = math.inf
        self._pool([], m, now)

    def _hand(self, m: SimPool, rank: int, ti: int, now: float) -> None:
        """The pool gave task ``ti`` to worker ``rank``: it starts now, or after the worker's current task."""
        self.t_mgr[ti] = m.index
        self.t_worker[ti] = rank
        if m.current[rank] < 0:
            m.current[rank] = ti
            self._run(ti, now)
        else:
            m.next[rank] = ti

    def _run(self, ti: int, now: float) -> None:
        """Task ``ti`` (its pool and worker already in t_mgr, t_worker) starts at ``now``."""
        self.t_start[ti] = now
        self.state[ti] = RUNNING
        self.running += 1
        end = now + self.plan.duration[ti]
        ends = self._ends
        other = ends.get(end)
        if other is None:
            ends[end] = ti
            heapq.heappush(self._heap, end)
        elif type(other) is int:
            ends[end] = [other, ti] if other < ti else [ti, other]
        else:
            assert isinstance(other, list)
            heapq.heappush(other, ti)

    def _arm(self, now: float) -> None:
        """Make sure a wake-up is due at the earliest completion (one wake-up for the whole heap)."""
        heap = self._heap
        if heap and heap[0] < self._wake_at:
            self._wake_at = heap[0]
            self.wakes.call_later(self._wake_at - now, self._complete)

    def _complete(self, now: float) -> None:
        """Every task ending now: its worker reports it (or dies, for a task drawn to crash) and starts the
        task it was handed in advance, if any; each pool's core hears of all its workers in one call."""
        if now != self._wake_at:
            return  # superseded by an earlier wake
        self._wake_at = math.inf
        heap, ends, managers = self._heap, self._ends, self.managers
        duration, crash = self.plan.duration, self.plan.crash
        t_end, t_mgr, t_worker = self.t_end, self.t_mgr, self.t_worker
        heappop = heapq.heappop
        events: dict[int, list[Any]] = {}
        busy = self.busy_seconds
        ended = 0
        while heap and heap[0] <= now:
            end = heap[0]
            entry = ends[end]
            if type(entry) is int:
                ti = entry
                heappop(heap)
                del ends[end]
            else:
                assert isinstance(entry, list)
                ti = heappop(entry)
                if not entry:
                    heappop(heap)
                    del ends[end]
            m = managers[t_mgr[ti]]
            if not m.alive:
                continue
            rank = t_worker[ti]
            if m.current[rank] != ti or self.t_start[ti] + duration[ti] != end:
                continue  # a run that was stopped, or one before a retry: it ends no more
            run = duration[ti]
            busy += run
            ended += 1
            batch = events.get(m.index)
            if batch is None:
                batch = events[m.index] = []
            t_end[ti] = end
            if crash[ti]:
                # The worker dies with it; the pool's core reports the task lost, puts back the task handed
                # to that worker in advance and starts another worker.
                batch.append(WorkerExited(rank, CRASH_EXIT_CODE))
                m.current[rank] = m.next[rank] = -1
                continue
            batch.append(WorkerResult(rank, ti + 1, _OK, b"", run))
            nxt = m.next[rank]
            m.current[rank] = nxt
            if nxt >= 0:
                m.next[rank] = -1
                self._run(nxt, end)
                ended -= 1  # it keeps the worker busy: running changes by -1 + 1
        self.busy_seconds = busy
        self.running -= ended
        for mi, batch in events.items():
            self._pool(batch, managers[mi], now)
        self._arm(now)

    def _heartbeats(self) -> Any:
        """Every ``heartbeat_period``: each live pool's core runs its timers (it is handed the interchange's
        answer to its last heartbeat first) and the heartbeats it sends go to the interchange in one batch."""
        env = self.env
        period = self.cfg.heartbeat_period
        contact = InterchangeContact()
        while not self.shut_down:
            yield env.timeout(period)
            if self.shut_down:
                return
            now = env.now
            due = self._heartbeats_due
            for m in list(self.live.values()):
                if m.contact:
                    m.contact = False
                    out = m.state.handle(contact, now=now)
                else:
                    out = m.state.handle(now=now)
                if len(out) == 1 and type(out[0]) is SendHeartbeat:
                    due.append(m.heartbeat)  # what nearly every tick gives, carried out in place
                elif out:
                    self._carry_out(out, m, now)
            if self._heartbeats_due:
                due, self._heartbeats_due = self._heartbeats_due, []
                self.to_interchange(due, now)

    def _register(self, job: Job) -> None:
        if job.ended or self.shut_down:
            return
        block_id = self.job_block[job.job_id]
        rec = self.blocks[block_id]
        now = self.env.now
        cfg = self.cfg
        events = []
        pools = []
        # The pool's own rule (htex_ref.core.planning), on the simulated clock; the job script records
        # its start, as htex_ref's scripts do.
        drain_in = drain_delay(now=now, pool_started=now, drain_period=cfg.drain_period, walltime=cfg.walltime,
                               drain_before_walltime=cfg.drain_before_walltime, job_started=job.start)
        workers = self.workers_per_node
        # MPI mode: one pool, on the block's first node (a SimpleLauncher), knowing every node of the block.
        nodes = job.alloc[:1] if cfg.enable_mpi_mode else job.alloc
        for node in nodes:
            index = len(self.managers)
            uid = f"{self.label}-b{block_id}-n{node}"
            hostname = f"{job.partition}-{node}"
            mpi = None
            if cfg.enable_mpi_mode:
                mpi = MpiScheduler([Node(f"{job.partition}-{n}", self.partition.cores) for n in job.alloc],
                                   share=cfg.mpi_share_nodes, policy=mpi_policy(cfg.mpi_policy))
            m = SimPool(index, uid.encode(), block_id, node, workers,
                        ManagerState(workers, cfg.heartbeat_period, cfg.heartbeat_threshold, now, hostname, mpi=mpi))
            self.managers.append(m)
            self.by_mid[m.mid] = m
            self.live[index] = m
            rec.managers.append(index)
            self.workers += workers
            pools.append(m)
            events.append(ManagerRegistered(m.mid, Registration(
                protocol_version=PROTOCOL_VERSION, htex_ref_version=__version__, python_version=PYTHON_VERSION,
                uid=uid, block_id=block_id, worker_count=workers, prefetch_capacity=self.prefetch,
                hostname=hostname, pid=0, cpu_count=self.provider.cores_per_node or 1,
                total_memory=int((self.provider.mem_per_node or 0) * 2**30), os="Linux", drain_in=drain_in)))
        for m in pools:
            # Its workers started while it registered (as htex-worker-pool starts them), ready at once here.
            self._pool([WorkerReady(rank) for rank in range(workers)], m, now)
        self.to_interchange(events, now)

    def _pool_dies(self, m: SimPool, now: float) -> None:
        """The node's pool is gone (its job ended, or it exited): its tasks stop; the interchange learns it
        from a goodbye, or later."""
        m.alive = False
        m.died_at = now
        self.live.pop(m.index, None)
        self.workers -= m.workers

    def _pool_exits(self, m: SimPool, ins: Exit, now: float) -> None:
        """The pool's core decided to exit (told to stop, or drained): it says goodbye, and the block's job
        ends once all its pools did."""
        self._pool_dies(m, now)
        self.to_interchange([ManagerGoodbye(m.mid, ins.reason)], now)
        rec = self.blocks[m.block]
        if all(not self.managers[i].alive for i in rec.managers):
            self.scheduler.complete(rec.job_id)
