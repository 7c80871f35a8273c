"""The executor's block bookkeeping and control pass, reading no clock and touching nothing itself.

``BlockControl`` owns what the executor knows about its blocks: block id to job id, when each block was
submitted and first seen RUNNING, which blocks ever had a manager register, the states the executor
sets itself (SCALED_IN, FAILED to submit, MISSING after a registration time-out), which ended blocks the
interchange was told about, the strategy's memory, and the cached statuses of the last refresh. It
also owns the order of one control pass (``poll``):

1. at most every ``status_polling_interval`` seconds, refresh: ask the provider for every block's state,
   rewrite a block that ended before any manager registered as MISSING, note when blocks are first
   seen RUNNING and cancel those whose pool never registered within ``block_registration_timeout``,
   apply the block error handler, and tell the interchange about blocks whose job ended (their
   managers are gone, so their tasks fail with ManagerLost now, not a heartbeat threshold later);
2. every ``strategy_period`` seconds, unless the strategy is ``none``: build a ``Snapshot`` and carry
   out what ``htex_ref.core.strategy.decide`` returns (submit blocks; hold and cancel blocks).

Everything it needs from the world comes through a ``BlockPort`` with the current time as ``now``: the
executor's port talks to the provider and the interchange process, simcluster's to a simulated batch
system and an in-process ``InterchangeState``. A pass needs some answers half-way (which blocks
registered, just before timing one out; whether the block error handler put the executor in bad state,
before scaling), so the port is called during the pass rather than given a list of instructions
afterwards; the rules and their order exist only here. Times are whatever clock ``now`` comes from.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from htex_ref.core.scaling import BlockRegistration, blocks_registration_timed_out
from htex_ref.core.strategy import BlockView, Decision, ScaleOut, Snapshot, StrategyMemory, decide
from htex_ref.providers.base import ExecutionProvider, JobState, JobStatus

logger = logging.getLogger(__name__)

#: States the executor sets itself and that a provider's later answer must not hide.
_OWN_FINAL = (JobState.SCALED_IN, JobState.MISSING, JobState.CANCELLED)


@dataclass(frozen=True, slots=True)
class BlockLoad:
    """What the interchange knows about one block's registered managers (see ``InterchangeState.block_loads``)."""

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


class BlockPort(Protocol):
    """The I/O a control pass needs. Methods may raise; ``BlockControl`` logs and carries on as the
    executor always has."""

    @property
    def provider(self) -> ExecutionProvider: ...

    @property
    def workers_per_node(self) -> int: ...

    @property
    def stopping(self) -> bool:
        """True once the executor is shut down or in bad state: nothing more is scaled or reported."""
        ...

    @property
    def bad_state(self) -> bool: ...

    def launch(self, block_id: str) -> str:
        """Submit a block's job through the provider; return its job id."""
        ...

    def registered_blocks(self) -> Iterable[str]:
        """Every block that has had a manager register (the interchange's record)."""
        ...

    def block_loads(self) -> Mapping[str, BlockLoad]:
        """The interchange's view of each block that has registered managers now."""
        ...

    def outstanding(self) -> int:
        """Tasks submitted and not yet resolved."""
        ...

    def hold_block(self, block_id: str) -> None:
        """Stop sending tasks to the block's managers."""
        ...

    def block_ended(self, block_id: str, reason: str) -> None:
        """Tell the interchange the block's managers are gone (``reason`` empty: cancelled by us)."""
        ...

    def handle_block_errors(self, statuses: dict[str, JobStatus]) -> None:
        """Apply the block error handler to every block's status."""
        ...


@dataclass(frozen=True)
class ControlSettings:
    strategy: str
    strategy_period: float
    max_idletime: float
    #: Seconds a RUNNING block may go without any manager registering; None: forever.
    registration_timeout: float | None


