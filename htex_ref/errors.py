"""Exceptions that htex_ref raises or sets on futures.

Every error a user can meet says what failed and where to look. The names follow Parsl where users
catch them by name (``WorkerLost``, ``ManagerLost``, ``BadStateException``, ``SerializationError``,
``InvalidResourceSpecification``, ``VersionMismatch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _attempts_text(attempts: Sequence[Any]) -> str:
    if len(attempts) < 2:
        return ""
    return f" (after {len(attempts)} attempts: " + "; ".join(str(a) for a in attempts) + ")"


class HtexError(Exception):
    """Base class of every htex_ref error."""


class ConfigurationError(HtexError, ValueError):
    """A parameter has a value that cannot work; the message names the parameter."""


class SerializationError(HtexError):
    """A function, its arguments or its result could not be serialized."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(what, reason)
        self.what = what
        self.reason = reason

    def __str__(self) -> str:
        return f"Failed to serialize {self.what}: {self.reason}"


class PayloadTooLarge(SerializationError, ValueError):
    """A task's function and arguments, or its result, serialized to more than ``max_payload_bytes``: refused
    at ``submit`` (nothing is sent), or, for a result, at its worker pool (the task fails with this)."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(what, f"{size} bytes serialized, over max_payload_bytes={limit}; raise the executor's "
                               "max_payload_bytes, or pass the data by reference (a file on a shared file system)")
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what, self.size, self.limit))


class DeserializationError(HtexError):
    """A result or exception came back but could not be deserialized in this process."""


class InvalidResourceSpecification(HtexError, ValueError):
    """A ``resource_specification`` carries keys or values this executor does not support."""

    def __init__(self, invalid_keys: set[str], message: str) -> None:
        super().__init__(invalid_keys, message)
        self.invalid_keys = invalid_keys
        self.message = message

    def __str__(self) -> str:
        return self.message


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised on a worker; set as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class RemoteError(HtexError):
    """Stands in for a remote exception that could not be pickled or unpickled."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


class WorkerLost(HtexError):
    """The worker process running a task died before returning a result. ``attempts`` lists every run
    of the task that ended this way (more than one with ``max_retries_on_system_failure``)."""

    def __init__(self, worker_id: int | str, hostname: str, detail: str = "", attempts: Sequence[Any] = ()) -> None:
        super().__init__(worker_id, hostname, detail)
        self.worker_id = worker_id
        self.hostname = hostname
        self.detail = detail
        self.attempts = tuple(attempts)

    def __str__(self) -> str:
        msg = f"Task failure due to loss of worker {self.worker_id} on host {self.hostname}"
        return (f"{msg}: {self.detail}" if self.detail else msg) + _attempts_text(self.attempts)


class CrashLimitExceeded(WorkerLost):
    """A task's worker died on ``crash_limit`` of its attempts: the task itself is the likely cause, and
    it is not run again (the executor's ``crash_limit``)."""

    def __str__(self) -> str:
        return (f"Task is the likely cause of its workers' deaths: the worker running it died on each of "
                f"{len(self.attempts)} attempts, the crash limit; it is not retried. Last: worker "
                f"{self.worker_id} on host {self.hostname}: {self.detail}" + _attempts_text(self.attempts))


class ManagerLost(HtexError):
    """The worker pool (manager) that held a task went away before returning its result. ``attempts``
    lists every run of the task lost to the infrastructure (see ``WorkerLost``)."""

    def __init__(self, manager_id: str, hostname: str, detail: str = "", attempts: Sequence[Any] = ()) -> None:
        super().__init__(manager_id, hostname, detail)
        self.manager_id = manager_id
        self.hostname = hostname
        self.detail = detail
        self.attempts = tuple(attempts)

    def __str__(self) -> str:
        msg = f"Task failure due to loss of manager {self.manager_id} on host {self.hostname}"
        return (f"{msg}: {self.detail}" if self.detail else msg) + _attempts_text(self.attempts)


