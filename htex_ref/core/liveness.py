"""When the executor pings its interchange, and when the interchange's silence is an error.

The interchange's process can exist and still be of no use (stopped with SIGSTOP, stuck in a loop), so
its exit is not the only way it fails. The executor's link thread pings it every ``ping_every``
seconds, any message from it counts as an answer, and after ``threshold`` seconds without one the
interchange is declared silent. The watch is suspended (its clock restarts) while there is nothing to
expect: before the interchange reported ready, and once the executor is in bad state.
"""

from __future__ import annotations

import enum


class Due(enum.Enum):
    NOTHING = 0
    PING = 1
    SILENT = 2


class SilenceWatch:
    def __init__(self, threshold: float, period: float, now: float) -> None:
        self.threshold = threshold
        #: Often enough that a live interchange answers well within ``threshold``; never busier than 5/s.
        self.ping_every = max(0.2, min(period, threshold / 4))
        self.last_heard = now
        self.next_ping = now + self.ping_every

    def heard(self, now: float) -> None:
        self.last_heard = now

    def suspend(self, now: float) -> None:
        """Nothing is expected now: silence so far does not count."""
        self.last_heard = now

    def silent_for(self, now: float) -> float:
        return now - self.last_heard

    def due(self, now: float) -> Due:
        """What to do at ``now``. After ``SILENT`` the clock restarts, so it is reported once per threshold."""
        if now - self.last_heard > self.threshold:
            self.last_heard = now
            return Due.SILENT
        if now >= self.next_ping:
            self.next_ping = now + self.ping_every
            return Due.PING
        return Due.NOTHING