class BlockControl:
    """The executor's blocks and its control pass; see the module docstring."""

    def __init__(self, settings: ControlSettings) -> None:
        self.settings = settings
        self.blocks_to_job_id: dict[str, str] = {}
        self.job_ids_to_block: dict[str, str] = {}
        #: States set here, over the provider's: SCALED_IN, or FAILED when submitting failed.
        self.overrides: dict[str, JobStatus] = {}
        #: Blocks known to have had a manager register.
        self.registered: set[str] = set()
        #: When a refresh first saw each block RUNNING.
        self.running_since: dict[str, float] = {}
        #: Blocks cancelled because no pool of them registered in time, as block_statuses() reports them.
        self.registration_failures: dict[str, JobStatus] = {}
        #: Blocks the interchange was told about (ended or cancelled).
        self.ended_reported: set[str] = set()
        self.submitted_at: dict[str, float] = {}
        self.memory = StrategyMemory()
        #: ``(now, statuses)`` of the last refresh.
        self.last_status: tuple[float, dict[str, JobStatus]] | None = None
        self.last_pass = 0.0
        self._ids = itertools.count()

    # ------------------------------------------------------------------------------------ timing

    @staticmethod
    def status_interval(provider: ExecutionProvider) -> float:
        return max(0.2, float(provider.status_polling_interval))

    def wake_interval(self, provider: ExecutionProvider) -> float:
        """How often the control loop wakes: often enough for both the refresh and the strategy."""
        return max(0.1, min(self.status_interval(provider), self.settings.strategy_period))

    def started(self, now: float) -> None:
        """The first pass is done (``strategy_pass(first=True)``); the strategy period counts from ``now``."""
        self.last_pass = now

    # ------------------------------------------------------------------------------------ states

    def status(self, port: BlockPort) -> dict[str, JobStatus]:
        """Every block's state: the provider's, or the one set here."""
        block_ids = list(self.blocks_to_job_id)
        statuses = port.provider.status([self.blocks_to_job_id[b] for b in block_ids]) if block_ids else []
        result = dict(zip(block_ids, statuses, strict=True))
        result.update(self.overrides)
        return result

    def block_statuses(self, port: BlockPort) -> dict[str, JobStatus]:
        """``status()`` where a block that ended without any manager registering is MISSING, with a
        message that points at its output files, and so is a block cancelled by the registration time-out."""
        result = self.status(port)
        if any(s.terminal for s in result.values()):
            try:
                self.registered.update(port.registered_blocks())
            except Exception:
                pass
        for block_id, st in result.items():
            if st.terminal and st.state not in _OWN_FINAL and block_id not in self.registered:
                result[block_id] = JobStatus(
                    JobState.MISSING,
                    f"block {block_id} ended ({st.state.name}"
                    + (f", exit code {st.exit_code}" if st.exit_code is not None else "")
                    + (f": {st.message}" if st.message else "")
                    + ") before any worker pool registered; "
                    + (f"see {st.stdout_path} and {st.stderr_path}" if st.stdout_path
                       else f"see {port.provider.script_dir}"),
                    st.exit_code, st.stdout_path, st.stderr_path,
                )
        # A copy: the control thread may add to it while a user thread is here.
        result.update((b, failure) for b, failure in list(self.registration_failures.items()) if b in result)
        return result

    def with_changes(self, statuses: dict[str, JobStatus]) -> dict[str, JobStatus]:
        """Cached statuses plus blocks launched or scaled in since, without asking the provider."""
        fresh = dict(statuses)
        for block_id in self.blocks_to_job_id:
            fresh.setdefault(block_id, JobStatus(JobState.PENDING, "submitted"))
        fresh.update(self.overrides)
        return fresh

    # ------------------------------------------------------------------------------- the pass

    def poll(self, port: BlockPort, now: float) -> None:
        """One wake of the control loop at ``now``: a refresh if one is due, then a strategy pass if due."""
        if self.last_status is None or now - self.last_status[0] >= self.status_interval(port.provider):
            self.refresh(port, now)
        if (self.settings.strategy != "none" and not port.stopping
                and now - self.last_pass >= self.settings.strategy_period - 1e-3):
            self.last_pass = now
            self.strategy_pass(port, now)

    def refresh(self, port: BlockPort, now: float) -> dict[str, JobStatus]:
        statuses = self.block_statuses(port)
        self.time_out_unregistered_blocks(port, statuses, now)
        self.last_status = (now, statuses)
        if not port.bad_state:
            port.handle_block_errors(statuses)
        self.report_ended_blocks(port, statuses)
        return statuses

    def time_out_unregistered_blocks(self, port: BlockPort, statuses: dict[str, JobStatus], now: float) -> None:
        """Note when blocks are first seen RUNNING. Cancel each block that has been running for
        ``registration_timeout`` seconds without a worker pool of it registering, and report it in
        ``statuses`` (and from now on in ``block_statuses()``) as MISSING, for the block error handler."""
        for block_id, st in statuses.items():
            if st.state == JobState.RUNNING:
                self.running_since.setdefault(block_id, now)
        timeout = self.settings.registration_timeout
        if timeout is None:
            return

        def due() -> list[str]:
            # Only RUNNING blocks not known to have registered can be due: the others are left out here
            # rather than there (every block the executor ever had is in ``statuses``).
            return blocks_registration_timed_out(
                {b: BlockRegistration(st.state.name, self.running_since.get(b), False)
                 for b, st in statuses.items() if st.state == JobState.RUNNING and b not in self.registered},
                timeout, now)

        if not due():
            return
        try:
            # Ask only now: the interchange may know of a registration that we have not seen yet.
            self.registered.update(port.registered_blocks())
        except Exception:
            logger.warning("Could not ask the interchange which blocks registered; the registration time-out "
                           "waits for the next status refresh", exc_info=True)
            return
        timed_out = due()
        if not timed_out:
            return
        for block_id in timed_out:
            st = statuses[block_id]
            where = (f"see {st.stdout_path} and {st.stderr_path}" if st.stdout_path
                     else f"see {port.provider.script_dir}")
            failure = JobStatus(
                JobState.MISSING,
                f"block {block_id} has been running for {now - self.running_since[block_id]:.0f} s but no "
                f"worker pool of it registered (block_registration_timeout={timeout:g} s), so the executor "
                f"cancelled it (a worker_init that does not finish, or a node that cannot reach the "
                f"interchange?); {where}",
                None, st.stdout_path, st.stderr_path,
            )
            logger.error("%s", failure.message)
            self.registration_failures[block_id] = failure
            statuses[block_id] = failure
        try:
            cancelled = self.cancel_blocks(port, timed_out, scaled_in=False)
        except Exception:
            logger.exception("Could not cancel blocks %s; shutdown() tries again", timed_out)
            return
        if len(cancelled) < len(timed_out):
            logger.error("The provider did not cancel blocks %s; shutdown() tries again",
                         sorted(set(timed_out) - set(cancelled)))

    def report_ended_blocks(self, port: BlockPort, statuses: dict[str, JobStatus]) -> None:
        """Tell the interchange once about each block whose job ended: its managers are gone with it,
        so their tasks fail with ManagerLost now rather than after heartbeat_threshold."""
        for block_id, st in statuses.items():
            if not st.terminal or block_id in self.ended_reported or port.bad_state:
                continue
            self.ended_reported.add(block_id)
            reason = f"ended ({st.state.name}" + (
                f", exit code {st.exit_code})" if st.exit_code is not None else ")")
            try:
                port.block_ended(block_id, reason)
            except Exception:
                logger.exception("Could not tell the interchange that block %s ended", block_id)

    def views(self, statuses: Mapping[str, JobStatus], loads: Mapping[str, BlockLoad],
              now: float) -> tuple[BlockView, ...]:
        """The strategy's view of the blocks that are not over (ended blocks play no part in ``decide``)."""
        views = []
        for block_id, st in statuses.items():
            # A block scaled in or cancelled since the last status refresh is no longer live.
            state = "SCALED_IN" if block_id in self.overrides else st.state.name
            if st.terminal or state == "SCALED_IN":
                continue
            load = loads.get(block_id)
            views.append(BlockView(
                block_id=block_id,
                state=state,
                submitted_at=self.submitted_at.get(block_id, now),
                registered=load is not None or block_id in self.registered,
                tasks=load.tasks if load is not None else 0,
                idle_for=load.idle_for if load is not None else None,
                held=load is not None and load.active == 0,
                workers=load.workers if load is not None else None,
            ))
        return tuple(views)

    def snapshot(self, port: BlockPort, now: float, views: tuple[BlockView, ...]) -> Snapshot:
        p = port.provider
        return Snapshot(
            now=now, strategy=self.settings.strategy, outstanding=port.outstanding(),
            workers_per_node=port.workers_per_node, nodes_per_block=p.nodes_per_block,
            parallelism=float(p.parallelism), init_blocks=p.init_blocks, min_blocks=p.min_blocks,
            max_blocks=p.max_blocks, max_idletime=self.settings.max_idletime, blocks=views,
        )

    def strategy_pass(self, port: BlockPort, now: float, first: bool = False) -> list[Decision]:
        """Run the strategy once and carry out its decisions; ``first``: the pass at start, before any
        status refresh."""
        if first:
            statuses: dict[str, JobStatus] = {}
            loads: Mapping[str, BlockLoad] = {}
        else:
            statuses = self.last_status[1] if self.last_status is not None else self.block_statuses(port)
            loads = port.block_loads()
        decisions = decide(self.snapshot(port, now, self.views(statuses, loads, now)), self.memory)
        for decision in decisions:
            if isinstance(decision, ScaleOut):
                logger.info("Strategy %s: scaling out by %d blocks", self.settings.strategy, decision.blocks)
                self.scale_out(port, decision.blocks, now)
            else:
                logger.info("Strategy %s: scaling in blocks %s", self.settings.strategy, list(decision.block_ids))
                for block_id in decision.block_ids:
                    port.hold_block(block_id)
                self.cancel_blocks(port, list(decision.block_ids))
        if decisions and not first and self.last_status is not None:
            # Launches and cancels change what the next pass must see (a cheap, local refresh).
            self.last_status = (self.last_status[0], self.with_changes(self.last_status[1]))
        return decisions

    # --------------------------------------------------------------------------- the actions

    def scale_out(self, port: BlockPort, blocks: int, now: float) -> list[str]:
        """Submit ``blocks`` blocks; a block whose submission fails is FAILED at once. Returns the ids submitted."""
        launched = []
        for _ in range(blocks):
            block_id = str(next(self._ids))
            try:
                job_id = port.launch(block_id)
                if not job_id:
                    raise RuntimeError("the provider returned no job id")
            except Exception as e:
                logger.error("Failed to start block %s: %s", block_id, e)
                self.overrides[block_id] = JobStatus(JobState.FAILED, f"Failed to start block {block_id}: {e}")
                continue
            self.blocks_to_job_id[block_id] = job_id
            self.job_ids_to_block[job_id] = block_id
            self.submitted_at[block_id] = now
            launched.append(block_id)
        return launched

    def cancel_blocks(self, port: BlockPort, block_ids: list[str], scaled_in: bool = True) -> list[str]:
        """Cancel the jobs of blocks through the provider, mark them SCALED_IN (unless ``scaled_in`` is
        False: then ``status()`` shows what the provider says) and tell the interchange; returns the ids
        cancelled."""
        if not block_ids:
            return []
        oks = port.provider.cancel([self.blocks_to_job_id[b] for b in block_ids])
        done = [b for b, ok in zip(block_ids, oks, strict=True) if ok]
        for b in done:
            if scaled_in:
                self.overrides[b] = JobStatus(JobState.SCALED_IN, "scaled in by the executor")
            if not port.stopping:
                try:
                    # Its managers are gone now; the interchange need not wait heartbeat_threshold to know.
                    self.ended_reported.add(b)
                    port.block_ended(b, "")
                except Exception:
                    logger.exception("Could not tell the interchange that block %s was cancelled", b)
        return done
