"""Manager selectors: which of the managers with free capacity gets the next batch of tasks.

A selector is a small strategy object with one pure method. It sees only the candidates (managers that
are registered, active, not draining and have free capacity) and returns one manager id.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Protocol


class Candidate(Protocol):
    @property
    def block_id(self) -> str | None: ...


class ManagerSelector(Protocol):
    #: The name used on the wire and in configuration.
    name: str

    def choose(self, candidates: Mapping[bytes, Candidate]) -> bytes:
        """Return the id of one of ``candidates`` (never empty)."""
        ...


class RandomManagerSelector:
    """Spread tasks over managers at random (the default, as in Parsl)."""

    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def choose(self, candidates: Mapping[bytes, Candidate]) -> bytes:
        if len(candidates) == 1:
            return next(iter(candidates))
        return self._rng.choice(list(candidates))

    def __repr__(self) -> str:
        return "RandomManagerSelector()"


def block_rank(block_id: str | None) -> tuple[int, int, str]:
    """Sort key for block ids: numeric ids by value ('10' after '2'), then other strings, then None."""
    if block_id is None:
        return (0, 0, "")
    try:
        return (2, int(block_id), block_id)
    except ValueError:
        return (1, 0, block_id)


class BlockIdManagerSelector:
    """Fill the block with the highest id first, so older blocks drain and can be scaled in.

    Block ids compare as numbers ('10' is higher than '2'), unlike Parsl, which compares them as strings.
    Managers with no block id are served last.
    """

    name = "block_id"

    def choose(self, candidates: Mapping[bytes, Candidate]) -> bytes:
        return max(candidates, key=lambda mid: (block_rank(candidates[mid].block_id), mid))

    def __repr__(self) -> str:
        return "BlockIdManagerSelector()"


SELECTORS: dict[str, type[RandomManagerSelector] | type[BlockIdManagerSelector]] = {
    "random": RandomManagerSelector,
    "block_id": BlockIdManagerSelector,
}


def selector_from_name(name: str) -> ManagerSelector:
    try:
        return SELECTORS[name]()
    except KeyError:
        raise ValueError(f"unknown manager selector {name!r}; accepted: {sorted(SELECTORS)}") from None
