"""Job states and statuses as plain data: the one definition the cores, the providers and simcluster share.

A provider turns a batch job's state into a ``JobState`` and a ``JobStatus`` (state, message, exit code
and the paths of the job's output files); block control and the scaling strategy read them. A status
only names its output files: reading them is I/O, left to whoever reports a failure
(``htex_ref.block_errors``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class JobState(enum.IntEnum):
    """Job states, numbered as in Parsl so that logs and tools line up."""

    UNKNOWN = 0
    PENDING = 1
    RUNNING = 2
    CANCELLED = 3
    COMPLETED = 4
    FAILED = 5
    TIMEOUT = 6
    HELD = 7
    #: Ended (or timed out) before any worker pool of the block registered; set by block control.
    MISSING = 8
    #: Cancelled by the executor's scaling or a scale-in; set by block control.
    SCALED_IN = 9

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


#: States a job never leaves. The only list of them: every other is derived from this one.
TERMINAL_STATES = frozenset(
    {JobState.CANCELLED, JobState.COMPLETED, JobState.FAILED, JobState.TIMEOUT, JobState.MISSING, JobState.SCALED_IN}
)
#: Their names, for code that carries states as strings (the strategy's snapshot, CSV files).
TERMINAL_NAMES = frozenset(s.name for s in TERMINAL_STATES)
#: States that count as a failed block for the block error rules.
FAILED_STATES = frozenset({JobState.FAILED, JobState.MISSING})


@dataclass(frozen=True)
class JobStatus:
    """One job's state as the provider (or block control) reports it."""

    state: JobState
    message: str | None = None
    exit_code: int | None = None
    #: The job's output files, when the provider knows them (read them with ``htex_ref.block_errors``).
    stdout_path: str | None = None
    stderr_path: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    @property
    def status_name(self) -> str:
        return self.state.name
