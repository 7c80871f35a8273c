"""Retries of tasks lost to the infrastructure, as one pure rule: attempts in, a decision out.

A task whose worker or worker pool died (``WORKER_LOST``, ``MANAGER_LOST``) did not fail by itself, so it
may run again, up to ``max_retries`` more times. Tasks that raised, ran past their time limit, went over
their memory limit, were refused or were cancelled are never retried: running them again would end the
same way. The crash limit (HyperQueue's idea): a task whose worker died on ``crash_limit`` of its attempts
is most likely what kills them, so it fails with that said instead of taking down more workers.

The executor's ``TaskTable`` applies the rule to real results and simcluster to simulated ones.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from htex_ref.protocol import Outcome

#: Outcomes that say the infrastructure failed the task, not the task itself.
SYSTEM_FAILURES = frozenset({Outcome.WORKER_LOST, Outcome.MANAGER_LOST})


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of a task that ended with its worker or pool lost."""

    number: int
    outcome: Outcome
    host: str
    #: Which worker ("worker 3") or pool ("manager 1a2b") ran it.
    where: str
    detail: str

    def __str__(self) -> str:
        cause = ("worker lost" if self.outcome is Outcome.WORKER_LOST else
                 "interchange restarted" if self.where == "interchange" else "worker pool lost")
        return f"attempt {self.number}: {cause}, {self.where} on {self.host}: {self.detail}"


class Decision(enum.Enum):
    RETRY = "retry"
    GIVE_UP = "give up"
    #: The task's attempts killed ``crash_limit`` workers: it is the likely cause.
    CRASH_LIMIT = "crash limit"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 0
    crash_limit: int = 2

    @property
    def enabled(self) -> bool:
        return self.max_retries > 0

    def decide(self, attempts: Sequence[Attempt]) -> Decision:
        """What to do after the last of ``attempts`` (every one a system failure) ended."""
        crashes = sum(1 for a in attempts if a.outcome is Outcome.WORKER_LOST)
        if self.crash_limit and crashes >= self.crash_limit and self.max_retries:
            return Decision.CRASH_LIMIT
        if len(attempts) <= self.max_retries:
            return Decision.RETRY
        return Decision.GIVE_UP
