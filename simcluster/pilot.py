"""The simulated executor: htex_ref's own interchange, block control and strategy, run on a simpy clock.

What runs here is htex_ref's code, not a model of it:

- ``htex_ref.core.interchange.InterchangeState`` queues, prioritises and dispatches every task (with
  prefetch, automatic or fixed), expires managers that miss heartbeats and fails their tasks with
  ``MANAGER_LOST``, and forgets a block's managers when told the block ended;
- ``htex_ref.core.blocks.BlockControl`` keeps the block bookkeeping and runs the control pass (status
  refresh, registration time-out, block error handler, report of ended blocks, strategy) against a
  ``SimProvider``, through ``SimPort``, the simulator's implementation of ``BlockPort``;
- ``htex_ref.core.strategy.decide`` and ``htex_ref.block_errors`` decide scaling and failure;
- ``htex_ref.core.planning.plan_workers`` decides each node's worker count.

What is modelled, cheaply, is the rest: a manager is a count of free worker slots and a local queue
(tasks handed over beyond its free workers wait there, first in first out, as a pool's prefetched tasks
do); a task runs for its drawn duration; messages take no time. Heartbeats from all live managers go
to the interchange in one batch every ``heartbeat_period``. A block's pools register
``job_start_latency`` seconds after its job starts, and die with the job (walltime, node failure,
cancel); the interchange then learns it the way it would for real: from the executor's report of the
ended block at the next status refresh, or from missed heartbeats, whichever comes first.

Task completions are kept in one heap of ``(end, task, manager, slot)``, and a single simpy timeout
stands for the earliest; everything finishing at the same instant goes to the interchange as one call.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from array import array
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import simpy

from htex_ref.block_errors import resolve_block_error_handler
from htex_ref.core.blocks import BlockControl, BlockLoad, ControlSettings
from htex_ref.core.interchange import (
    BlockCancelled,
    ForwardResults,
    HoldManager,
    InterchangeState,
    ManagerHeartbeat,
    ManagerRegistered,
    QueuedTask,
    ResultsReceived,
    SendTasks,
    StopManager,
    TaskSubmitted,
)
from htex_ref.core.planning import drain_delay, plan_workers
from htex_ref.core.selectors import BlockIdManagerSelector, ManagerSelector, RandomManagerSelector
from htex_ref.protocol import Outcome, Registration, ResultTuple
from htex_ref.providers.base import ExecutionProvider, JobStatus
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__
from simcluster.provider import SimProvider
from simcluster.scenario import ExecutorConfig, Partition
from simcluster.scheduler import Job, Scheduler
from simcluster.wakes import Wakes
from simcluster.workload import TaskPlan

logger = logging.getLogger(__name__)

# Task states (one byte per task).
UNSUBMITTED, QUEUED, RUNNING, DONE, LOST, DEP_FAILED, FAILED, UNFINISHED = range(8)
STATE_NAMES = ("unsubmitted", "queued", "running", "done", "lost", "dep_failed", "failed", "unfinished")
_OK = Outcome.OK
_NAN = math.nan


class SimManager:
    """One node's worker pool: free worker slots and a local queue of handed-over tasks."""

    __slots__ = ("alive", "block", "died_at", "free", "heartbeat", "index", "mid", "node", "queue", "workers")

    def __init__(self, index: int, mid: bytes, block: str, node: int, workers: int) -> None:
        self.index = index
        self.mid = mid
        self.block = block
        self.node = node
        self.workers = workers
        self.free = list(range(workers - 1, -1, -1))
        self.queue: deque[int] = deque()
        self.alive = True
        self.died_at = _NAN
        self.heartbeat = ManagerHeartbeat(mid)


@dataclass
class BlockRecord:
    block_id: str
    job_id: str
    nodes: int
    submit: float
    start: float = _NAN
    end: float = _NAN
    state: str = "PENDING"
    reason: str = ""
    managers: list[int] = field(default_factory=list)


@dataclass
class Sample:
    time: float
    blocks_pending: int
    blocks_running: int
    workers: int
    tasks_queued: int
    tasks_running: int
    tasks_done: int


