"""``SimPool``: one node's worker pool in the simulation, decided by htex_ref's own ``ManagerState``.

The pool's rules (which worker runs which task, the local queue in priority order, tasks handed over in
advance, result batching, a dead worker's task reported as ``WORKER_LOST`` and the worker replaced,
heartbeats, exit on a stop) are ``htex_ref.core.manager.ManagerState``'s, as in ``htex-worker-pool``.
What is modelled here is only what the real pool does with its processes: a worker runs its task for
the task's drawn duration; a task marked to crash kills its worker instead of returning; a replaced
worker is ready at once. The pilot (``simcluster.pilot``) carries out the messages: results to the
interchange, heartbeats in one batch per heartbeat period, registrations (first, and again naming the
tasks the pool holds), and the interchange's answers back to the core (acknowledgements, drops, requests
to register again), through ``send_up`` and ``send_down``, which hold or lose them under a fault.

Under a fault a task may run on two pools at once (a silent pool's task was given up on and run again
elsewhere, or a restarted interchange queued it again while a pool still ran it). Only one run is the
task's record (its ``t_start``, ``t_mgr``... and the ``running`` count); another is a *ghost*: its
worker stays busy in the pool's core until the run ends or is stopped (a ``DropTasks``), its worker time
counts as busy, and what its pool reports about it goes to the interchange like any result (which
drops it, or forwards it to be counted as a late result). Which run is the record is the interchange's
call: the one on the pool it counts the task on (``Pilot.entitled``). Without faults there are no ghosts
and none of this is checked.

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
    Register,
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
#: ``SimPool.current`` of a worker running a ghost (see the module docstring; the run is in ``ghost``).
GHOST = -2


class SimPool:
    """The pool's core and the sim's view of its workers: the task each one runs and the one handed to it
    in advance (task indices, -1 for none)."""

    __slots__ = ("alive", "block", "contact", "current", "died_at", "ghost", "heartbeat", "index", "job_start",
                 "mid", "next", "node", "started", "state", "wake_at", "workers")

    def __init__(self, index: int, mid: bytes, block: str, node: int, workers: int, state: ManagerState,
                 started: float = _NAN, job_start: float = _NAN) -> None:
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
        #: When the pool and its job started (its registrations compute ``drain_in`` from them).
        self.started = started
        self.job_start = job_start
        #: Ghost runs by worker: (task index, since when its worker time counts here, end, token).
        self.ghost: dict[int, tuple[int, float, float, int]] = {}


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
    #: Set at the first fault: from then on every run is checked against the interchange (``entitled``).
    faulty: bool
    ghost_runs: int

    def to_interchange(self, events: list[Any], now: float) -> None:
        raise NotImplementedError

    def send_up(self, m: SimPool, events: list[Any], now: float) -> None:
        raise NotImplementedError

    def entitled(self, m: SimPool, ti: int) -> bool:
        raise NotImplementedError

    def route_heartbeats(self, due: list[Any]) -> list[Any]:
        raise NotImplementedError

    cut: dict[int, list[Any]]
    ix_up: bool

    def _tasks_arrive(self, mid: bytes, tasks: list[QueuedTask], now: float) -> None:
        m = self.by_mid[mid]
        if self.cut and m.index in self.cut:
            self.cut[m.index].append(functools.partial(self._tasks_delivered, m, tasks))
            return
        self._tasks_delivered(m, tasks, now)

    def _tasks_delivered(self, m: SimPool, tasks: list[QueuedTask], now: float) -> None:
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
                    self.send_up(m, [ResultsReceived(m.mid, ins.results)], now)
                elif kind is SendHeartbeat:
                    self._heartbeats_due.append(m.heartbeat)
                elif kind is Exit and m.alive:
                    self._pool_exits(m, ins, now)
                elif kind is Register and m.alive:
                    self.send_up(m, [ManagerRegistered(m.mid, self.registration(m, ins.held, now))], now)
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
        if ti == GHOST and m.state.workers[rank].stop is not None:
            # A ghost stopped (dropped, usually): its worker time ends here; the task's record is elsewhere.
            _, since, _, _ = m.ghost.pop(rank)
            self.busy_seconds += now - since
            m.current[rank] = m.next[rank] = -1
            return WorkerExited(rank, -ins.signum)
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
        if m.current[rank] != -1:
            m.next[rank] = ti
            if not self.faulty:
                self.t_mgr[ti] = m.index
                self.t_worker[ti] = rank
            # (after a fault, whether it is the task's record is decided when it starts: ``_start_next``)
            return
        if self.faulty and not self._take_record(m, rank, ti, now):
            self._ghost(m, rank, ti, now, now)
            return
        self.t_mgr[ti] = m.index
        self.t_worker[ti] = rank
        m.current[rank] = ti
        self._run(ti, now)

    def _start_next(self, m: SimPool, rank: int, ti: int, now: float) -> bool:
        """Worker ``rank`` starts ``ti``, handed to it in advance; True when the run is the task's record."""
        if self.faulty and not self._take_record(m, rank, ti, now):
            self._ghost(m, rank, ti, now, now)
            return False
        self.t_mgr[ti] = m.index
        self.t_worker[ti] = rank
        m.current[rank] = ti
        self._run(ti, now)
        return True

    def _take_record(self, m: SimPool, rank: int, ti: int, now: float) -> bool:
        """After a fault: whether a run of ``ti`` starting on ``m`` is the task's record (the interchange
        counts the task on ``m``); if so, a run of it elsewhere that was the record becomes a ghost."""
        if not self.entitled(m, ti):
            return False
        mi = self.t_mgr[ti]
        if mi >= 0 and (mi != m.index or self.t_worker[ti] != rank):
            old = self.managers[mi]
            r = self.t_worker[ti]
            if old.current[r] == ti and self.state[ti] == RUNNING and self.t_end[ti] != self.t_end[ti]:
                # Its earlier run is open: it stops being the record (counted out as a lost run would be).
                end = now if old.alive else old.died_at
                self.busy_seconds += max(0.0, end - self.t_start[ti])
                self.running -= 1
                if old.alive:
                    self._ghost(old, r, ti, self.t_start[ti], now)
        # The run starting here is open, whatever the end of an earlier one (its result lost with a dead
        # interchange, say).
        self.t_end[ti] = _NAN
        return True

    def _ghost(self, m: SimPool, rank: int, ti: int, start: float, now: float) -> None:
        """Worker ``rank`` of ``m`` runs ``ti`` (since ``start``) as a ghost: it reports it when it ends."""
        self.ghost_runs += 1
        end = start + self.plan.duration[ti]
        token = self.ghost_runs
        m.current[rank] = GHOST
        m.ghost[rank] = (ti, now, end, token)
        self.wakes.call_later(max(0.0, end - now), functools.partial(self._ghost_ends, m, rank, token))

    def _ghost_ends(self, m: SimPool, rank: int, token: int, now: float) -> None:
        g = m.ghost.get(rank)
        if g is None or g[3] != token or not m.alive or self.shut_down:
            return
        ti, since, _, _ = m.ghost.pop(rank)
        self.busy_seconds += now - since
        if self.plan.crash[ti]:
            m.current[rank] = m.next[rank] = -1
            self._pool([WorkerExited(rank, CRASH_EXIT_CODE)], m, now)
        else:
            nxt = m.next[rank]
            m.current[rank] = -1
            if nxt >= 0:
                m.next[rank] = -1
                self._start_next(m, rank, nxt, now)
            self._pool([WorkerResult(rank, ti + 1, _OK, b"", self.plan.duration[ti])], m, now)
        self._arm(now)

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
            if nxt >= 0:
                m.next[rank] = -1
                # (``_run`` counts the next run in ``running``; this one is counted out with ``ended``.)
                if not self.faulty:
                    m.current[rank] = nxt
                    self._run(nxt, end)
                else:
                    m.current[rank] = -1
                    self._start_next(m, rank, nxt, end)
            else:
                m.current[rank] = -1
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
                if self.cut or not self.ix_up:
                    due = self.route_heartbeats(due)
                if due:
                    self.to_interchange(due, now)
                else:
                    self._arm(now)  # (to_interchange does it otherwise) a core's timers may have started tasks

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
                        ManagerState(workers, cfg.heartbeat_period, cfg.heartbeat_threshold, now, hostname, mpi=mpi,
                                     reconnect_timeout=cfg.reconnect_timeout),
                        started=now, job_start=job.start)
            self.managers.append(m)
            self.by_mid[m.mid] = m
            self.live[index] = m
            rec.managers.append(index)
            self.workers += workers
            pools.append(m)
            events.append(ManagerRegistered(m.mid, self._registration(m, (), drain_in)))
        for m in pools:
            # Its workers started while it registered (as htex-worker-pool starts them), ready at once here.
            self._pool([WorkerReady(rank) for rank in range(workers)], m, now)
        self.register_pools(pools, events, now)

    def register_pools(self, pools: list[SimPool], events: list[Any], now: float) -> None:
        raise NotImplementedError

    def registration(self, m: SimPool, held: tuple[int, ...], now: float) -> Registration:
        """What ``m`` tells the interchange when it registers again, naming ``held`` (as htex-worker-pool's
        ``registration``: ``drain_in`` from the pool's and its job's start, as at its first registration)."""
        cfg = self.cfg
        drain_in = drain_delay(now=now, pool_started=m.started, drain_period=cfg.drain_period, walltime=cfg.walltime,
                               drain_before_walltime=cfg.drain_before_walltime, job_started=m.job_start)
        return self._registration(m, held, drain_in)

    def _registration(self, m: SimPool, held: tuple[int, ...], drain_in: float | None) -> Registration:
        return Registration(
            protocol_version=PROTOCOL_VERSION, htex_ref_version=__version__, python_version=PYTHON_VERSION,
            uid=m.mid.decode(), block_id=m.block, worker_count=m.workers, prefetch_capacity=self.prefetch,
            hostname=m.state.hostname, pid=0, cpu_count=self.provider.cores_per_node or 1,
            total_memory=int((self.provider.mem_per_node or 0) * 2**30), os="Linux", drain_in=drain_in, held=held)

    def _pool_dies(self, m: SimPool, now: float) -> None:
        """The node's pool is gone (its job ended, or it exited): its tasks stop; the interchange learns it
        from a goodbye, or later."""
        m.alive = False
        m.died_at = now
        self.live.pop(m.index, None)
        self.workers -= m.workers
        for _, since, _, _ in m.ghost.values():
            self.busy_seconds += now - since
        m.ghost.clear()

    def _pool_exits(self, m: SimPool, ins: Exit, now: float) -> None:
        """The pool's core decided to exit (told to stop, or drained): it says goodbye, and the block's job
        ends once all its pools did."""
        self._pool_dies(m, now)
        self.send_up(m, [ManagerGoodbye(m.mid, ins.reason)], now)
        rec = self.blocks[m.block]
        if all(not self.managers[i].alive for i in rec.managers):
            self.scheduler.complete(rec.job_id)
