"""Block control as a pure state machine: observations and requests in, instructions out.

``BlockControl`` owns everything the executor knows about its blocks: block id to job id, when each
block was submitted and first seen RUNNING, which blocks ever had a manager register, the states it
sets itself (SCALED_IN, FAILED to submit, MISSING after a registration time-out), which ended blocks
the interchange was told about, the strategy's memory, and the statuses of the last refresh. It reads
no clock and calls no provider: one thread (the executor's control thread, or simcluster's pilot)
feeds it events with ``now`` and carries out the instructions it returns, feeding back what each one
gave (``drive`` is that loop). So every rule below, and its order, is written once and can be tested
as a table.

Events
    ``Start``, ``ScaleOut``, ``ScaleIn``, ``HoldRequest``, ``StatusQuery``, ``Shutdown`` (requests);
    ``Observed`` (the provider's statuses and the interchange's view of the blocks, as ``needs`` asked);
    ``Tick`` (a wake of the control thread: run what is due of the control pass);
    ``Launched`` / ``LaunchFailed`` / ``CancelDone`` (what a ``Launch`` or ``Cancel`` gave).
Instructions
    ``Launch`` and ``Cancel`` (through the provider), ``HoldBlock`` and ``BlockEnded`` (one-way notices to
    the interchange), ``FailAll`` (the executor enters bad state), ``FailOutstanding`` (tasks wait for a
    block nothing will start: they fail, the executor stays usable), ``Answer`` (the value of a
    request), ``Note`` (a line for the log).

One pass, on ``Tick`` (after the ``Observed`` that ``needs(None, now)`` asked for):

1. refresh, at most every ``status_interval`` seconds: the provider's statuses plus the states set here;
   a block that ended before any manager registered becomes MISSING (with a message naming its output
   files); blocks seen RUNNING for the first time are noted, and those RUNNING for
   ``registration_timeout`` without a manager registering are cancelled and become MISSING; the block
   error rule judges the statuses (``FailAll``); each block whose job ended is reported to the
   interchange once (its managers are gone, so their tasks fail with ManagerLost now, not a heartbeat
   threshold later);
2. every ``strategy_period`` seconds, unless the strategy is ``none``: ``htex_ref.core.strategy.decide``
   over a snapshot, carried out as ``Launch`` and ``HoldBlock`` + ``Cancel``.

3. no silent wait: when tasks are outstanding, no block is live or pending, and no strategy will start
   one (strategy ``none``, or ``max_blocks=0``) for ``no_block_grace`` seconds, they fail.

Nothing is reported, judged or scaled once the executor is in bad state or shutting down. After
``Shutdown`` (which cancels every live block) a block whose launch was still under way when the request
came is cancelled as soon as its job id is known, so no job outlives the executor.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from htex_ref.core.block_messages import (
    Answer,
    BlockEnded,
    Cancel,
    CancelDone,
    ControlSettings,
    ErrorRule,
    Event,
    ExternalPass,
    FailAll,
    FailOutstanding,
    HoldBlock,
    HoldRequest,
    Instruction,
    Launch,
    Launched,
    LaunchFailed,
    Needs,
    Observed,
    ScaleIn,
    ScaleOut,
    Shutdown,
    Start,
    StatusQuery,
    Tick,
)
from htex_ref.core.interchange import BlockLoad
from htex_ref.core.jobs import TERMINAL_STATES, JobState, JobStatus
from htex_ref.core.notes import ERROR, INFO, WARNING, Note
from htex_ref.core.scaling import BlockRegistration, blocks_registration_timed_out, choose_blocks_to_scale_in
from htex_ref.core.strategy import BlockView, Snapshot, StrategyMemory, decide
from htex_ref.core.strategy import ScaleOut as ScaleOutDecision

__all__ = [
    "Answer", "BlockControl", "BlockEnded", "Cancel", "CancelDone", "ControlSettings", "ErrorRule", "Event",
    "ExternalPass", "FailAll", "FailOutstanding",
    "HoldBlock", "HoldRequest", "Instruction", "Launch", "LaunchFailed", "Launched", "Needs", "Observed", "ScaleIn",
    "ScaleOut", "Shutdown", "Start", "StatusQuery", "Tick", "drive", "strategy_views",
]

#: The strategy of an executor whose blocks another scheduler starts and stops (Parsl's DataFlowKernel,
#: through ``htex_ref.parsl_adapter``): block control launches nothing by itself, not even init_blocks, but
#: still refreshes, times out, reports and cancels at shutdown.
EXTERNAL = "external"

#: States set here that a provider's later answer must not hide.
_OWN_FINAL = (JobState.SCALED_IN, JobState.MISSING, JobState.CANCELLED)


def missing_before_registering(block_id: str, st: JobStatus, where: str) -> JobStatus:
    """``st`` (a job that ended) as MISSING: it ended before any worker pool of the block registered.
    ``replace`` keeps the provider's class of status (and so its readers of the output files)."""
    return replace(
        st, state=JobState.MISSING,
        message=f"block {block_id} ended ({st.state.name}"
        + (f", exit code {st.exit_code}" if st.exit_code is not None else "")
        + (f": {st.message}" if st.message else "")
        + ") before any worker pool registered; " + where)


