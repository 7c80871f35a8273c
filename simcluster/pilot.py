"""The simulated executor: htex_ref's own interchange, worker pools, block control and strategy, run on a
simpy clock.

What runs here is htex_ref's code, not a model of it:

- ``htex_ref.core.interchange.InterchangeState`` queues, prioritises and dispatches every task (with
  prefetch, automatic or fixed), holds and drains managers, expires those that miss heartbeats and fails
  their tasks with ``MANAGER_LOST``, and forgets a block's managers when told the block ended;
- ``htex_ref.core.manager.ManagerState`` runs each node's pool (``simcluster.pools.SimPool``): its local
  queue in priority order, tasks handed over in advance, result batching, workers lost to a crashing task
  (``WORKER_LOST``) and replaced, heartbeats;
- ``htex_ref.core.blocks.BlockControl`` keeps the block bookkeeping and makes every block decision (start,
  status refresh, registration time-out, block error rule, report of ended blocks, strategy, shutdown)
  through ``drive``, the same loop the executor's control thread runs, against a ``SimProvider``;
- ``htex_ref.core.strategy.decide`` and the rules of ``htex_ref.block_errors`` decide scaling and failure;
- ``htex_ref.core.planning`` decides each node's worker count and when a pool drains.

What is modelled, cheaply, is the rest: a worker runs a task for its drawn duration (or dies, for a task
drawn to crash); messages take no time. Heartbeats from all live pools go to the interchange in one batch
every ``heartbeat_period``. A block's pools register ``job_start_latency`` seconds after its job starts,
and die with the job (walltime, node failure, cancel); the interchange then learns it the way it would
for real: from the executor's report of the ended block at the next status refresh, or from missed
heartbeats, whichever comes first.

Task completions are kept in one heap of end times, and a single wake-up stands for the earliest;
everything finishing at the same instant goes to each pool's core as one call.

Recovery (``htex_ref.core.interchange`` rules 9-11, ``htex_ref.core.manager`` rules 5 and 12) runs as it
does for real: every result batch is acknowledged to its pool's core (``ResultsAcked``), drops
(``DropTasks``), requests to register again and acceptances reach the cores, and a core's ``Register``
reaches the interchange as a registration naming the tasks it holds. The scenario's ``[[faults]]`` are
carried out here:

- ``interchange_restart``: the interchange dies at ``at``; every pool sees its connection drop at once
  (``InterchangeDisconnected``), and what anyone sends it is lost (the executor's tasks are not: it
  sends them again). ``down`` seconds later a new ``InterchangeState`` with the same settings starts;
  the executor sends it every outstanding task, in id order, as ``RecoverTask``, then ``RecoveryStart``
  (window ``min(10, heartbeat_threshold)``, the pools the executor's last control pass saw), as
  ``htex_ref.link`` does with ``restart_interchange``; then every live pool reconnects
  (``InterchangeConnected``) and registers again. A pool whose connection stays down longer than its
  ``reconnect_grace`` (10 s) exits by its core's own rule, and its job ends.
- ``partition``: the chosen pools and the interchange hear nothing from each other for ``duration``
  seconds; what either sends meanwhile is held (TCP keeps it) and delivered in the order it was sent
  when the partition heals. Expiry, ``MANAGER_LOST``, a pool's own exit after ``reconnect_timeout``,
  registering again and dropping what was given up happen by the cores' rules. Held messages of a
  connection whose interchange died meanwhile are void: the pool sees the drop when the partition heals.

The simulated executor's side is ``TaskTable``'s: the first result of a task resolves it, later ones are
counted (``late_results``) and dropped; tasks a restarted interchange queued again record an attempt.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import simpy

from htex_ref.block_errors import error_rule, failure_exception, resolve_block_error_handler
from htex_ref.core.blocks import (
    BlockControl,
    BlockEnded,
    Cancel,
    CancelDone,
    ControlSettings,
    FailAll,
    FailOutstanding,
    HoldBlock,
    Launch,
    Launched,
    LaunchFailed,
    Observed,
    Shutdown,
    Start,
    Tick,
    drive,
)
from htex_ref.core.blocks import Event as ControlEvent
from htex_ref.core.interchange import (
    AcceptRegistration,
    AckResults,
    BlockCancelled,
    DropOnManager,
    ForwardResults,
    InterchangeState,
    QueuedTask,
    Recovered,
    RecoverTask,
    RecoveryStart,
    RegisterAgain,
    RejectRegistration,
    ReplyHeartbeat,
    SendTasks,
    StopManager,
    TaskSubmitted,
)
from htex_ref.core.interchange import HoldBlock as HoldBlockEvent
from htex_ref.core.manager import (
    DropTasks,
    InterchangeConnected,
    InterchangeDisconnected,
    RegisterAgainRequested,
    RegistrationAccepted,
    ResultsAcked,
    StopRequested,
)
from htex_ref.core.notes import Note
from htex_ref.core.planning import plan_workers
from htex_ref.core.retry import SYSTEM_FAILURES, Attempt, Decision, RetryPolicy
from htex_ref.core.selectors import BlockIdManagerSelector, ManagerSelector, RandomManagerSelector
from htex_ref.protocol import Outcome, ResultTuple
from simcluster.pools import PoolsMixin, SimPool
from simcluster.provider import SimProvider
from simcluster.scenario import ExecutorConfig, Fault, Partition
from simcluster.scheduler import Job, Scheduler
from simcluster.states import (
    DEP_FAILED,
    DONE,
    FAILED,
    LOST,
    QUEUED,
    RUNNING,
    STATE_NAMES,
    TIMED_OUT,
    UNFINISHED,
    UNSUBMITTED,
)
from simcluster.wakes import Wakes
from simcluster.workload import TaskPlan

logger = logging.getLogger(__name__)

__all__ = ["DEP_FAILED", "DONE", "FAILED", "LOST", "QUEUED", "RUNNING", "STATE_NAMES", "UNFINISHED", "UNSUBMITTED",
           "BlockRecord", "Pilot", "Sample"]

_OK = Outcome.OK
_NAN = math.nan
#: As ``htex_ref.link.RECOVERY_WINDOW``: how long a restarted interchange waits for pools to claim tasks
#: (at most ``heartbeat_threshold``).
RECOVERY_WINDOW = 10.0


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


class Pilot(PoolsMixin):
    """One executor configuration running one workload on the simulated cluster."""

    def __init__(self, env: simpy.Environment, cfg: ExecutorConfig, partition: Partition, scheduler: Scheduler,
                 plan: TaskPlan, seed: int, t0: float, on_finish: Callable[[], object],
                 sample_every: float = 0.0, faults: tuple[Fault, ...] = ()) -> None:
        self.env = env
        self.seed = seed
        self.faults = faults
        self.sample_every = sample_every
        self.cfg = cfg
        self.label = cfg.label
        self.t0 = t0
        self.plan = plan
        self.scheduler = scheduler
        self._on_finish = on_finish
        self.interchange = self._new_interchange(0)
        self.provider = SimProvider(
            scheduler, partition.name, nodes_per_block=cfg.nodes_per_block, init_blocks=cfg.init_blocks,
            min_blocks=cfg.min_blocks, max_blocks=cfg.max_blocks, parallelism=cfg.parallelism,
            walltime=cfg.walltime, status_polling_interval=cfg.status_polling_interval, label=cfg.label,
            model=cfg.provider, seed=seed)
        self.provider.on_start = self._job_started
        self.provider.on_end = self._job_ended
        accelerators = [str(i) for i in range(cfg.accelerators)]
        self.partition = partition
        if cfg.enable_mpi_mode:
            # As MPIExecutor: max_workers_per_block workers in the block's one pool, whatever the node's
            # cores; the scaling arithmetic counts one pool per block (ControlSettings.mpi_mode).
            self.workers_per_node = plan_workers(
                max_workers_per_node=cfg.max_workers_per_block, cores_per_worker=1e-9, mem_per_worker=None,
                cores=partition.cores, mem_gb=partition.memory_gb).count
        else:
            # The executor's estimate and each node's own plan agree here: every node of a partition is alike.
            self.workers_per_node = plan_workers(
                max_workers_per_node=cfg.max_workers_per_node or None, cores_per_worker=cfg.cores_per_worker,
                mem_per_worker=cfg.mem_per_worker or None, cores=partition.cores, mem_gb=partition.memory_gb,
                accelerators=accelerators).count
        self.control = BlockControl(ControlSettings(
            strategy=cfg.strategy, strategy_period=cfg.strategy_period, max_idletime=cfg.max_idletime,
            registration_timeout=cfg.block_registration_timeout,
            status_interval=max(0.2, float(cfg.status_polling_interval)), init_blocks=cfg.init_blocks,
            min_blocks=cfg.min_blocks, max_blocks=cfg.max_blocks, nodes_per_block=cfg.nodes_per_block,
            parallelism=cfg.parallelism, workers_per_node=self.workers_per_node,
            script_dir=self.provider.script_dir, label=cfg.label, mpi_mode=cfg.enable_mpi_mode),
            error_rule(resolve_block_error_handler(cfg.block_error_handler), self, cfg.init_blocks))
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
        #: The executor's retry rule, and the lost runs of each task retried under it.
        self.retry = RetryPolicy(cfg.max_retries_on_system_failure, cfg.crash_limit)
        self.attempts: dict[int, list[Attempt]] = {}
        self.retries = 0
        #: MPI mode: the nodes each started MPI task was given (the ``PARSL_MPI_NODELIST`` its worker got).
        self.t_nodes: dict[int, str] = {}
        self.outstanding = 0
        self.resolved = 0
        self.busy_seconds = 0.0
        self.running = 0
        self.group_left = list(plan.group_size)
        self.group_failed = [False] * len(plan.group_size)

        self.managers: list[SimPool] = []
        self.by_mid: dict[bytes, SimPool] = {}
        #: Live pools by index, for the heartbeat tick.
        self.live: dict[int, SimPool] = {}
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
        #: The pilot's own wake-ups (releases, completions, interchange and pool timers): see simcluster.wakes.
        self.wakes = Wakes(env)
        # Running tasks by end time: a heap of distinct end times, and per end time its task, or a heap of
        # its tasks when several end at the same instant; they come out by (end, task), and a task's
        # pool and worker are in t_mgr and t_worker. (Plain floats compare faster than tuples.)
        self._heap: list[float] = []
        self._ends: dict[float, int | list[int]] = {}
        self._wake_at = math.inf
        self._interchange_wake_at = math.inf
        #: Heartbeats the pools' cores sent since the last tick (they go to the interchange together).
        self._heartbeats_due: list[Any] = []

        # Faults (see the module docstring). ``faulty``: one happened, so runs are checked (simcluster.pools).
        self.faulty = False
        self.ix_up = True
        #: Which interchange this is (0: the first); a partition's held messages belong to one.
        self.ix_generation = 0
        #: Partitioned pools by index: what was sent to or by them since, in order, and the interchange then.
        self.cut: dict[int, list[Callable[[float], None]]] = {}
        self._cut_generation: dict[int, int] = {}
        #: First registrations of pools that started while the interchange was down (sent when it is back).
        self._unregistered: list[Any] = []
        #: What the executor's last look at the interchange counted (RecoveryStart's ``managers``).
        self.known_managers: int | None = None
        self.restarts = 0
        self.partitions = 0
        self.requeued = 0
        self.adopted = 0
        #: Results for tasks already resolved, dropped (the first result won), as ``TaskTable.late_results``.
        self.late_results = 0
        #: Tasks resolved a second time (first-wins broken): must stay 0.
        self.delivered_twice = 0
        self._delivered = bytearray(n)
        #: Runs of a task that were not its record (simcluster.pools): it ran twice, at least in part.
        self.ghost_runs = 0
        #: Tasks the interchange told a pool to drop (rule 10: given up on, or ended elsewhere).
        self.drops = 0
        #: Per restart: when the new interchange started (seconds from the executor's start) and how many
        #: outstanding tasks it was sent to recover.
        self.recoveries: list[tuple[float, int]] = []

    def _new_interchange(self, generation: int) -> InterchangeState:
        cfg = self.cfg
        selector: ManagerSelector = (BlockIdManagerSelector() if cfg.manager_selector == "block_id"
                                     else RandomManagerSelector(self.seed + generation))
        return InterchangeState(cfg.heartbeat_threshold, selector=selector,
                                auto_prefetch=cfg.prefetch_capacity is None)

    # ------------------------------------------------------------------------------------ start

    def start(self) -> None:
        env = self.env
        self._control(Start())
        env.process(self._control_loop())
        env.process(self._heartbeats())
        # After block control's start (init_blocks), as a user submits after start() returned.
        self.wakes.call_later(0, self._release_due)
        for fault in self.faults:
            action = self._interchange_dies if fault.kind == "interchange_restart" else self._partition_begins
            env.timeout(fault.at).callbacks.append(functools.partial(self._fault, action, fault))

    @property
    def now(self) -> float:
        return self.env.now - self.t0

    # --------------------------------------------------------------------------------- interchange

    def to_interchange(self, events: list[Any], now: float) -> None:
        """Hand ``events`` to the interchange at ``now`` and carry out what it says (nothing while it is
        down: what was sent to it is lost)."""
        if not self.ix_up:
            return
        # Most calls carry one event: passing it as it is skips building a tuple (a third of the call).
        out = self.interchange.handle(events[0], now=now) if len(events) == 1 else \
            self.interchange.handle(*events, now=now)
        by_mid = self.by_mid
        for ins in out:
            kind = type(ins)
            # Exact type tests, cheapest first by frequency (isinstance would do, a little slower).
            if kind is SendTasks:
                assert isinstance(ins, SendTasks)
                self._tasks_arrive(ins.manager_id, ins.tasks, now)
            elif kind is AckResults:
                assert isinstance(ins, AckResults)
                m = by_mid.get(ins.manager_id)
                if m is not None:
                    self.send_down(m, [ResultsAcked(tuple(ins.task_ids))], now)
            elif kind is ForwardResults:
                assert isinstance(ins, ForwardResults)
                self._results(ins.results, now)
            elif kind is ReplyHeartbeat:
                assert isinstance(ins, ReplyHeartbeat)
                m = by_mid.get(ins.manager_id)
                if m is not None:
                    if self.cut and m.index in self.cut:
                        self.cut[m.index].append(functools.partial(self._contact, m))
                    else:
                        m.contact = True
            elif kind is AcceptRegistration:
                assert isinstance(ins, AcceptRegistration)
                m = by_mid.get(ins.manager_id)
                if m is not None:
                    self.send_down(m, [RegistrationAccepted()], now)
            elif kind is StopManager:
                assert isinstance(ins, StopManager)
                m = by_mid.get(ins.manager_id)
                if m is not None:
                    self.send_down(m, [StopRequested(f"the interchange asked this pool to stop: {ins.reason}")], now)
            elif kind is DropOnManager:
                assert isinstance(ins, DropOnManager)
                self.drops += len(ins.task_ids)
                m = by_mid.get(ins.manager_id)
                if m is not None:
                    self.send_down(m, [DropTasks(ins.task_ids)], now)
            elif kind is RegisterAgain:
                assert isinstance(ins, RegisterAgain)
                m = by_mid.get(ins.manager_id)
                if m is not None:
                    self.send_down(m, [RegisterAgainRequested(ins.reason)], now)
            elif kind is RejectRegistration:
                assert isinstance(ins, RejectRegistration)
                m = by_mid.get(ins.manager_id)
                if m is not None:
                    # As htex-worker-pool: a refused pool stops.
                    self.send_down(m, [StopRequested(f"the interchange refused this pool's registration: "
                                                     f"{ins.reason}", error=True)], now)
            elif kind is Recovered:
                assert isinstance(ins, Recovered)
                self._recovered(ins, now)
        self._arm(now)
        deadline = self.interchange.next_deadline()
        if deadline is not None and deadline < self._interchange_wake_at:
            self._interchange_wake_at = deadline
            self.wakes.call_later(deadline - now, self._interchange_timer)

    def _interchange_timer(self, now: float) -> None:
        if now != self._interchange_wake_at or self.shut_down or not self.ix_up:
            return
        self._interchange_wake_at = math.inf
        self.to_interchange([], now)

    # --------------------------------------------------------------------------------------- faults

    def send_up(self, m: SimPool, events: list[Any], now: float) -> None:
        """A message from pool ``m`` to the interchange: held while ``m`` is cut off, lost while the
        interchange is down (``to_interchange``)."""
        cut = self.cut
        if cut and m.index in cut:
            cut[m.index].append(functools.partial(self.to_interchange, events))
            return
        self.to_interchange(events, now)

    def send_down(self, m: SimPool, events: list[Any], now: float) -> None:
        """A message from the interchange to pool ``m``'s core: held while ``m`` is cut off; nobody reads it
        once the pool is gone."""
        cut = self.cut
        if cut and m.index in cut:
            cut[m.index].append(functools.partial(self._to_pool, m, events))
            return
        if m.alive:
            self._pool(events, m, now)
            self._arm(now)  # the core may have started tasks

    def _to_pool(self, m: SimPool, events: list[Any], now: float) -> None:
        if m.alive:
            self._pool(events, m, now)
            self._arm(now)

    def _contact(self, m: SimPool, now: float) -> None:
        m.contact = True

    def register_pools(self, pools: list[SimPool], events: list[Any], now: float) -> None:
        if self.ix_up:
            self.to_interchange(events, now)
        else:
            # Its registration waits in its socket until an interchange listens again.
            self._unregistered.extend(events)

    def route_heartbeats(self, due: list[Any]) -> list[Any]:
        """The heartbeats of this round that reach the interchange now (cut-off pools' are held)."""
        if not self.ix_up:
            return []
        keep = []
        cut = self.cut
        for hb in due:
            m = self.by_mid[hb.manager_id]
            if m.index in cut:
                cut[m.index].append(functools.partial(self.to_interchange, [hb]))
            else:
                keep.append(hb)
        return keep

    def entitled(self, m: SimPool, ti: int) -> bool:
        """After a fault: whether a run of ``ti`` starting on ``m`` is the task's record: the task is
        outstanding, and the interchange counts it on ``m`` (or is down: then the pool's word stands)."""
        st = self.state[ti]
        if st != QUEUED and st != RUNNING:
            return False
        if not self.ix_up:
            return True
        rec = self.interchange.managers.get(m.mid)
        return rec is not None and ti + 1 in rec.tasks

    def _fault(self, action: Callable[[Fault, float], None], fault: Fault, _ev: simpy.Event) -> None:
        if self.shut_down or self.lingering:
            return
        self.faulty = True
        action(fault, self.env.now)

    def _interchange_dies(self, fault: Fault, now: float) -> None:
        if not self.ix_up:
            return  # already down: this restart is part of the one under way
        self.restarts += 1
        self.ix_up = False
        self.ix_generation += 1
        self._interchange_wake_at = math.inf
        logger.info("%s: the interchange died at %.1f s; a new one starts in %g s", self.label, self.now, fault.down)
        for m in list(self.live.values()):
            if m.index not in self.cut:
                self._pool([InterchangeDisconnected()], m, now)
        self._arm(now)
        self.env.timeout(fault.down).callbacks.append(lambda _ev: self._interchange_starts(self.env.now))

    def _interchange_starts(self, now: float) -> None:
        """As ``InterchangeLink._restart``: a new interchange, every outstanding task sent to it to be
        recovered, then the pools reconnect and register again."""
        if self.shut_down:
            return
        self.interchange = self._new_interchange(self.ix_generation)
        self.ix_up = True
        state = self.state
        priority = self.plan.priority
        events: list[Any] = [RecoverTask(QueuedTask(ti + 1, priority[ti], ()))
                             for ti in range(self.n_tasks) if state[ti] == QUEUED or state[ti] == RUNNING]
        window = min(RECOVERY_WINDOW, self.cfg.heartbeat_threshold)
        events.append(RecoveryStart(window, self.known_managers))
        self.recoveries.append((self.now, len(events) - 1))
        logger.info("%s: a new interchange started at %.1f s; %d outstanding tasks sent to recover", self.label,
                    self.now, len(events) - 1)
        self.to_interchange(events, now)
        pending, self._unregistered = self._unregistered, []
        for m in list(self.live.values()):
            if m.index not in self.cut and m.alive:
                self._pool([InterchangeConnected()], m, now)
        if pending:
            self.to_interchange(pending, now)
        self._arm(now)

    def _recovered(self, ins: Recovered, now: float) -> None:
        """As ``TaskTable.requeued_after_restart``: each task queued again may have run before: an attempt."""
        self.requeued += len(ins.requeued)
        self.adopted += ins.adopted
        detail = ("the interchange was restarted and no worker pool reported holding this task, so it runs "
                  "again (it may have run before)")
        for tid in ins.requeued:
            ti = tid - 1
            if self.state[ti] == QUEUED or self.state[ti] == RUNNING:
                attempts = self.attempts.setdefault(ti, [])
                attempts.append(Attempt(len(attempts) + 1, Outcome.MANAGER_LOST, "", "interchange", detail))

    def _partition_begins(self, fault: Fault, now: float) -> None:
        pools = [m for m in self.live.values() if m.index not in self.cut]
        if fault.block is not None:
            pools = [m for m in pools if m.block == fault.block]
        else:
            nodes = sorted({m.node for m in pools})[:fault.nodes]
            pools = [m for m in pools if m.node in nodes]
        self.partitions += 1
        logger.info("%s: partition at %.1f s for %g s cuts off %d pools", self.label, self.now, fault.duration,
                    len(pools))
        for m in pools:
            self.cut[m.index] = []
            self._cut_generation[m.index] = self.ix_generation
        indices = [m.index for m in pools]
        self.env.timeout(fault.duration).callbacks.append(lambda _ev: self._partition_heals(indices, self.env.now))

    def _partition_heals(self, indices: list[int], now: float) -> None:
        if self.shut_down:
            return
        for index in indices:
            generation = self._cut_generation.pop(index)
            m = self.managers[index]
            if generation != self.ix_generation:
                # The interchange it was talking to died meanwhile: the connection turns out to be gone.
                del self.cut[index]
                if m.alive:
                    self._pool([InterchangeDisconnected()], m, now)
                    if self.ix_up:
                        self._pool([InterchangeConnected()], m, now)
                continue
            # In the order they were sent; what the delivery makes either side send goes behind what is
            # still held (each direction of a connection is first in, first out).
            held = self.cut[index]
            i = 0
            while i < len(held):
                held[i](now)
                i += 1
            del self.cut[index]
        self._arm(now)

    # ---------------------------------------------------------------------------------------- pools

    def _results(self, results: list[ResultTuple], now: float) -> None:
        state = self.state
        for tid, outcome, payload, _ in results:
            ti = tid - 1
            if state[ti] not in (QUEUED, RUNNING):
                self.late_results += 1  # the first result won (TaskTable.late_results)
                continue
            if outcome == _OK:
                state[ti] = DONE
                self._resolved(ti, True, now)
                continue
            if state[ti] == RUNNING and self.t_end[ti] != self.t_end[ti]:
                # Its worker died with the node: the work done so far was spent for nothing.
                m = self.managers[self.t_mgr[ti]]
                died = m.died_at if not math.isnan(m.died_at) else now
                self.busy_seconds += max(0.0, died - self.t_start[ti])
                self.t_end[ti] = died
                self.running -= 1
                rank = self.t_worker[ti]
                if m.alive and m.current[rank] == ti:
                    # Its pool is alive and still runs it (declared lost while cut off): a ghost from now.
                    self.faulty = True
                    self._ghost(m, rank, ti, self.t_start[ti], now)
            elif state[ti] == QUEUED:
                self.t_end[ti] = now
            # (A task that crashed its worker was counted out at its end, in _complete; one stopped by its
            # time limit, when it was stopped.)
            try:
                detail = str(json.loads(bytes(payload))["detail"])
            except (ValueError, KeyError, TypeError):
                detail = f"outcome {outcome}"
            if outcome in SYSTEM_FAILURES and self.retry.enabled:
                if self._retried(ti, outcome, detail, now):
                    continue
                detail = self.reasons[ti]  # with every attempt
            if outcome is Outcome.TIMEOUT:
                state[ti] = TIMED_OUT
                detail = f"TaskTimeout: walltime {self.plan.walltime[ti]:g} s: {detail}"
            else:
                state[ti] = LOST
            self.reasons[ti] = detail
            self._resolved(ti, False, now)

    def _retried(self, ti: int, outcome: Outcome, detail: str, now: float) -> bool:
        """As the executor's ``TaskTable``: a run lost to the infrastructure is submitted again while the
        retry rule says so (True); otherwise the reason records every attempt (False)."""
        attempts = self.attempts.setdefault(ti, [])
        m = self.managers[self.t_mgr[ti]] if self.t_mgr[ti] >= 0 else None
        pool = m.mid.decode() if m else "?"
        where = f"worker {self.t_worker[ti]}" if outcome is Outcome.WORKER_LOST else f"manager {pool}"
        attempts.append(Attempt(len(attempts) + 1, outcome, f"node {m.node}" if m else "?", where, detail))
        decision = self.retry.decide(attempts)
        if decision is Decision.RETRY and self.bad_state is None and not self.shut_down:
            self.retries += 1
            self.state[ti] = QUEUED
            self.t_start[ti] = self.t_end[ti] = _NAN
            self.to_interchange([TaskSubmitted(QueuedTask(ti + 1, self.plan.priority[ti], ()))], now)
            return True
        prefix = "CrashLimitExceeded: the task is the likely cause" if decision is Decision.CRASH_LIMIT else "lost"
        self.reasons[ti] = f"{prefix} after {len(attempts)} attempts: " + "; ".join(map(str, attempts))
        return False

    def _resolved(self, ti: int, ok: bool, now: float) -> None:
        if self._delivered[ti]:
            self.delivered_twice += 1
        self._delivered[ti] = 1
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

    def _control_loop(self) -> Any:
        env = self.env
        interval = self.control.settings.wake_interval
        every = self.sample_every if self.sample_every > 0 else interval
        next_sample = env.now
        while not self.shut_down:
            yield env.timeout(interval)
            if self.shut_down or self.bad_state is not None:
                return
            try:
                self._control(None)
            except Exception:
                logger.exception("Control pass failed")
            if env.now >= next_sample:
                self.sample()
                next_sample = env.now + every - 1e-9
            if self.lingering and self.blocks_pending + self.blocks_running == 0:
                self._shut_down(env.now)

    def sample(self) -> None:
        self.samples.append(Sample(self.now, self.blocks_pending, self.blocks_running, self.workers,
                                   self.interchange.pending_count, self.running, self.resolved))

    # ------------------------------------------------------------------------------ block control

    def _control(self, event: ControlEvent | None) -> Any:
        """What the executor's control thread does (``htex_ref.control``), against the simulated cluster:
        observe what block control needs, hand it ``event`` (a ``Tick`` when None), carry out its answer."""
        now = self.env.now
        needs = self.control.needs(event, now)
        events: list[ControlEvent] = []
        if needs:
            jobs = None
            if needs.jobs:
                ids = list(self.control.blocks_to_job_id.items())
                jobs = dict(zip([b for b, _ in ids], self.provider.status([j for _, j in ids]), strict=True))
            interchange = self.interchange
            # While the interchange is down the executor's query fails: block control goes without.
            ask = needs.interchange and self.ix_up
            loads = interchange.block_loads(now) if ask else None
            if loads is not None:
                # As the real control thread: a restarted interchange waits for this many pools.
                self.known_managers = sum(load.managers for load in loads.values())
            events.append(Observed(jobs, interchange.block_history if ask else None, loads, self.outstanding,
                                   self.bad_state is not None))
        events.append(Tick() if event is None else event)
        return drive(self.control, events, now, self._execute)

    def _execute(self, ins: Launch | Cancel | HoldBlock | BlockEnded | FailAll | FailOutstanding | Note
                 ) -> Iterable[ControlEvent]:
        now = self.env.now
        if isinstance(ins, Launch):
            try:
                return [Launched(ins.block_id, self.launch(ins.block_id))]
            except Exception as e:
                return [LaunchFailed(ins.block_id, str(e))]
        if isinstance(ins, Cancel):
            return [CancelDone(ins.block_ids, tuple(self.provider.cancel(list(ins.job_ids))), ins.scaled_in)]
        if isinstance(ins, HoldBlock):
            self.to_interchange([HoldBlockEvent(ins.block_id)], now)
        elif isinstance(ins, BlockEnded):
            self.to_interchange([BlockCancelled(ins.block_id, ins.reason)], now)
        elif isinstance(ins, FailAll):
            self.set_bad_state_and_fail_all(failure_exception(ins.failure))
        elif isinstance(ins, FailOutstanding):
            self.fail_outstanding(ins.reason)
        elif logger.isEnabledFor(ins.level):
            logger.log(ins.level, "%s", ins.text)
        return ()

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
                self._pool_dies(m, now)

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

    def fail_outstanding(self, reason: str) -> None:
        """Block control's no-silent-wait rule: the tasks waiting for a block that nothing will start fail
        (the executor goes on; tasks not yet submitted still are)."""
        now = self.env.now
        failed = 0
        for ti in range(len(self.plan)):
            if self.state[ti] in (QUEUED, RUNNING):
                self._fail(ti, FAILED, f"NoBlocks: {reason}", now)
                failed += 1
        self.outstanding -= failed
        if self.resolved >= self.n_tasks:
            self._finish(now)

    def _fail(self, ti: int, state: int, reason: str, now: float) -> None:
        if self._delivered[ti]:
            self.delivered_twice += 1
        self._delivered[ti] = 1
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
        of the control thread scaling in as usual, or once no block is live."""
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
        # The executor's own shutdown: block control cancels every live block.
        self.shutdown_blocks = set(self._control(Shutdown()) or ())
        self._on_finish()

    def never_resolved(self) -> list[int]:
        """Tasks submitted whose future never resolved: still outstanding, or ended ``unfinished`` by the
        run's time limit after they were submitted."""
        return [ti for ti in range(self.n_tasks)
                if self.state[ti] in (QUEUED, RUNNING)
                or (self.state[ti] == UNFINISHED and self.t_submit[ti] == self.t_submit[ti])]

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
