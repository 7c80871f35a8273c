"""Block choice for the executor's explicit ``scale_in(n)`` (Parsl's API), and the block-failure rules.

The automatic scaling policy has its own, stricter order in ``htex_ref.core.strategy`` (it never
cancels a block with tasks and prefers idle registered blocks to pending ones); this one serves a user
who asks for n blocks to go, so it may take busy blocks last, as Parsl does.

``choose_blocks_to_scale_in`` ranks live blocks so that the cheapest to lose go first: blocks whose
managers are all held (they get no work anyway), then blocks with no tasks before busy ones, and among
those the longest idle first; a block that never registered counts as idle forever. ``n <= 0`` chooses
nothing (Parsl's ``scale_in(0)`` kills every idle block). With ``max_idletime`` (Parsl's
``scale_in(n, max_idletime)``, which its ``htex_auto_scale`` strategy calls) only registered blocks with
no task, idle for more than ``max_idletime`` seconds, are candidates: unlike Parsl, a block still
waiting in the queue is not "idle", so that strategy does not cancel pending blocks it just asked for.

The block-failure rules decide when failed blocks put the executor in bad state: ``blocks_all_failed``
(Parsl's "simple" handler) and ``blocks_last_failed`` (its "windowed" handler); ``AllFailedRule`` and
``LastFailedRule`` are the same rules as block control's ``ErrorRule``, returning a ``BlockFailure``.
``blocks_registration_timed_out`` finds blocks that run but whose worker pool never registered.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from htex_ref.core.interchange import BlockLoad
from htex_ref.core.jobs import FAILED_STATES, JobStatus
from htex_ref.core.selectors import block_rank


def choose_blocks_to_scale_in(n: int, live_blocks: Iterable[str], loads: Mapping[str, BlockLoad],
                              max_idletime: float | None = None) -> list[str]:
    """The ``n`` live blocks cheapest to lose, cheapest first; ``loads`` is the interchange's view of each
    block with registered managers (``InterchangeState.block_loads``); ``max_idletime``: see the module
    docstring."""
    if n <= 0:
        return []
    if max_idletime is not None:
        live_blocks = [b for b in live_blocks if (load := loads.get(b)) is not None and load.managers > 0
                       and load.tasks == 0 and load.idle_for is not None and load.idle_for > max_idletime]

    def key(b: str) -> tuple[bool, bool, float, int, tuple[int, int, str]]:
        load = loads.get(b)
        if load is None or load.managers == 0:
            # Never registered (or every manager gone): idle forever.
            return (True, False, -math.inf, 0, block_rank(b))
        held = load.active == 0
        idle = load.idle_for if load.idle_for is not None else 0.0
        return (not held, load.tasks > 0, -idle, load.tasks, block_rank(b))

    return sorted(dict.fromkeys(live_blocks), key=key)[:n]


FAILED_NAMES = frozenset(s.name for s in FAILED_STATES)


def blocks_all_failed(states: Mapping[str, str], threshold: int) -> bool:
    """Parsl's "simple" block error rule: at least ``threshold`` blocks, and every one of them failed.

    ``states`` maps block id to a state name; FAILED and MISSING (ended without a manager ever
    registering) count as failures. A block that is still pending or running, completed after it
    registered, or was scaled in, keeps the executor alive.
    """
    if not states or len(states) < max(1, threshold):
        return False
    return all(state in FAILED_NAMES for state in states.values())


def last_blocks(block_ids: Iterable[str], window: int) -> list[str]:
    """The last ``window`` block ids in block-id order (numeric: '10' comes after '9')."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window!r}")
    return sorted(block_ids, key=block_rank)[-window:]


def blocks_last_failed(states: Mapping[str, str], window: int) -> bool:
    """Parsl's "windowed" block error rule: at least ``window`` blocks, and the last ``window`` of them in
    block-id order all failed (FAILED or MISSING).

    Any other state among the last ``window`` blocks (a block pending, running, completed or scaled in)
    keeps the executor alive, so a block that works after failures starts the count again.
    """
    if len(states) < window:
        return False
    return all(states[b] in FAILED_NAMES for b in last_blocks(states, window))


@dataclass(frozen=True)
class BlockRegistration:
    """What the registration time-out rule knows about one block."""

    #: The provider's state for the block (a JobState name).
    state: str
    #: When the executor first saw the block RUNNING (its clock), or None if it has not yet.
    running_since: float | None
    #: Whether a manager of the block has ever registered.
    registered: bool


def blocks_registration_timed_out(
    blocks: Mapping[str, BlockRegistration], timeout: float | None, now: float
) -> list[str]:
    """Blocks the provider says are RUNNING, first seen running at least ``timeout`` seconds before
    ``now``, of which no manager ever registered; in block-id order. ``timeout=None`` finds none.

    Time in the batch queue (PENDING) does not count; a block that ended, or is held, is left to the
    other rules.
    """
    if timeout is None:
        return []
    return sorted(
        (b for b, v in blocks.items()
         if v.state == "RUNNING" and not v.registered and v.running_since is not None
         and now - v.running_since >= timeout),
        key=block_rank,
    )


# -------------------------------------------------------------------------------- block error rules


@dataclass(frozen=True)
class BlockFailure:
    """Why failed blocks put the executor in bad state: a headline and the statuses of the blocks to
    describe (the runtime quotes their exit codes and output files), or, from a handler written as Parsl's
    ``handler(executor, statuses)``, the exception that handler gave."""

    headline: str = ""
    statuses: Mapping[str, JobStatus] = field(default_factory=dict)
    error: BaseException | None = None


def _names(statuses: Mapping[str, JobStatus]) -> dict[str, str]:
    return {b: s.state.name for b, s in statuses.items()}


@dataclass(frozen=True)
class AllFailedRule:
    """Parsl's "simple" rule: every block failed, and there are at least ``threshold`` of them."""

    threshold: int
    label: str

    def __call__(self, statuses: Mapping[str, JobStatus]) -> BlockFailure | None:
        if not blocks_all_failed(_names(statuses), self.threshold):
            return None
        return BlockFailure(f"all {len(statuses)} blocks of executor {self.label} failed:", dict(statuses))


@dataclass(frozen=True)
class LastFailedRule:
    """Parsl's "windowed" rule: the last ``window`` blocks in block-id order all failed."""

    window: int
    label: str

    def __call__(self, statuses: Mapping[str, JobStatus]) -> BlockFailure | None:
        if not blocks_last_failed(_names(statuses), self.window):
            return None
        return BlockFailure(f"the last {self.window} blocks of executor {self.label} (by block id) failed:",
                            {b: statuses[b] for b in last_blocks(statuses, self.window)})
