"""The provider interface: how the executor turns blocks into jobs, and the job states it sees.

A provider submits a shell command as a batch job (``submit``), reports the state of jobs (``status``)
and cancels them (``cancel``). Rendering scripts and parsing scheduler output are kept as pure
functions in each provider so they can be table-tested; only a small runner touches processes.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from htex_ref.launchers import Launcher


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
    MISSING = 8
    SCALED_IN = 9

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {JobState.CANCELLED, JobState.COMPLETED, JobState.FAILED, JobState.TIMEOUT, JobState.MISSING, JobState.SCALED_IN}
)

SUMMARY_LIMIT = 2048


def summarize(text: str | None) -> str | None:
    """Head and tail of a long output, so an error message stays readable."""
    if text is None or len(text) <= SUMMARY_LIMIT:
        return text
    half = SUMMARY_LIMIT // 2
    return text[:half] + "\n...\n" + text[-half:]


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    message: str | None = None
    exit_code: int | None = None
    stdout_path: str | None = None
    stderr_path: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    @property
    def status_name(self) -> str:
        return self.state.name

    def _read(self, path: str | None) -> str | None:
        if path is None:
            return None
        try:
            return Path(path).read_text(errors="replace")
        except OSError:
            return None

    @property
    def stdout(self) -> str | None:
        return self._read(self.stdout_path)

    @property
    def stderr(self) -> str | None:
        return self._read(self.stderr_path)

    @property
    def stdout_summary(self) -> str | None:
        return summarize(self.stdout)

    @property
    def stderr_summary(self) -> str | None:
        return summarize(self.stderr)


class ExecutionProvider(ABC):
    """Base class of providers. Subclasses set the block-shape attributes in ``__init__``."""

    label: str = "provider"
    init_blocks: int = 1
    min_blocks: int = 0
    max_blocks: int = 1
    nodes_per_block: int = 1
    parallelism: float = 1.0
    launcher: Launcher
    worker_init: str = ""
    #: Cores / memory (GB) per node when the provider knows them; used for scaling arithmetic.
    cores_per_node: int | None = None
    mem_per_node: float | None = None
    #: Where submit scripts and job output go; the executor sets it to ``{run_dir}/submit_scripts``.
    script_dir: str | None = None

    @abstractmethod
    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex_ref.auto") -> str:
        """Submit ``command`` as a job; return its id or raise ``SubmitException``."""

    @abstractmethod
    def status(self, job_ids: list[str]) -> list[JobStatus]:
        """The current status of each job, in the order given."""

    @abstractmethod
    def cancel(self, job_ids: list[str]) -> list[bool]:
        """Cancel jobs; True for each one that is now cancelled or already finished."""

    @property
    def status_polling_interval(self) -> float:
        """Seconds between status refreshes that the executor should use."""
        return 5.0

    def check_block_shape(self) -> None:
        """Raise ValueError naming the parameter if the block settings cannot work."""
        for name in ("init_blocks", "min_blocks", "max_blocks", "nodes_per_block"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{type(self).__name__}.{name} must be a non-negative int, got {value!r}")
        if self.nodes_per_block < 1:
            raise ValueError(f"{type(self).__name__}.nodes_per_block must be at least 1, got {self.nodes_per_block}")
        if self.min_blocks > self.max_blocks:
            raise ValueError(
                f"{type(self).__name__}: min_blocks ({self.min_blocks}) is greater than max_blocks ({self.max_blocks})"
            )
        if not isinstance(self.parallelism, int | float) or not 0 <= self.parallelism <= 1:
            raise ValueError(f"{type(self).__name__}.parallelism must be between 0 and 1, got {self.parallelism!r}")
