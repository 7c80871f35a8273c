"""The provider interface: how the executor turns blocks into jobs, and the job states it sees.

A provider submits a shell command as a batch job (``submit``), reports the state of jobs (``status``)
and cancels them (``cancel``). Rendering scripts and parsing scheduler output are kept as pure
functions in each provider so they can be table-tested; only a small runner touches processes.

Job states and statuses are plain data owned by ``htex_ref.core.jobs`` (re-exported here); reading a
job's output files, which a status only names, is done here (``read_output``, ``output_summary``).

The checks of the settings every provider has (label, launcher, worker_init, cmd_timeout, cores and
memory per node, the block shape) live here too, in ``ExecutionProvider._configure`` and the small
``check_*`` helpers, so that every provider refuses a bad value with the same message naming it.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from pathlib import Path

from htex_ref.core import jobs
from htex_ref.core.jobs import TERMINAL_STATES, JobState
from htex_ref.errors import ConfigurationError
from htex_ref.launchers import Launcher

__all__ = [
    "TERMINAL_STATES",
    "ExecutionProvider",
    "JobState",
    "JobStatus",
    "check_number",
    "check_optional_amount",
    "check_optional_count",
    "output_summary",
    "read_output",
    "summarize",
]

SUMMARY_LIMIT = 2048


def summarize(text: str | None) -> str | None:
    """Head and tail of a long output, so an error message stays readable."""
    if text is None or len(text) <= SUMMARY_LIMIT:
        return text
    half = SUMMARY_LIMIT // 2
    return text[:half] + "\n...\n" + text[-half:]


def read_output(path: str | None) -> str | None:
    """The text of a job's output file (``JobStatus.stdout_path``/``stderr_path``), or None."""
    if path is None:
        return None
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def output_summary(path: str | None) -> str | None:
    """Head and tail of a job's output file, or None when there is none."""
    return summarize(read_output(path))


class JobStatus(jobs.JobStatus):
    """A job's status as providers report it and the executor hands it out: ``htex_ref.core.jobs.JobStatus``
    (plain data, which block control uses) plus Parsl's readers of the job's output files."""

    @classmethod
    def of(cls, status: jobs.JobStatus) -> JobStatus:
        """``status`` as this class (itself when it already is)."""
        if isinstance(status, JobStatus):
            return status
        return cls(status.state, status.message, status.exit_code, status.stdout_path, status.stderr_path)

    @property
    def stdout(self) -> str | None:
        return read_output(self.stdout_path)

    @property
    def stderr(self) -> str | None:
        return read_output(self.stderr_path)

    @property
    def stdout_summary(self) -> str | None:
        return output_summary(self.stdout_path)

    @property
    def stderr_summary(self) -> str | None:
        return output_summary(self.stderr_path)


# ---------------------------------------------------------------------------------------- checks


def _finite(value: object) -> float | None:
    """``value`` as a float when it is a real number (not a bool) with a finite value, else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError):
        return None
    return number if math.isfinite(number) else None


def check_number(owner: str, name: str, value: object, *, zero_ok: bool = False, unit: str = "") -> float:
    """``value`` as a float if it is a finite number > 0 (>= 0 with ``zero_ok``); ConfigurationError naming
    ``owner.name`` otherwise (nan and inf included: a time-out of inf seconds is a hang)."""
    number = _finite(value)
    if number is None or number < 0 or (number == 0 and not zero_ok):
        what = f"a finite number{f' of {unit}' if unit else ''} {'>= 0' if zero_ok else '> 0'}"
        raise ConfigurationError(f"{owner}.{name} must be {what}, got {value!r}")
    return number


def check_optional_count(owner: str, name: str, value: object) -> int | None:
    """None, or an int >= 1 (not a bool)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{owner}.{name} must be None or an int >= 1, got {value!r}")
    return value


