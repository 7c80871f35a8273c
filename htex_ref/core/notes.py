"""``Note``: a line for the log, as an instruction, so that the cores never touch logging themselves.

A core that has something worth logging (a registration refused, a manager expired, a block that failed
to start) returns a ``Note`` among its instructions; the runtime that drives it writes the note to its
logger. The levels are the ``logging`` module's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40


@dataclass(frozen=True, slots=True)
class Note:
    level: int
    text: str
