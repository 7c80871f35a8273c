"""Block scaling policies as a pure function of a status snapshot (see docs/scaling.md for worked examples).

``decide(snapshot, memory)`` returns what to do now: ``ScaleOut(n)`` and/or ``ScaleIn(block_ids)``. It
reads no clock (``snapshot.now``) and calls nothing; ``StrategyMemory`` holds the one thing it remembers
between passes (since when the executor has had no work). The executor's scaling loop and simcluster
both drive this same code.

Terms, per pass:

- *live* blocks: every block whose job is not in a terminal state: pending, running, held or unknown.
  Held and unknown jobs count as live for ``max_blocks`` and for capacity, so an unclear state never
  makes the policy submit more.
- *slots* = for each live block, the workers its managers actually run once one has registered, else
  ``nodes_per_block`` x ``workers_per_node`` (the executor's estimate).
- *demand* = outstanding tasks x ``parallelism``.

Rules (``none`` does only the first):

1. First pass: scale out to ``init_blocks`` (counting blocks already live).
2. Below ``min_blocks`` live: scale out to ``min_blocks`` (in the same pass as rule 3, taking the larger).
3. Outstanding tasks and ``slots < demand`` (or no slots at all): scale out
   ``ceil((demand - slots) / (nodes_per_block x workers_per_node))`` blocks, never above ``max_blocks``
   counting live ones. Rounding up: 49 tasks on 48-worker blocks need 2 blocks.
4. No outstanding task for ``max_idletime`` seconds: scale in down to ``min_blocks``.
5. ``htex_auto_scale`` only, with outstanding tasks: scale in
   ``floor((slots - demand) / (nodes_per_block x workers_per_node))`` blocks, but only registered blocks
   with no task that are held (they get no work anyway) or have been idle ``max_idletime``, and never
   below ``min_blocks``. Rounding down:
   14 tasks on one 48-worker block frees nothing, so the block Parsl would cancel stays.

Scale-in picks, in order: blocks whose managers are all held, idle registered blocks (longest idle
first), then blocks that never registered (pending longest first), and never a block with tasks. A
pending block is only cancelled by rule 4 (no work at all for ``max_idletime``): a block waiting in the
batch queue is not cancelled because tasks are few. ``ScaleIn`` never names zero blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from htex_ref.core.jobs import TERMINAL_NAMES

STRATEGY_NAMES = ("none", "simple", "htex_auto_scale")
#: Names of the terminal job states (``htex_ref.core.jobs`` holds the one list).
TERMINAL = TERMINAL_NAMES


@dataclass(frozen=True)
class BlockView:
    block_id: str
    state: str  # a JobState name
    #: When the block was submitted (the executor's clock).
    submitted_at: float
    #: Whether a manager of this block has registered.
    registered: bool = False
    #: Tasks its managers hold now.
    tasks: int = 0
    #: Seconds its managers have been idle (the least idle one); None when unknown or busy.
    idle_for: float | None = None
    #: True when every registered manager of the block is held.
    held: bool = False
    #: Workers its registered managers actually run; None until one registers (then the estimate counts).
    workers: int | None = None

    @property
    def live(self) -> bool:
        return self.state not in TERMINAL


@dataclass(frozen=True)
class Snapshot:
    now: float
    strategy: str
    outstanding: int
    workers_per_node: int
    nodes_per_block: int
    parallelism: float
    init_blocks: int
    min_blocks: int
    max_blocks: int
    max_idletime: float
    blocks: tuple[BlockView, ...] = ()


@dataclass
class StrategyMemory:
    first_pass_done: bool = False
    #: When the executor last had no outstanding task after having some, or None while it has work.
    no_work_since: float | None = None


@dataclass(frozen=True)
class ScaleOut:
    blocks: int


@dataclass(frozen=True)
class ScaleIn:
    block_ids: tuple[str, ...] = field(default_factory=tuple)


Decision = ScaleOut | ScaleIn


def _scale_in_order(blocks: list[BlockView], now: float) -> list[BlockView]:
    """Cheapest to lose first; blocks with tasks are never candidates."""
    candidates = [b for b in blocks if b.tasks == 0]

    def key(b: BlockView) -> tuple[int, float, str]:
        if b.held:
            return (0, 0.0, b.block_id)
        if b.registered:
            return (1, -(b.idle_for or 0.0), b.block_id)
        return (2, b.submitted_at - now, b.block_id)  # pending longest first

    return sorted(candidates, key=key)


def decide(snap: Snapshot, memory: StrategyMemory) -> list[Decision]:
    if snap.strategy not in STRATEGY_NAMES:
        raise ValueError(f"unknown strategy {snap.strategy!r}; accepted: {list(STRATEGY_NAMES)}")
    live = [b for b in snap.blocks if b.live]
    n_live = len(live)
    per_block = max(1, snap.nodes_per_block * snap.workers_per_node)
    room = max(0, snap.max_blocks - n_live)
    out: list[Decision] = []
    # The idle timer follows the work on every pass, whatever else the pass decides.
    if snap.outstanding > 0:
        memory.no_work_since = None
    elif memory.no_work_since is None:
        memory.no_work_since = snap.now

    if not memory.first_pass_done:
        memory.first_pass_done = True
        want = min(max(0, snap.init_blocks - n_live), room)
        if want:
            return [ScaleOut(want)]
    if snap.strategy == "none":
        return out

    below_min = max(0, snap.min_blocks - n_live)
    if snap.outstanding > 0:
        slots = sum(b.workers if b.workers is not None else per_block for b in live)
        demand = snap.outstanding * snap.parallelism
        need = max(1, math.ceil((demand - slots) / per_block)) if slots == 0 or slots < demand else 0
        # One scale-out covers both min_blocks and the demand, in the same pass.
        if max(need, below_min) and room:
            return [ScaleOut(min(max(need, below_min), room))]
        if snap.strategy == "htex_auto_scale" and slots > demand and n_live > snap.min_blocks:
            excess = math.floor((slots - demand) / per_block)
            excess = min(excess, n_live - snap.min_blocks)
            idle = [b for b in _scale_in_order(live, snap.now)
                    if b.registered and (b.held or (b.idle_for is not None and b.idle_for >= snap.max_idletime))]
            chosen = tuple(b.block_id for b in idle[:excess])
            if chosen:
                out.append(ScaleIn(chosen))
        return out

    # No outstanding task.
    if below_min and room:
        return [ScaleOut(min(below_min, room))]
    assert memory.no_work_since is not None
    if n_live > snap.min_blocks and snap.now - memory.no_work_since >= snap.max_idletime:
        chosen = tuple(b.block_id for b in _scale_in_order(live, snap.now)[: n_live - snap.min_blocks])
        if chosen:
            out.append(ScaleIn(chosen))
    return out