def check_optional_amount(owner: str, name: str, value: object, unit: str) -> float | None:
    """None, or a finite number of ``unit`` > 0, kept as given (so that ``repr`` shows what the user wrote)."""
    if value is None:
        return None
    number = _finite(value)
    if number is None or number <= 0:
        raise ConfigurationError(f"{owner}.{name} must be None or a finite number of {unit} > 0, got {value!r}")
    return value if isinstance(value, int) else number


# -------------------------------------------------------------------------------------- provider


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
    #: Seconds a provider command may take before it is killed.
    cmd_timeout: float = 30.0
    #: Cores / memory (GB) per node when the provider knows them; used for scaling arithmetic.
    cores_per_node: int | None = None
    mem_per_node: float | None = None
    #: Where submit scripts and job output go; the executor sets it to ``{run_dir}/submit_scripts``.
    script_dir: str | None = None
    #: Seconds each block may run before the batch system ends it; None where there is no such limit.
    walltime_seconds: float | None = None
    #: Every block runs on this host, so the loopback address reaches its worker pools.
    same_host: bool = False

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

    def _configure(
        self,
        *,
        label: object,
        launcher: object,
        worker_init: object,
        cmd_timeout: object,
        nodes_per_block: int,
        init_blocks: int,
        min_blocks: int,
        max_blocks: int,
        parallelism: float,
        cores_per_node: object = None,
        mem_per_node: object = None,
    ) -> None:
        """Check and set the settings every provider has, then the block shape; subclasses call it from
        ``__init__``. Raises ``ConfigurationError`` (or ``TypeError`` for a launcher) naming the parameter."""
        owner = type(self).__name__
        if not isinstance(label, str) or not label:
            raise ConfigurationError(f"{owner}.label must be a non-empty string, got {label!r}")
        if not isinstance(launcher, Launcher):
            raise TypeError(f"{owner}.launcher must be an htex_ref Launcher, got {type(launcher).__name__}")
        if not isinstance(worker_init, str):
            raise ConfigurationError(f"{owner}.worker_init must be a string of shell lines, got "
                                     f"{type(worker_init).__name__} {worker_init!r}")
        self.label = label
        self.launcher = launcher
        self.worker_init = worker_init
        self.cmd_timeout = check_number(owner, "cmd_timeout", cmd_timeout, unit="seconds")
        self.cores_per_node = check_optional_count(owner, "cores_per_node", cores_per_node)
        self.mem_per_node = check_optional_amount(owner, "mem_per_node", mem_per_node, "GB")
        self.nodes_per_block = nodes_per_block
        self.init_blocks = init_blocks
        self.min_blocks = min_blocks
        self.max_blocks = max_blocks
        self.parallelism = parallelism
        self.check_block_shape()

    def check_block_shape(self) -> None:
        """Raise ConfigurationError (a ValueError) naming the parameter if the block settings cannot work."""
        owner = type(self).__name__
        for name in ("init_blocks", "min_blocks", "max_blocks", "nodes_per_block"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigurationError(f"{owner}.{name} must be a non-negative int, got {value!r}")
        if self.nodes_per_block < 1:
            raise ConfigurationError(f"{owner}.nodes_per_block must be at least 1, got {self.nodes_per_block}")
        if self.min_blocks > self.max_blocks:
            raise ConfigurationError(
                f"{owner}: min_blocks ({self.min_blocks}) is greater than max_blocks ({self.max_blocks})")
        if self.init_blocks > self.max_blocks:
            # The scaling strategy never goes above max_blocks, so the extra initial blocks would silently
            # never start.
            raise ConfigurationError(
                f"{owner}: init_blocks ({self.init_blocks}) is greater than max_blocks ({self.max_blocks}); "
                f"raise max_blocks or lower init_blocks")
        number = _finite(self.parallelism)
        if number is None or not 0 <= number <= 1:
            raise ConfigurationError(f"{owner}.parallelism must be a number between 0 and 1 (not a bool), "
                                     f"got {self.parallelism!r}")
