"""Manager selectors: which of the managers with free capacity gets the next batch of tasks.

A selector has two faces:

* ``choose(candidates)`` states its rule over a plain mapping of candidates, by looking at all of them.
  It is the definition, and the brute-force model the tests compare against.
* ``new_pool()`` returns a ``CandidatePool``: the structure the interchange keeps up to date as managers
  gain and lose free capacity (``add``/``discard`` on events), so that picking a manager costs O(1) or
  O(log n), whatever the number of managers. A pool must choose as ``choose`` would over its members.

Candidates are managers that are registered, active, not draining and have room for work.

A selector of your own is any object with ``choose(candidates) -> manager id``, where ``candidates`` maps
manager ids (bytes) to objects with a ``block_id``; it may add ``new_pool()`` for a faster pool. It is
pickled (cloudpickle) into the interchange process, so it must not hold sockets, threads or locks.
``CustomSelector`` wraps one for the interchange (a ``ScanPool`` when it has no ``new_pool``).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping
from typing import Any, Protocol


class Candidate(Protocol):
    @property
    def block_id(self) -> str | None: ...


class CandidatePool(Protocol):
    """Managers that may take work now, kept up to date by the interchange."""

    def add(self, manager_id: bytes, block_id: str | None) -> None:
        """Make ``manager_id`` a candidate (no effect if it already is)."""
        ...

    def discard(self, manager_id: bytes) -> None:
        """Remove ``manager_id`` if it is a candidate."""
        ...

    def choose(self) -> bytes:
        """Return one candidate, leaving it in the pool; the pool must not be empty."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, manager_id: object) -> bool: ...


class ManagerSelector(Protocol):
    #: The name used on the wire and in configuration.
    name: str

    def choose(self, candidates: Mapping[bytes, Candidate]) -> bytes:
        """Return the id of one of ``candidates`` (never empty), by scanning them all."""
        ...

    def new_pool(self) -> CandidatePool:
        """An empty candidate pool that chooses by this selector's rule."""
        ...


# ------------------------------------------------------------------------------------------- random


class RandomPool:
    """Uniform choice in O(1): a list for indexing plus each member's position; removal swaps the
    last member into the hole."""

    __slots__ = ("_index", "_items", "_rng")

    def __init__(self, rng: random.Random) -> None:
        self._items: list[bytes] = []
        self._index: dict[bytes, int] = {}
        self._rng = rng

    def add(self, manager_id: bytes, block_id: str | None) -> None:
        if manager_id not in self._index:
            self._index[manager_id] = len(self._items)
            self._items.append(manager_id)

    def discard(self, manager_id: bytes) -> None:
        i = self._index.pop(manager_id, None)
        if i is None:
            return
        last = self._items.pop()
        if last != manager_id:
            self._items[i] = last
            self._index[last] = i

    def choose(self) -> bytes:
        items = self._items
        if len(items) == 1:
            return items[0]
        return items[self._rng.randrange(len(items))]

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, manager_id: object) -> bool:
        return manager_id in self._index


class RandomManagerSelector:
    """Spread tasks over managers at random (the default, as in Parsl)."""

    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def choose(self, candidates: Mapping[bytes, Candidate]) -> bytes:
        if len(candidates) == 1:
            return next(iter(candidates))
        return self._rng.choice(list(candidates))

    def new_pool(self) -> RandomPool:
        return RandomPool(self._rng)

    def __repr__(self) -> str:
        return "RandomManagerSelector()"


# ----------------------------------------------------------------------------------------- block id


def block_rank(block_id: str | None) -> tuple[int, int, str]:
    """Sort key for block ids: numeric ids by value ('10' after '2'), then other strings, then None."""
    if block_id is None:
        return (0, 0, "")
    try:
        return (2, int(block_id), block_id)
    except ValueError:
        return (1, 0, block_id)


def _max_key(block_id: str | None, manager_id: bytes) -> tuple[tuple[int, int, str], bytes]:
    return (block_rank(block_id), manager_id)