class TaskTimeout(HtexError, TimeoutError):
    """A task ran past its ``walltime`` (resource specification or app keyword): its worker was stopped,
    with every process the task started, and replaced."""

    def __init__(self, limit: float, worker_id: int | str, hostname: str, detail: str = "") -> None:
        super().__init__(limit, worker_id, hostname, detail)
        self.limit = limit
        self.worker_id = worker_id
        self.hostname = hostname
        self.detail = detail

    def __str__(self) -> str:
        return (f"Task exceeded its walltime of {self.limit:g} s on worker {self.worker_id} on host "
                f"{self.hostname}" + (f": {self.detail}" if self.detail else ""))


class TaskMemoryExceeded(HtexError):
    """A task went over its worker's memory limit (``enforce_memory``), or the kernel's OOM killer ended
    its worker. ``limit`` and ``peak_rss`` are bytes (None where not known)."""

    def __init__(self, limit: int | None, peak_rss: int | None, worker_id: int | str, hostname: str,
                 detail: str = "") -> None:
        super().__init__(limit, peak_rss, worker_id, hostname, detail)
        self.limit = limit
        self.peak_rss = peak_rss
        self.worker_id = worker_id
        self.hostname = hostname
        self.detail = detail

    def __str__(self) -> str:
        return f"Task exceeded its memory on worker {self.worker_id} on host {self.hostname}: {self.detail}"


class VersionMismatch(HtexError):
    """A worker pool speaks another protocol or runs another Python than the interchange."""

    def __init__(self, manager_info: str, interchange_info: str) -> None:
        super().__init__(manager_info, interchange_info)
        self.manager_info = manager_info
        self.interchange_info = interchange_info

    def __str__(self) -> str:
        return (
            f"Manager version info {self.manager_info} does not match "
            f"interchange version info {self.interchange_info}"
        )


class InterchangeError(HtexError):
    """The interchange process failed to start or died."""


class CommandTimeout(HtexError, TimeoutError):
    """The interchange did not answer a command within its time-out."""


class ExecutorShutdown(HtexError, RuntimeError):
    """The executor was shut down before the task finished, or a submit came after shutdown."""


class BadStateException(HtexError):
    """The executor is in a bad state; every outstanding and later task fails with this."""

    def __init__(self, label: str, reason: BaseException) -> None:
        super().__init__(label, reason)
        self.label = label
        self.reason = reason

    def __str__(self) -> str:
        return f"Executor {self.label} failed due to: {self.reason}"


class NoBlocks(HtexError, RuntimeError):
    """Tasks waited while no block of the executor was running or pending and nothing would start one
    (strategy ``none`` after the last block ended or was scaled in, or ``max_blocks=0``). The executor
    stays usable: start a block (``scale_out``) and submit again."""


class ScalingFailed(HtexError):
    """A provider could not start a block."""


class ExecutionProviderException(HtexError):
    """A provider could not do what was asked of the batch system (submit, query or cancel jobs)."""


class SchedulerCommandTimeout(ExecutionProviderException, TimeoutError):
    """A scheduler command (sbatch, qstat, ...) did not finish within its time-out and was killed."""

    def __init__(self, command_line: str, timeout: float, advice: str = "") -> None:
        super().__init__(command_line, timeout, advice)
        self.command_line = command_line
        self.timeout = timeout
        self.advice = advice

    def __str__(self) -> str:
        msg = (f"Scheduler command `{self.command_line}` did not finish within {self.timeout:g} s and was killed "
               f"(with its process group)")
        return f"{msg}; {self.advice}" if self.advice else msg


class SubmitException(ExecutionProviderException):
    """A provider's submit command failed; carries the command's output."""

    def __init__(
        self,
        job_name: str,
        message: str,
        stdout: str | None = None,
        stderr: str | None = None,
        retcode: int | None = None,
    ) -> None:
        super().__init__(job_name, message)
        self.job_name = job_name
        self.message = message
        self.stdout = stdout
        self.stderr = stderr
        self.retcode = retcode

    def __str__(self) -> str:
        return (
            f"Cannot launch job {self.job_name}: {self.message}; "
            f"retcode={self.retcode}, stdout={self.stdout!r}, stderr={self.stderr!r}"
        )


class ProtocolError(HtexError):
    """A network frame does not decode to a valid message (dropped and logged, never fatal)."""
