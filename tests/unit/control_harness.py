"""Block control (``htex_ref.core.blocks``) driven as the control thread drives it, against a provider the
test controls and an interchange view the test sets: no thread, no process, no clock."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from htex_ref.block_errors import error_rule, failure_exception, resolve_block_error_handler
from htex_ref.core.blocks import (
    BlockControl,
    BlockEnded,
    Cancel,
    CancelDone,
    ControlSettings,
    Event,
    FailAll,
    FailOutstanding,
    HoldBlock,
    Launch,
    Launched,
    LaunchFailed,
    Observed,
    Tick,
    drive,
)
from htex_ref.core.interchange import BlockLoad
from htex_ref.core.notes import Note
from htex_ref.launchers import SingleNodeLauncher
from htex_ref.providers.base import ExecutionProvider, JobState, JobStatus


class FakeProvider(ExecutionProvider):
    """Jobs whose state the test sets; submit hands out j0, j1, ...; cancel records the ids and makes the
    jobs CANCELLED."""

    def __init__(self, init_blocks: int = 1, max_blocks: int = 10, min_blocks: int = 0) -> None:
        self.init_blocks = init_blocks
        self.max_blocks = max_blocks
        self.min_blocks = min_blocks
        self.states: dict[str, JobState] = {}
        self.cancelled: list[str] = []
        self.submitted: list[str] = []
        self.launcher = SingleNodeLauncher()
        self.script_dir = "/jobs"

    def submit(self, command: str, tasks_per_node: int, job_name: str = "x") -> str:
        job = f"j{len(self.submitted)}"
        self.submitted.append(job)
        self.states[job] = JobState.PENDING
        return job

    def status(self, job_ids: list[str]) -> list[JobStatus]:
        return [JobStatus(self.states[j], stdout_path=f"/jobs/{j}.out", stderr_path=f"/jobs/{j}.err")
                for j in job_ids]

    def cancel(self, job_ids: list[str]) -> list[bool]:
        self.cancelled += job_ids
        for j in job_ids:
            self.states[j] = JobState.CANCELLED
        return [True] * len(job_ids)


@dataclass
class Target:
    """What a block error handler is given as the executor: a label, a provider, and the failure."""

    provider: ExecutionProvider
    label: str = "hx"
    failure: BaseException | None = None

    def set_bad_state_and_fail_all(self, exception: BaseException) -> None:
        if self.failure is None:
            self.failure = exception


@dataclass
class Harness:
    """A ``BlockControl`` with the executor's settings for ``provider``, its error rule from
    ``block_error_handler``, and a log of every instruction carried out (log notes kept apart)."""

    provider: FakeProvider
    strategy: str = "none"
    registration_timeout: float | None = 120.0
    block_error_handler: Any = True
    strategy_period: float = 5.0
    max_idletime: float = 120.0
    status_interval: float = 5.0
    no_block_grace: float = 5.0
    #: More ControlSettings fields (nodes_per_block, workers_per_node, mpi_mode, ...).
    extra: dict[str, Any] = field(default_factory=dict)
    #: What the interchange says: blocks that ever registered, and per-block loads now.
    registered: list[str] = field(default_factory=list)
    loads: dict[str, BlockLoad] = field(default_factory=dict)
    outstanding: int = 0
    bad_state: bool = False
    done: list[Any] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    def __post_init__(self) -> None:
        p = self.provider
        self.target = Target(p)
        self.core = BlockControl(
            ControlSettings(strategy=self.strategy, strategy_period=self.strategy_period,
                            max_idletime=self.max_idletime, registration_timeout=self.registration_timeout,
                            status_interval=self.status_interval, init_blocks=p.init_blocks,
                            min_blocks=p.min_blocks, max_blocks=p.max_blocks, script_dir=p.script_dir,
                            label="hx", no_block_grace=self.no_block_grace, **self.extra),
            error_rule(resolve_block_error_handler(self.block_error_handler), self.target, p.init_blocks))

    def execute(self, ins: Any) -> Iterable[Event]:
        if isinstance(ins, Note):
            self.notes.append(ins)
            return ()
        self.done.append(ins)
        if isinstance(ins, Launch):
            try:
                return [Launched(ins.block_id, self.provider.submit("cmd", 1))]
            except Exception as e:
                return [LaunchFailed(ins.block_id, str(e))]
        if isinstance(ins, Cancel):
            return [CancelDone(ins.block_ids, tuple(self.provider.cancel(list(ins.job_ids))), ins.scaled_in)]
        if isinstance(ins, FailAll):
            self.target.set_bad_state_and_fail_all(failure_exception(ins.failure))
        assert isinstance(ins, HoldBlock | BlockEnded | FailAll | FailOutstanding)
        return ()

    def observed(self, now: float, event: Event | None = None) -> Observed | None:
        needs = self.core.needs(event, now)
        if not needs:
            return None
        ids = list(self.core.blocks_to_job_id.items())
        jobs = dict(zip([b for b, _ in ids], self.provider.status([j for _, j in ids]), strict=True)) \
            if needs.jobs else None
        return Observed(jobs, list(self.registered) if needs.interchange else None,
                        dict(self.loads) if needs.interchange else None, self.outstanding,
                        self.bad_state or self.target.failure is not None)

    def run(self, event: Event | None, now: float) -> Any:
        """What the control thread does for ``event`` (a wake when None): observe, hand over, carry out."""
        observed = self.observed(now, event)
        events: list[Event] = [observed] if observed is not None else []
        events.append(Tick() if event is None else event)
        return drive(self.core, events, now, self.execute)

    def step(self, event: Event | None, now: float) -> list[Any]:
        """``run``, returning the instructions it carried out (log notes left out)."""
        before = len(self.done)
        self.run(event, now)
        return self.done[before:]

    def set_jobs(self, state: JobState, *blocks: str) -> None:
        for b in blocks or tuple(self.core.blocks_to_job_id):
            self.provider.states[self.core.blocks_to_job_id[b]] = state

    def status(self) -> Mapping[str, JobStatus]:
        return self.core.status()