class _Inverted:
    """Wraps a sort key so that ``heapq``'s min-heap yields the largest key first."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[tuple[int, int, str], bytes]) -> None:
        self.key = key

    def __lt__(self, other: _Inverted) -> bool:
        return self.key > other.key


class BlockIdPool:
    """Largest (block rank, manager id) first, in O(log n): a heap with lazy deletion.

    ``discard`` only forgets membership; stale heap entries are dropped when they reach the top, and the
    heap is rebuilt from the members when stale entries outnumber live ones, so it stays O(members).
    """

    __slots__ = ("_heap", "_members")

    def __init__(self) -> None:
        self._heap: list[tuple[_Inverted, bytes]] = []
        self._members: dict[bytes, str | None] = {}

    def add(self, manager_id: bytes, block_id: str | None) -> None:
        if manager_id in self._members:
            return
        self._members[manager_id] = block_id
        heapq.heappush(self._heap, (_Inverted(_max_key(block_id, manager_id)), manager_id))
        if len(self._heap) > 2 * len(self._members) + 16:
            self._heap = [(_Inverted(_max_key(b, m)), m) for m, b in self._members.items()]
            heapq.heapify(self._heap)

    def discard(self, manager_id: bytes) -> None:
        self._members.pop(manager_id, None)

    def choose(self) -> bytes:
        heap = self._heap
        members = self._members
        while True:
            entry = heap[0]
            mid = entry[1]
            # An entry is live if its manager is a member under the same key (it may have left and
            # come back with another block id, leaving an older entry behind).
            if mid in members and entry[0].key == _max_key(members[mid], mid):
                return mid
            heapq.heappop(heap)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, manager_id: object) -> bool:
        return manager_id in self._members


class BlockIdManagerSelector:
    """Fill the block with the highest id first, so older blocks drain and can be scaled in.

    Block ids compare as numbers ('10' is higher than '2'), unlike Parsl, which compares them as strings.
    Managers with no block id are served last. Ties go to the larger manager id.
    """

    name = "block_id"

    def choose(self, candidates: Mapping[bytes, Candidate]) -> bytes:
        return max(candidates, key=lambda mid: _max_key(candidates[mid].block_id, mid))

    def new_pool(self) -> BlockIdPool:
        return BlockIdPool()

    def __repr__(self) -> str:
        return "BlockIdManagerSelector()"


SELECTORS: dict[str, type[RandomManagerSelector] | type[BlockIdManagerSelector]] = {
    "random": RandomManagerSelector,
    "block_id": BlockIdManagerSelector,
}


class _Member:
    __slots__ = ("block_id",)

    def __init__(self, block_id: str | None) -> None:
        self.block_id = block_id


class ScanPool:
    """The pool of a selector that has only ``choose``: its members, and a scan of them per choice
    (O(members), where the built-in selectors' pools are O(1) or O(log n))."""

    __slots__ = ("_members", "_selector")

    def __init__(self, selector: Any) -> None:
        self._selector = selector
        self._members: dict[bytes, _Member] = {}

    def add(self, manager_id: bytes, block_id: str | None) -> None:
        self._members.setdefault(manager_id, _Member(block_id))

    def discard(self, manager_id: bytes) -> None:
        self._members.pop(manager_id, None)

    def choose(self) -> bytes:
        chosen = self._selector.choose(self._members)
        if chosen not in self._members:
            raise ValueError(f"manager selector {self._selector!r} chose {chosen!r}, which is not a candidate")
        return bytes(chosen)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, manager_id: object) -> bool:
        return manager_id in self._members


class CustomSelector:
    """A user's selector as the interchange uses it: ``choose`` over the candidates (the protocol a class
    must implement), and ``new_pool`` from the object when it has one, else a ``ScanPool``."""

    def __init__(self, selector: Any) -> None:
        if not callable(getattr(selector, "choose", None)):
            raise TypeError(f"a manager selector needs a choose(candidates) method, got {selector!r}")
        self._selector = selector
        self.name = str(getattr(selector, "name", type(selector).__name__))

    def choose(self, candidates: Mapping[bytes, Candidate]) -> bytes:
        return bytes(self._selector.choose(candidates))

    def new_pool(self) -> CandidatePool:
        make = getattr(self._selector, "new_pool", None)
        pool: CandidatePool = make() if callable(make) else ScanPool(self._selector)
        return pool


def selector_from_name(name: str) -> ManagerSelector:
    try:
        return SELECTORS[name]()
    except KeyError:
        raise ValueError(f"unknown manager selector {name!r}; accepted: {sorted(SELECTORS)}") from None