class SimPort:
    """``BlockPort`` for the simulated executor (see ``htex_ref.core.blocks``)."""

    def __init__(self, pilot: Pilot) -> None:
        self._p = pilot

    @property
    def provider(self) -> ExecutionProvider:
        return self._p.provider

    @property
    def workers_per_node(self) -> int:
        return self._p.workers_per_node

    @property
    def stopping(self) -> bool:
        return self._p.shut_down or self._p.bad_state is not None

    @property
    def bad_state(self) -> bool:
        return self._p.bad_state is not None

    def launch(self, block_id: str) -> str:
        return self._p.launch(block_id)

    def registered_blocks(self) -> list[str]:
        return self._p.ix.connected_blocks()

    def block_loads(self) -> Mapping[str, BlockLoad]:
        return self._p.ix.block_loads(self._p.env.now)

    def outstanding(self) -> int:
        return self._p.outstanding

    def hold_block(self, block_id: str) -> None:
        p = self._p
        rec = p.blocks.get(block_id)
        if rec is None:
            return
        holds = [HoldManager(p.managers[m].mid) for m in rec.managers if p.managers[m].mid in p.ix.managers]
        if holds:
            p.to_interchange(holds, p.env.now)

    def block_ended(self, block_id: str, reason: str) -> None:
        self._p.to_interchange([BlockCancelled(block_id, reason)], self._p.env.now)

    def handle_block_errors(self, statuses: dict[str, JobStatus]) -> None:
        self._p.handler(self._p, statuses)


