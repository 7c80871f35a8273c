"""Block choice for the executor's explicit ``scale_in(n)`` (Parsl's API), and the block-failure rule.

The automatic scaling policy has its own, stricter order in ``htex_ref.core.strategy`` (it never
cancels a block with tasks and prefers idle registered blocks to pending ones); this one serves a user
who asks for n blocks to go, so it may take busy blocks last, as Parsl does.

``choose_blocks_to_scale_in`` ranks live blocks so that the cheapest to lose go first: blocks whose
managers are all held (they get no work anyway), then blocks with no tasks before busy ones, and among
those the longest idle first; a block that never registered counts as idle forever. ``n <= 0`` chooses
nothing (Parsl's ``scale_in(0)`` kills every idle block).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from htex_ref.core.selectors import block_rank


def choose_blocks_to_scale_in(
    n: int, live_blocks: Iterable[str], managers: Iterable[Mapping[str, Any]]
) -> list[str]:
    if n <= 0:
        return []
    tasks: dict[str, int] = {}
    idle: dict[str, float] = {}
    held: dict[str, bool] = {}
    for b in live_blocks:
        tasks[b] = 0
        idle[b] = math.inf
        held[b] = False
    seen: set[str] = set()
    for m in managers:
        block = m.get("block_id")
        if not isinstance(block, str) or block not in tasks:
            continue
        b = block
        active = bool(m.get("active", True))
        held[b] = (held[b] or b not in seen) and not active
        seen.add(b)
        tasks[b] += int(m.get("tasks", 0))
        idle[b] = min(idle[b], float(m.get("idle_duration", 0.0)) if not m.get("tasks") else 0.0)
    order = sorted(tasks, key=lambda b: (not held[b], tasks[b] > 0, -idle[b], tasks[b], block_rank(b)))
    return order[:n]


FAILED_NAMES = frozenset({"FAILED", "MISSING"})


def blocks_all_failed(states: Mapping[str, str], threshold: int) -> bool:
    """Parsl's "simple" block error rule: at least ``threshold`` blocks, and every one of them failed.

    ``states`` maps block id to a state name; FAILED and MISSING (ended without a manager ever
    registering) count as failures. A block that is still pending or running, completed after it
    registered, or was scaled in, keeps the executor alive.
    """
    if not states or len(states) < max(1, threshold):
        return False
    return all(state in FAILED_NAMES for state in states.values())
