"""``SimPool``: one node's worker pool in the simulation, decided by htex_ref's own ``ManagerState``.

The pool's rules (which worker runs which task, the local queue in priority order, tasks handed over in
advance, result batching, a dead worker's task reported as ``WORKER_LOST`` and the worker replaced,
heartbeats, exit on a stop) are ``htex_ref.core.manager.ManagerState``'s, as in ``htex-worker-pool``.
What is modelled here is only what the real pool does with its processes: a worker runs its task for
the task's drawn duration; a task marked to crash kills its worker instead of returning; a replaced
worker is ready at once. The pilot (``simcluster.pilot``) carries out the messages: results to the
interchange, heartbeats in one batch per heartbeat period.
"""

from __future__ import annotations

import math

from htex_ref.core.interchange import ManagerHeartbeat
from htex_ref.core.manager import ManagerState

_NAN = math.nan


class SimPool:
    """The pool's core and the sim's view of its workers: the task each one runs and the one handed to it
    in advance (task indices, -1 for none)."""

    __slots__ = ("alive", "block", "contact", "current", "died_at", "heartbeat", "index", "mid", "next", "node",
                 "state", "wake_at", "workers")

    def __init__(self, index: int, mid: bytes, block: str, node: int, workers: int, state: ManagerState) -> None:
        self.index = index
        self.mid = mid
        self.block = block
        self.node = node
        self.workers = workers
        self.state = state
        self.current = [-1] * workers
        self.next = [-1] * workers
        self.alive = True
        self.died_at = _NAN
        #: The interchange answered a heartbeat since the last tick (handed to the core at the next one).
        self.contact = False
        #: When a wake-up for the core's result batching is due (inf: none).
        self.wake_at = math.inf
        self.heartbeat = ManagerHeartbeat(mid)