def strategy_views(statuses: Mapping[str, JobStatus], overrides: Mapping[str, JobStatus],
                   loads: Mapping[str, BlockLoad], registered: set[str], submitted_at: Mapping[str, float],
                   now: float) -> tuple[BlockView, ...]:
    """The strategy's view of the blocks that are not over (ended blocks play no part in ``decide``);
    a block scaled in or cancelled since the last status refresh (in ``overrides``) is no longer live."""
    views = []
    for block_id, st in statuses.items():
        if st.state in TERMINAL_STATES or block_id in overrides:
            continue
        load = loads.get(block_id)
        views.append(BlockView(
            block_id=block_id,
            state=st.state.name,
            submitted_at=submitted_at.get(block_id, now),
            registered=load is not None or block_id in registered,
            tasks=load.tasks if load is not None else 0,
            idle_for=load.idle_for if load is not None else None,
            held=load is not None and load.active == 0,
            workers=load.workers if load is not None else None,
        ))
    return tuple(views)

# ------------------------------------------------------------------------------------------ machine


@dataclass
class _Pending:
    """A request waiting for the feedback of its launches or cancels."""

    kind: str  # "launch" | "cancel"
    waiting: set[str]
    done: list[str] = field(default_factory=list)


class BlockControl:
    """See the module docstring. Only ``handle`` changes it; the properties are read-only views."""

    def __init__(self, settings: ControlSettings, rule: ErrorRule | None = None) -> None:
        self.settings = settings
        self.rule = rule
        self.blocks_to_job_id: dict[str, str] = {}
        self.job_ids_to_block: dict[str, str] = {}
        #: States set here, over the provider's: SCALED_IN, or FAILED when submitting failed.
        self.overrides: dict[str, JobStatus] = {}
        #: The provider's last answer for each block with a job.
        self.jobs: dict[str, JobStatus] = {}
        #: Blocks known to have had a manager register (and how much of the interchange's list that is).
        self.registered: set[str] = set()
        self._history_seen = 0
        #: When a refresh first saw each block RUNNING.
        self.running_since: dict[str, float] = {}
        #: Blocks cancelled because no pool of them registered in time, as the error rule sees them.
        self.registration_failures: dict[str, JobStatus] = {}
        #: Blocks the interchange was told about (ended or cancelled).
        self.ended_reported: set[str] = set()
        self.submitted_at: dict[str, float] = {}
        self.memory = StrategyMemory()
        #: ``(now, statuses)`` of the last refresh (statuses as the error rule saw them).
        self.last_status: tuple[float, dict[str, JobStatus]] | None = None
        #: The interchange's last per-block loads, and whether they are from the current wake.
        self.loads: Mapping[str, BlockLoad] = {}
        # Whether this wake's ``Observed`` brought job statuses and loads (a pass uses only fresh ones).
        self._jobs_fresh = False
        self._loads_fresh = False
        self.outstanding = 0
        self.last_pass = 0.0
        self.launching: set[str] = set()
        #: Shutdown was requested: launch nothing more, cancel what still gets launched.
        self.stopping = False
        #: The executor is in bad state: judge, report and scale nothing more.
        self.failed = False
        self._pending: _Pending | None = None
        #: Since when tasks have waited with no block live or pending and none coming (None: they have not).
        self._no_block_since: float | None = None
        self._external_passes = 0
        self._ids = itertools.count()
        self._out: list[Instruction] = []

    # ------------------------------------------------------------------------------ public API

    def needs(self, event: Event | None, now: float) -> Needs:
        """What to observe (and hand over as ``Observed``) before ``event``, or before a ``Tick`` at ``now``
        when ``event`` is None. The provider is never asked without the interchange: whether a block that
        ended had registered decides whether it failed."""
        if event is None:
            if self.stopping or self.failed:
                return Needs()
            refresh = self.last_status is None or now - self.last_status[0] >= self.settings.status_interval
            return Needs(jobs=refresh, interchange=refresh or self._strategy_due(now))
        if isinstance(event, ScaleIn):
            return Needs(jobs=True, interchange=not self.failed)
        if isinstance(event, StatusQuery):
            if not event.fresh:
                return Needs()
            return Needs(jobs=True, interchange=event.with_missing and not self.failed)
        if isinstance(event, Shutdown):
            return Needs(jobs=True)
        return Needs()

    def handle(self, *events: Event, now: float) -> list[Instruction]:
        for ev in events:
            self._handlers[type(ev)](self, ev, now)
        out, self._out = self._out, []
        return out

    @property
    def strategy_active(self) -> bool:
        return self.settings.strategy not in ("none", EXTERNAL)

    def live_blocks(self) -> list[str]:
        """Blocks not known to have ended, by the last observation and the states set here."""
        return [b for b, st in self.status().items() if not st.terminal]

    # ------------------------------------------------------------------------------- statuses

    def status(self) -> dict[str, JobStatus]:
        """Every block's state: the provider's last answer, or the one set here."""
        jobs = self.jobs
        result = {b: jobs.get(b, JobStatus(JobState.PENDING, "submitted")) for b in self.blocks_to_job_id}
        result.update(self.overrides)
        return result

    def block_statuses(self) -> dict[str, JobStatus]:
        """``status`` where a block that ended without any manager registering is MISSING, with a message
        that points at its output files, and so is a block cancelled by the registration time-out."""
        result = self.status()
        for block_id, st in result.items():
            if st.terminal and st.state not in _OWN_FINAL and block_id not in self.registered:
                result[block_id] = missing_before_registering(block_id, st, self._where(st))
        result.update((b, failure) for b, failure in self.registration_failures.items() if b in result)
        return result

    def _where(self, st: JobStatus) -> str:
        if st.stdout_path:
            return f"see {st.stdout_path} and {st.stderr_path}"
        return f"see {self.settings.script_dir}"

    def with_changes(self, statuses: Mapping[str, JobStatus]) -> dict[str, JobStatus]:
        """Cached statuses plus blocks launched or scaled in since, without asking the provider."""
        fresh = dict(statuses)
        # Every block launched (or being launched: its job id comes back after this pass).
        for block_id in self.submitted_at:
            fresh.setdefault(block_id, JobStatus(JobState.PENDING, "submitted"))
        fresh.update(self.overrides)
        return fresh

    # --------------------------------------------------------------------------------- requests

    def _on_start(self, ev: Start, now: float) -> None:
        self.last_pass = now
        if self.settings.strategy == EXTERNAL or not self._scale(now, {}, first=True, answer=True):
            self._out.append(Answer([]))

    def _on_scale_out(self, ev: ScaleOut, now: float) -> None:
        if self.stopping or self.failed:
            self._out.append(Answer([]))
            return
        self._launch(ev.blocks, now, answer=True)

    def _on_scale_in(self, ev: ScaleIn, now: float) -> None:
        live = self.live_blocks()
        if ev.block_ids is not None:
            chosen = [b for b in ev.block_ids if b in live]
        else:
            chosen = choose_blocks_to_scale_in(ev.blocks, live, {} if self.failed else self.loads, ev.max_idletime)
        for block_id in chosen:
            self._out.append(HoldBlock(block_id))
        self._cancel(chosen, scaled_in=True, answer=True)

    def _on_hold(self, ev: HoldRequest, now: float) -> None:
        self._out.extend([HoldBlock(ev.block_id), Answer(None)])

    def _on_status_query(self, ev: StatusQuery, now: float) -> None:
        if ev.with_missing and self._jobs_fresh and not (self.stopping or self.failed):
            # Fresh statuses were observed for this query: they are this pass's refresh, so an external
            # scheduler that polls (Parsl's) does not make the provider answer twice per interval.
            self._jobs_fresh = False
            self._refresh(now)
        self._out.append(Answer(self.block_statuses() if ev.with_missing else self.status()))

    def _on_external_pass(self, ev: ExternalPass, now: float) -> None:
        self.outstanding = ev.outstanding
        if not (self.stopping or self.failed):
            self._no_silent_wait(now, external_pass=True)
        self._out.append(Answer(None))

    def _on_shutdown(self, ev: Shutdown, now: float) -> None:
        self.stopping = True
        self._cancel(self.live_blocks(), scaled_in=True, answer=True)

    # ------------------------------------------------------------------------------- the pass

    def _on_observed(self, ev: Observed, now: float) -> None:
        if ev.bad_state:
            self.failed = True
        if ev.jobs is not None:
            self.jobs.update(ev.jobs)
        if ev.registered is not None:
            seen = self._history_seen if len(ev.registered) >= self._history_seen else 0
            self.registered.update(ev.registered[seen:])
            self._history_seen = len(ev.registered)
        if ev.loads is not None:
            self.loads = ev.loads
        self._jobs_fresh = ev.jobs is not None
        self._loads_fresh = ev.loads is not None
        self.outstanding = ev.outstanding

    def _on_tick(self, ev: Tick, now: float) -> None:
        jobs_fresh, self._jobs_fresh = self._jobs_fresh, False
        if self.stopping or self.failed:
            return
        if self.last_status is None or now - self.last_status[0] >= self.settings.status_interval:
            if jobs_fresh:
                self._refresh(now)
            else:
                self._out.append(Note(WARNING, "No job statuses from the provider; the status refresh waits for "
                                               "the next wake"))
        if self._strategy_due(now) and not self.failed:
            self.last_pass = now
            if not self._loads_fresh:
                self._out.append(Note(WARNING, "The interchange did not report its blocks; this scaling pass "
                                               "is skipped"))
            else:
                statuses = self.last_status[1] if self.last_status is not None else {}
                self._scale(now, statuses)
        self._loads_fresh = False
        if not self.failed:
            self._no_silent_wait(now)

    def _no_silent_wait(self, now: float, external_pass: bool = False) -> None:
        """Tasks never wait for a block that nothing will start: after ``no_block_grace`` seconds of tasks
        outstanding with no block live or pending and no strategy that would launch one, they fail. With the
        ``external`` strategy, "would launch none" is seen: two of its passes (``ExternalPass``) came and
        launched nothing."""
        s = self.settings
        external = s.strategy == EXTERNAL
        stuck = (self.outstanding > 0 and not self.launching and not self.live_blocks()
                 and (external or not self.strategy_active or s.max_blocks == 0))
        if not stuck:
            self._no_block_since = None
            return
        if self._no_block_since is None:
            self._no_block_since, self._external_passes = now, 0
        if external_pass:
            self._external_passes += 1
        if now - self._no_block_since < s.no_block_grace or (external and self._external_passes < 2):
            return
        waited, self._no_block_since = now - self._no_block_since, None
        if external:
            why = (f"the scheduler that scales it (Parsl's strategy) started none in {self._external_passes} passes "
                   "(strategy='none' with init_blocks=0 or after every block ended, or max_blocks=0?)")
            self._out.append(FailOutstanding(
                f"{self.outstanding} task(s) of executor {s.label} waited {waited:.0f} s with no block running "
                f"or pending, and {why}; use Config(strategy='simple') to start blocks on demand, or raise "
                "init_blocks / min_blocks / max_blocks"))
            return
        why = ("max_blocks=0 allows no block" if s.max_blocks == 0 else
               f"strategy='{s.strategy}' starts none (init_blocks=0, or every block ended, drained or was scaled in)")
        self._out.append(FailOutstanding(
            f"{self.outstanding} task(s) of executor {s.label} waited {s.no_block_grace:g} s with no block running "
            f"or pending, and {why}; start one with scale_out(), or use strategy='simple' (or 'htex_auto_scale') "
            "to start blocks on demand, or raise init_blocks / min_blocks"))

    def _strategy_due(self, now: float) -> bool:
        return self.strategy_active and now - self.last_pass >= self.settings.strategy_period - 1e-3

    def _refresh(self, now: float) -> None:
        statuses = self.block_statuses()
        self._time_out_unregistered(statuses, now)
        self.last_status = (now, statuses)
        if self.failed:
            return
        if self.rule is not None:
            failure = self.rule(statuses)
            if failure is not None:
                self.failed = True
                self._out.append(FailAll(failure))
                return
        for block_id, st in statuses.items():
            if st.terminal and block_id not in self.ended_reported:
                self.ended_reported.add(block_id)
                reason = f"ended ({st.state.name}" + (
                    f", exit code {st.exit_code})" if st.exit_code is not None else ")")
                self._out.append(BlockEnded(block_id, reason))

    def _time_out_unregistered(self, statuses: dict[str, JobStatus], now: float) -> None:
        """Note when blocks are first seen RUNNING; cancel each block running for ``registration_timeout``
        without a worker pool of it registering, and report it in ``statuses`` (and from now on) as MISSING."""
        for block_id, st in statuses.items():
            if st.state == JobState.RUNNING:
                self.running_since.setdefault(block_id, now)
        timeout = self.settings.registration_timeout
        if timeout is None:
            return
        timed_out = blocks_registration_timed_out(
            {b: BlockRegistration(st.state.name, self.running_since.get(b), False)
             for b, st in statuses.items() if st.state == JobState.RUNNING and b not in self.registered},
            timeout, now)
        for block_id in timed_out:
            st = statuses[block_id]
            failure = replace(
                st, state=JobState.MISSING, exit_code=None,
                message=f"block {block_id} has been running for {now - self.running_since[block_id]:.0f} s but no "
                f"worker pool of it registered (block_registration_timeout={timeout:g} s), so the executor "
                f"cancelled it (a worker_init that does not finish, or a node that cannot reach the "
                f"interchange?); {self._where(st)}")
            self._out.append(Note(ERROR, failure.message or ""))
            self.registration_failures[block_id] = failure
            statuses[block_id] = failure
        self._cancel(timed_out, scaled_in=False, answer=False)

    def _scale(self, now: float, statuses: Mapping[str, JobStatus], first: bool = False,
               answer: bool = False) -> bool:
        """Run the strategy and carry out its decisions; True if it launched anything."""
        s = self.settings
        snap = Snapshot(
            now=now, strategy=s.strategy, outstanding=self.outstanding, workers_per_node=s.workers_per_node,
            nodes_per_block=s.pools_per_block, parallelism=float(s.parallelism), init_blocks=s.init_blocks,
            min_blocks=s.min_blocks, max_blocks=s.max_blocks, max_idletime=s.max_idletime,
            blocks=strategy_views(statuses, self.overrides, self.loads, self.registered, self.submitted_at, now))
        decisions = decide(snap, self.memory)
        launched = False
        for decision in decisions:
            if isinstance(decision, ScaleOutDecision):
                self._out.append(Note(INFO, f"Strategy {s.strategy}: scaling out by {decision.blocks} blocks"))
                self._launch(decision.blocks, now, answer=answer)
                launched = True
            else:
                self._out.append(Note(INFO, f"Strategy {s.strategy}: scaling in blocks {list(decision.block_ids)}"))
                self._out.extend(HoldBlock(b) for b in decision.block_ids)
                self._cancel(list(decision.block_ids), scaled_in=True, answer=False)
        if decisions and not first and self.last_status is not None:
            # Launches and cancels change what the next pass must see (a cheap, local refresh).
            self.last_status = (self.last_status[0], self.with_changes(self.last_status[1]))
        return launched

    # ------------------------------------------------------------------------------ the actions

    def _launch(self, blocks: int, now: float, answer: bool) -> None:
        ids = [str(next(self._ids)) for _ in range(max(0, blocks))]
        for block_id in ids:
            self.submitted_at[block_id] = now
            self.launching.add(block_id)
            self._out.append(Launch(block_id))
        if answer:
            self._wait("launch", ids)

    def _cancel(self, block_ids: Iterable[str], scaled_in: bool, answer: bool) -> None:
        with_job = [b for b in block_ids if b in self.blocks_to_job_id]
        if with_job:
            self._out.append(Cancel(tuple(with_job), tuple(self.blocks_to_job_id[b] for b in with_job), scaled_in))
        if answer:
            self._wait("cancel", with_job)

    def _wait(self, kind: str, ids: list[str]) -> None:
        if ids:
            self._pending = _Pending(kind, set(ids))
        else:
            self._out.append(Answer([]))

    def _settle(self, kind: str, block_id: str, ok: bool) -> None:
        p = self._pending
        if p is None or p.kind != kind or block_id not in p.waiting:
            return
        p.waiting.discard(block_id)
        if ok:
            p.done.append(block_id)
        if not p.waiting:
            self._pending = None
            self._out.append(Answer(p.done))

    def _on_launched(self, ev: Launched, now: float) -> None:
        self.launching.discard(ev.block_id)
        self.blocks_to_job_id[ev.block_id] = ev.job_id
        self.job_ids_to_block[ev.job_id] = ev.block_id
        self._settle("launch", ev.block_id, True)
        if self.stopping:
            # Launched while (or after) the executor shut down: it must not outlive the executor.
            self._out.append(Note(WARNING, f"Block {ev.block_id} (job {ev.job_id}) was launched after shutdown "
                                           "began; cancelling it"))
            self._cancel([ev.block_id], scaled_in=True, answer=False)

    def _on_launch_failed(self, ev: LaunchFailed, now: float) -> None:
        self.launching.discard(ev.block_id)
        self._out.append(Note(ERROR, f"Failed to start block {ev.block_id}: {ev.error}"))
        self.overrides[ev.block_id] = JobStatus(JobState.FAILED, f"Failed to start block {ev.block_id}: {ev.error}")
        # A block that never got a job id is known by its override alone.
        self.blocks_to_job_id.pop(ev.block_id, None)
        self._settle("launch", ev.block_id, False)

    def _on_cancel_done(self, ev: CancelDone, now: float) -> None:
        for block_id, ok in zip(ev.block_ids, ev.ok, strict=True):
            if ok:
                if ev.scaled_in:
                    self.overrides[block_id] = JobStatus(JobState.SCALED_IN, "scaled in by the executor")
                if not self.stopping and not self.failed:
                    # Its managers are gone now; the interchange need not wait heartbeat_threshold to know.
                    self.ended_reported.add(block_id)
                    self._out.append(BlockEnded(block_id, ""))
            else:
                self._out.append(Note(ERROR, f"The provider did not cancel block {block_id}"))
            self._settle("cancel", block_id, ok)

    _handlers: dict[type, Callable[[BlockControl, Any, float], None]] = {
        Start: _on_start,
        ScaleOut: _on_scale_out,
        ScaleIn: _on_scale_in,
        HoldRequest: _on_hold,
        StatusQuery: _on_status_query,
        Shutdown: _on_shutdown,
        Observed: _on_observed,
        Tick: _on_tick,
        ExternalPass: _on_external_pass,
        Launched: _on_launched,
        LaunchFailed: _on_launch_failed,
        CancelDone: _on_cancel_done,
    }


def drive(control: BlockControl, events: Iterable[Event], now: float,
          execute: Callable[[Launch | Cancel | HoldBlock | BlockEnded | FailAll | FailOutstanding | Note],
                            Iterable[Event]]) -> Any:
    """Hand ``events`` to ``control`` at ``now``, carry out each instruction with ``execute`` (which returns
    the events it gave, such as ``Launched``) and hand those back, until none is left. Returns the value of
    the last ``Answer``, or None. Both runtimes (the executor's control thread and simcluster's pilot)
    call this; it is pure as long as ``execute`` is."""
    answer = None
    queue: deque[Event] = deque(events)
    while queue:
        for ins in control.handle(queue.popleft(), now=now):
            if isinstance(ins, Answer):
                answer = ins.value
            else:
                queue.extend(execute(ins))
    return answer