class Pilot:
    """One executor configuration running one workload on the simulated cluster."""

    def __init__(self, env: simpy.Environment, cfg: ExecutorConfig, partition: Partition, scheduler: Scheduler,
                 plan: TaskPlan, seed: int, t0: float, on_finish: Callable[[], object],
                 sample_every: float = 0.0) -> None:
        self.env = env
        self.sample_every = sample_every
        self.cfg = cfg
        self.label = cfg.label
        self.t0 = t0
        self.plan = plan
        self.scheduler = scheduler
        self._on_finish = on_finish
        selector: ManagerSelector = (BlockIdManagerSelector() if cfg.manager_selector == "block_id"
                                     else RandomManagerSelector(seed))
        self.ix = InterchangeState(cfg.heartbeat_threshold, selector=selector,
                                   auto_prefetch=cfg.prefetch_capacity is None)
        self.provider = SimProvider(
            scheduler, partition.name, nodes_per_block=cfg.nodes_per_block, init_blocks=cfg.init_blocks,
            min_blocks=cfg.min_blocks, max_blocks=cfg.max_blocks, parallelism=cfg.parallelism,
            walltime=cfg.walltime, status_polling_interval=cfg.status_polling_interval, label=cfg.label)
        self.provider.on_start = self._job_started
        self.provider.on_end = self._job_ended
        self.control = BlockControl(ControlSettings(cfg.strategy, cfg.strategy_period, cfg.max_idletime,
                                                    cfg.block_registration_timeout))
        self.port = SimPort(self)
        self.handler = resolve_block_error_handler(cfg.block_error_handler)
        accelerators = [str(i) for i in range(cfg.accelerators)]
        # The executor's estimate and each node's own plan agree here: every node of a partition is alike.
        self.workers_per_node = plan_workers(
            max_workers_per_node=cfg.max_workers_per_node or None, cores_per_worker=cfg.cores_per_worker,
            mem_per_worker=cfg.mem_per_worker or None, cores=partition.cores, mem_gb=partition.memory_gb,
            accelerators=accelerators).count
        self.prefetch = cfg.prefetch_capacity or 0
        self.bad_state: BaseException | None = None
        self.shut_down = False

        n = self.n_tasks = len(plan)
        self.t_submit = array("d", [_NAN]) * n
        self.t_start = array("d", [_NAN]) * n
        self.t_end = array("d", [_NAN]) * n
        self.t_mgr = array("i", [-1]) * n
        self.t_worker = array("i", [-1]) * n
        self.state = bytearray(n)
        self.reasons: dict[int, str] = {}
        self.outstanding = 0
        self.resolved = 0
        self.busy_seconds = 0.0
        self.running = 0
        self.group_left = list(plan.group_size)
        self.group_failed = [False] * len(plan.group_size)

        self.managers: list[SimManager] = []
        self.by_mid: dict[bytes, SimManager] = {}
        self.heartbeats: dict[int, ManagerHeartbeat] = {}
        self.blocks: dict[str, BlockRecord] = {}
        self.job_block: dict[str, str] = {}
        self.blocks_pending = 0
        self.blocks_running = 0
        self.workers = 0
        self.samples: list[Sample] = []
        self.finished_at = _NAN
        #: When the executor shut down (``finished_at``, or later with ``linger``).
        self.stopped_at = _NAN
        #: Every task has ended and the executor stays up for ``cfg.linger`` seconds, scaling as usual.
        self.lingering = False
        #: Blocks still live when the executor shut down (cancelled then, not scaled in by the strategy).
        self.shutdown_blocks: set[str] = set()

        self._next_release = 0
        #: The pilot's own wake-ups (releases, completions, interchange timers): see simcluster.wakes.
        self.wakes = Wakes(env)
        # Running tasks by end time: a heap of distinct end times, and per end time its task, or a heap of
        # its tasks when several end at the same instant; they come out by (end, task), and a task's
        # manager and slot are in t_mgr and t_worker. (Plain floats compare faster than tuples.)
        self._heap: list[float] = []
        self._ends: dict[float, int | list[int]] = {}
        self._wake_at = math.inf
        self._ix_wake_at = math.inf

    # ------------------------------------------------------------------------------------ start

    def start(self) -> None:
        env = self.env
        env.process(self._control_loop())
        env.process(self._heartbeats())
        # After the control loop's first pass, as a user submits after start() returned.
        self.wakes.call_later(0, self._release_due)

    @property
    def now(self) -> float:
        return self.env.now - self.t0

    # --------------------------------------------------------------------------------- interchange

    def to_interchange(self, events: list[Any], now: float) -> None:
        """Hand ``events`` to the interchange at ``now`` and carry out what it says."""
        # Most calls carry one event: passing it as it is skips building a tuple (a third of the call).
        for ins in self.ix.handle(events[0], now=now) if len(events) == 1 else self.ix.handle(*events, now=now):
            kind = type(ins)
            # Exact type tests, cheapest first by frequency (isinstance would do, a little slower).
            if kind is SendTasks:
                assert isinstance(ins, SendTasks)
                self._tasks_arrive(ins.manager_id, ins.tasks, now)
            elif kind is ForwardResults:
                assert isinstance(ins, ForwardResults)
                self._results(ins.results, now)
            elif kind is StopManager:
                assert isinstance(ins, StopManager)
                m = self.by_mid.get(ins.manager_id)
                if m is not None and m.alive:
                    self._manager_exits(m, now)
        # _arm, inlined: this runs once per interchange call.
        heap = self._heap
        if heap and heap[0] < self._wake_at:
            self._wake_at = heap[0]
            self.wakes.call_later(self._wake_at - now, self._complete)
        deadline = self.ix.next_deadline()
        if deadline is not None and deadline < self._ix_wake_at:
            self._ix_wake_at = deadline
            self.wakes.call_later(deadline - now, self._ix_timer)

    def _ix_timer(self, now: float) -> None:
        if now != self._ix_wake_at or self.shut_down:
            return
        self._ix_wake_at = math.inf
        self.to_interchange([], now)

    def _tasks_arrive(self, mid: bytes, tasks: list[QueuedTask], now: float) -> None:
        m = self.by_mid[mid]
        if not m.alive:
            return  # lost in flight: the interchange fails them when it learns the manager is gone
        t_mgr = self.t_mgr
        free = m.free
        mi = m.index
        for qt in tasks:
            ti = qt.task_id - 1
            t_mgr[ti] = mi
            if free:
                self._run(ti, free.pop(), now)
            else:
                m.queue.append(ti)

    def _run(self, ti: int, slot: int, now: float) -> None:
        """Task ``ti`` (its manager already in t_mgr) starts on worker ``slot`` at ``now``."""
        self.t_start[ti] = now
        self.t_worker[ti] = slot
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
        """Make sure a wake-up is due at the earliest completion (one simpy timeout for the whole heap)."""
        heap = self._heap
        if heap and heap[0] < self._wake_at:
            self._wake_at = heap[0]
            self.wakes.call_later(self._wake_at - now, self._complete)

    def _complete(self, now: float) -> None:
        """Every task ending now: free its worker (or start the next local task) and report it."""
        if now != self._wake_at:
            return  # superseded by an earlier wake
        self._wake_at = math.inf
        heap = self._heap
        ends = self._ends
        managers = self.managers
        duration = self.plan.duration
        t_end, t_mgr, t_worker = self.t_end, self.t_mgr, self.t_worker
        heappop = heapq.heappop
        batches: dict[int, list[ResultTuple]] = {}
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
            mi = t_mgr[ti]
            m = managers[mi]
            if not m.alive:
                continue
            slot = t_worker[ti]
            t_end[ti] = end
            run = duration[ti]
            busy += run
            ended += 1
            batch = batches.get(mi)
            if batch is None:
                batches[mi] = [(ti + 1, _OK, b"", run)]
            else:
                batch.append((ti + 1, _OK, b"", run))
            if m.queue:
                # _run leaves busy_seconds alone; running is settled below (it changes by -1 + 1 here).
                self._run(m.queue.popleft(), slot, end)
            else:
                m.free.append(slot)
        self.busy_seconds = busy
        self.running -= ended
        if len(batches) == 1:
            mi, batch = batches.popitem()
            self.to_interchange([ResultsReceived(managers[mi].mid, batch)], now)
        elif batches:
            self.to_interchange([ResultsReceived(managers[mi].mid, b) for mi, b in batches.items()], now)
        else:
            self._arm(now)

    def _results(self, results: list[ResultTuple], now: float) -> None:
        state = self.state
        for tid, outcome, payload, _ in results:
            ti = tid - 1
            if state[ti] not in (QUEUED, RUNNING):
                continue
            if outcome == _OK:
                state[ti] = DONE
                self._resolved(ti, True, now)
            else:
                if state[ti] == RUNNING:
                    # Its worker died with the node: the work done so far was spent for nothing.
                    m = self.managers[self.t_mgr[ti]]
                    died = m.died_at if not math.isnan(m.died_at) else now
                    self.busy_seconds += max(0.0, died - self.t_start[ti])
                    self.running -= 1
                    self.t_end[ti] = died
                else:
                    self.t_end[ti] = now
                state[ti] = LOST
                try:
                    self.reasons[ti] = str(json.loads(bytes(payload))["detail"])
                except (ValueError, KeyError, TypeError):
                    self.reasons[ti] = f"outcome {outcome}"
                self._resolved(ti, False, now)

    def _resolved(self, ti: int, ok: bool, now: float) -> None:
        self.outstanding -= 1
        self.resolved += 1
        g = self.plan.group[ti]
        if g >= 0:
            self._group_member_done(g, ok, now)
        if self.resolved >= self.n_tasks:
            self._finish(now)

    def _group_member_done(self, g: int, ok: bool, now: float) -> None:
        """A task of dependency group ``g`` ended; when the whole group has, the next wave goes, or, if any
        of ``g`` did not succeed, it and every wave after it fail without running (as Parsl fails
        dependents with a DependencyError)."""
        plan = self.plan
        if not ok:
            self.group_failed[g] = True
        self.group_left[g] -= 1
        if self.group_left[g] > 0:
            return
        nxt = plan.next_group[g]
        while nxt >= 0 and self.group_failed[g]:
            for ti in range(plan.group_first[nxt], plan.group_first[nxt] + plan.group_size[nxt]):
                if self.state[ti] == UNSUBMITTED:
                    self.state[ti] = DEP_FAILED
                    self.reasons[ti] = f"a task of the wave before it (group {g}) did not succeed"
                    self.t_end[ti] = now
                    self.resolved += 1
            self.group_failed[nxt] = True
            self.group_left[nxt] = 0
            g, nxt = nxt, plan.next_group[nxt]
        if nxt >= 0:
            self._submit(range(plan.group_first[nxt], plan.group_first[nxt] + plan.group_size[nxt]), now)

    def _submit(self, indices: Any, now: float) -> None:
        if self.bad_state is not None or self.shut_down:
            return
        priority = self.plan.priority
        t_submit = self.t_submit
        state = self.state
        events = []
        for ti in indices:
            t_submit[ti] = now
            state[ti] = QUEUED
            events.append(TaskSubmitted(QueuedTask(ti + 1, priority[ti], ())))
        self.outstanding += len(events)
        self.to_interchange(events, now)

    # ------------------------------------------------------------------------------------ processes

    def _release_due(self, now: float) -> None:
        """Submit the released tasks due now, all in one batch, and set a wake-up for the next ones (a
        callback chain rather than a process: one event per release instant, nothing else)."""
        if self.bad_state is not None or self.shut_down:
            return
        order = self.plan.release_order
        release = self.plan.release
        t0 = self.t0
        i = j = self._next_release
        n = len(order)
        while j < n and t0 + release[order[j]] <= now:
            j += 1
        self._next_release = j
        if j > i:
            self._submit(order[i:j], now)
        if j < n:
            self.wakes.call_later(t0 + release[order[j]] - now, self._release_due)

    def _heartbeats(self) -> Any:
        env = self.env
        period = self.cfg.heartbeat_period
        while not self.shut_down:
            yield env.timeout(period)
            if self.heartbeats and not self.shut_down:
                self.to_interchange(list(self.heartbeats.values()), env.now)

    def _control_loop(self) -> Any:
        env = self.env
        control, port = self.control, self.port
        control.strategy_pass(port, env.now, first=True)
        control.started(env.now)
        interval = control.wake_interval(self.provider)
        every = self.sample_every if self.sample_every > 0 else interval
        next_sample = env.now
        while not self.shut_down:
            yield env.timeout(interval)
            if self.shut_down or self.bad_state is not None:
                return
            try:
                control.poll(port, env.now)
            except Exception:
                logger.exception("Scaling pass failed")
            if env.now >= next_sample:
                self.sample()
                next_sample = env.now + every - 1e-9
            if self.lingering and self.blocks_pending + self.blocks_running == 0:
                self._shut_down(env.now)

    def sample(self) -> None:
        self.samples.append(Sample(self.now, self.blocks_pending, self.blocks_running, self.workers,
                                   self.ix.pending_count, self.running, self.resolved))

    # --------------------------------------------------------------------------------------- blocks

    def launch(self, block_id: str) -> str:
        job_id = self.provider.submit("htex-worker-pool (simulated)", 1, f"htex_ref.{self.label}.block-{block_id}")
        self.blocks[block_id] = BlockRecord(block_id, job_id, self.cfg.nodes_per_block, self.env.now)
        self.job_block[job_id] = block_id
        job = self.scheduler.jobs[job_id]
        if job.state.name == "PENDING":
            self.blocks_pending += 1
        else:
            # Started at once inside submit (before this block was recorded): count it now.
            rec = self.blocks[block_id]
            rec.start = job.start
            rec.state = job.state.name
            self.blocks_running += 1
            self._register_later(job)
        return job_id

    def _job_started(self, job: Job) -> None:
        block_id = self.job_block.get(job.job_id)
        if block_id is None:
            return  # started within submit; launch() does the rest
        rec = self.blocks[block_id]
        rec.start = job.start
        rec.state = "RUNNING"
        self.blocks_pending -= 1
        self.blocks_running += 1
        self._register_later(job)

    def _register_later(self, job: Job) -> None:
        def register(_ev: simpy.Event) -> None:
            self._register(job)

        self.env.timeout(self.cfg.job_start_latency).callbacks.append(register)

    def _register(self, job: Job) -> None:
        if job.ended or self.shut_down:
            return
        block_id = self.job_block[job.job_id]
        rec = self.blocks[block_id]
        events = []
        # The pool's own rule (htex_ref.core.planning), on the simulated clock; the job script records
        # its start, as htex_ref's scripts do.
        drain_in = drain_delay(
            now=self.env.now, pool_started=self.env.now, drain_period=self.cfg.drain_period,
            walltime=self.cfg.walltime, drain_before_walltime=self.cfg.drain_before_walltime,
            job_started=job.start)
        for node in job.alloc:
            index = len(self.managers)
            uid = f"{self.label}-b{block_id}-n{node}"
            m = SimManager(index, uid.encode(), block_id, node, self.workers_per_node)
            self.managers.append(m)
            self.by_mid[m.mid] = m
            rec.managers.append(index)
            self.heartbeats[index] = m.heartbeat
            self.workers += m.workers
            events.append(ManagerRegistered(m.mid, Registration(
                protocol_version=PROTOCOL_VERSION, htex_ref_version=__version__, python_version=PYTHON_VERSION,
                uid=uid, block_id=block_id, worker_count=m.workers, prefetch_capacity=self.prefetch,
                hostname=f"{job.partition}-{node}", pid=0, cpu_count=self.provider.cores_per_node or 1,
                total_memory=int((self.provider.mem_per_node or 0) * 2**30), os="Linux", drain_in=drain_in)))
        self.to_interchange(events, self.env.now)

    def _job_ended(self, job: Job) -> None:
        block_id = self.job_block.get(job.job_id)
        if block_id is None:
            return
        rec = self.blocks[block_id]
        if math.isnan(rec.start):
            self.blocks_pending -= 1
        else:
            self.blocks_running -= 1
        rec.end = job.end
        rec.state = job.state.name
        rec.reason = job.message
        now = self.env.now
        for mi in rec.managers:
            m = self.managers[mi]
            if m.alive:
                self._manager_dies(m, now)

    def _manager_dies(self, m: SimManager, now: float) -> None:
        """The node's pool is gone (its job ended): its tasks stop; the interchange learns it later."""
        m.alive = False
        m.died_at = now
        self.heartbeats.pop(m.index, None)
        self.workers -= m.workers

    def _manager_exits(self, m: SimManager, now: float) -> None:
        """The interchange told a live pool to stop: it exits, and the job ends once all its pools did."""
        self._manager_dies(m, now)
        rec = self.blocks[m.block]
        if all(not self.managers[i].alive for i in rec.managers):
            self.scheduler.complete(rec.job_id)

    # -------------------------------------------------------------------------------------- failure

    def set_bad_state_and_fail_all(self, exception: BaseException) -> None:
        """What the block error handler calls: every task not yet done fails with the handler's reason."""
        if self.bad_state is None:
            self.bad_state = exception
        now = self.env.now
        # One line for the CSV file: the handler's message names every failed block and why.
        reason = "BadStateException: " + " | ".join(line.strip() for line in str(exception).splitlines())[:1000]
        for ti in range(len(self.plan)):
            if self.state[ti] in (UNSUBMITTED, QUEUED, RUNNING):
                self._fail(ti, FAILED, reason, now)
        self.outstanding = 0
        self._finish(now)

    def _fail(self, ti: int, state: int, reason: str, now: float) -> None:
        if self.state[ti] == RUNNING:
            self.running -= 1
            self.busy_seconds += max(0.0, now - self.t_start[ti])
        self.state[ti] = state
        self.reasons[ti] = reason
        self.t_end[ti] = now
        self.resolved += 1

    def _finish(self, now: float, linger: bool = True) -> None:
        """Every task resolved (or the executor failed): shut down as the executor does, cancelling every
        live block, then tell the run; with ``cfg.linger`` (and ``linger``), only after that many seconds
        of the control loop scaling in as usual, or once no block is live."""
        if self.shut_down or self.lingering:
            return
        self.finished_at = now
        self.sample()
        if linger and self.cfg.linger > 0 and self.bad_state is None:
            self.lingering = True
            self.env.timeout(self.cfg.linger).callbacks.append(lambda _ev: self._shut_down(self.env.now))
            return
        self._shut_down(now)

    def _shut_down(self, now: float) -> None:
        if self.shut_down:
            return
        if self.lingering and (not self.samples or self.samples[-1].time != self.now):
            self.sample()
        self.stopped_at = now
        self.shut_down = True
        live = [b for b, s in self.control.status(self.port).items() if not s.terminal]
        self.shutdown_blocks = set(live)
        self.control.cancel_blocks(self.port, live)
        self._on_finish()

    def stop_unfinished(self, now: float) -> None:
        """The run's time limit: whatever has not ended is unfinished."""
        if self.lingering:
            self._shut_down(now)
        if self.shut_down:
            return
        for ti in range(len(self.plan)):
            if self.state[ti] in (UNSUBMITTED, QUEUED, RUNNING):
                self._fail(ti, UNFINISHED, f"the run stopped at its time limit ({now - self.t0:.0f} s; max_time)",
                           now)
        self._finish(now, linger=False)
