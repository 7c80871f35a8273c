"""Block control's vocabulary: its settings, the events it takes, the instructions it gives, and what it
asks to observe (``htex_ref.core.blocks`` is the machine; see its docstring for the rules)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from htex_ref.core.interchange import BlockLoad
from htex_ref.core.jobs import JobStatus
from htex_ref.core.notes import Note
from htex_ref.core.scaling import BlockFailure

#: The block error rule: statuses of every block in, a failure (or None) out.
ErrorRule = Callable[[Mapping[str, JobStatus]], BlockFailure | None]


# -------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ControlSettings:
    strategy: str
    strategy_period: float
    max_idletime: float
    #: Seconds a RUNNING block may go without any manager registering; None: forever.
    registration_timeout: float | None
    #: Seconds between status refreshes (the provider's polling interval, at least 0.2).
    status_interval: float = 5.0
    init_blocks: int = 1
    min_blocks: int = 0
    max_blocks: int = 1
    nodes_per_block: int = 1
    parallelism: float = 1.0
    #: The executor's estimate of workers per node, for scaling arithmetic.
    workers_per_node: int = 1
    #: Where the provider writes scripts and job output, named in messages about blocks that failed.
    script_dir: str | None = None
    #: The executor's label, named in messages.
    label: str = "executor"
    #: Seconds tasks may wait with no block live or pending and none coming before they fail with
    #: ``FailOutstanding`` (time for a user who calls ``scale_out`` after ``submit``).
    no_block_grace: float = 5.0
    #: MPI mode: each block runs one pool (on its first node), so a block runs ``workers_per_node``
    #: tasks at once, not ``nodes_per_block`` times that.
    mpi_mode: bool = False

    @property
    def pools_per_block(self) -> int:
        """Worker pools a block runs, for scaling arithmetic: one per node, or one in MPI mode."""
        return 1 if self.mpi_mode else self.nodes_per_block

    @property
    def wake_interval(self) -> float:
        """How often the control thread wakes: often enough for both the refresh and the strategy."""
        return max(0.1, min(self.status_interval, self.strategy_period))


# ---------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Start:
    """The executor started: launch ``init_blocks`` now (the strategy period counts from here)."""


@dataclass(frozen=True)
class ScaleOut:
    blocks: int


@dataclass(frozen=True)
class ScaleIn:
    """Cancel ``blocks`` blocks chosen by ``choose_blocks_to_scale_in`` (idle ones first), or exactly
    the live ones among ``block_ids``."""

    blocks: int = 0
    block_ids: tuple[str, ...] | None = None
    #: Only blocks whose managers have all been idle (no task) for more than this many seconds
    #: (Parsl's ``scale_in(blocks, max_idletime)``); blocks that never registered are not idle.
    max_idletime: float | None = None


@dataclass(frozen=True)
class HoldRequest:
    block_id: str


@dataclass(frozen=True)
class StatusQuery:
    """Answer every block's status: the provider's and the states set here (``with_missing``: as the
    block error rule sees them, with MISSING for blocks that ended or timed out before registering)."""

    with_missing: bool = False
    #: Ask the provider first (False: what is known now, from the last refresh and the states set here).
    fresh: bool = True


@dataclass(frozen=True)
class Shutdown:
    """Cancel every live block; scale, report and judge nothing more."""


@dataclass(frozen=True)
class Observed:
    """What the runtime saw, as ``needs`` asked: the provider's status of each block that has a job
    (None: not observed now), the interchange's view (None: not observed, or it did not answer)."""

    jobs: Mapping[str, JobStatus] | None = None
    #: Every block that has ever had a manager register, in order of first registration (the interchange's
    #: list only grows, so block control reads just what it has not seen).
    registered: Sequence[str] | None = None
    #: The interchange's per-block loads (with ``registered``).
    loads: Mapping[str, BlockLoad] | None = None
    #: Tasks submitted and not yet resolved.
    outstanding: int = 0
    #: The executor is in bad state (its interchange died, say).
    bad_state: bool = False


@dataclass(frozen=True)
class Tick:
    """A wake of the control thread, after the ``Observed`` that ``needs(None, now)`` asked for: run
    whatever part of the control pass is due."""


@dataclass(frozen=True)
class ExternalPass:
    """A pass of the scheduler that starts and stops the blocks of an executor with the ``external``
    strategy (Parsl's job-status poller, through the adapter), with the executor's outstanding tasks:
    two such passes that start nothing while tasks wait with no block live or pending mean none will come."""

    outstanding: int


@dataclass(frozen=True)
class Launched:
    block_id: str
    job_id: str


@dataclass(frozen=True)
class LaunchFailed:
    block_id: str
    error: str


@dataclass(frozen=True)
class CancelDone:
    """Which of a ``Cancel``'s blocks the provider cancelled (or found already ended)."""

    block_ids: tuple[str, ...]
    ok: tuple[bool, ...]
    scaled_in: bool = True


Event = (Start | ScaleOut | ScaleIn | HoldRequest | StatusQuery | Shutdown | Observed | Tick | ExternalPass
         | Launched | LaunchFailed | CancelDone)


# ---------------------------------------------------------------------------------- instructions


@dataclass(frozen=True)
class Launch:
    block_id: str


@dataclass(frozen=True)
class Cancel:
    block_ids: tuple[str, ...]
    job_ids: tuple[str, ...]
    #: Mark them SCALED_IN once cancelled (False: they keep the provider's state, e.g. after a time-out).
    scaled_in: bool = True


@dataclass(frozen=True)
class HoldBlock:
    """Tell the interchange to send no more tasks to the block's managers."""

    block_id: str


@dataclass(frozen=True)
class BlockEnded:
    """Tell the interchange the block's managers are gone (``reason`` empty: cancelled by the executor)."""

    block_id: str
    reason: str = ""


@dataclass(frozen=True)
class FailAll:
    """The block error rule failed the executor: every outstanding task fails with this."""

    failure: BlockFailure


@dataclass(frozen=True)
class FailOutstanding:
    """Tasks are outstanding, no block is live or pending, and nothing will start one: fail those tasks
    (the executor stays usable)."""

    reason: str


@dataclass(frozen=True)
class Answer:
    value: Any


Instruction = Launch | Cancel | HoldBlock | BlockEnded | FailAll | FailOutstanding | Answer | Note


@dataclass(frozen=True)
class Needs:
    """What the runtime must observe before handing an event over."""

    jobs: bool = False
    interchange: bool = False

    def __bool__(self) -> bool:
        return self.jobs or self.interchange
