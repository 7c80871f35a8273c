"""Providers: turn blocks into jobs on a resource (the local machine here; Slurm and PBS Pro later)."""

from htex_ref.providers.base import TERMINAL_STATES, ExecutionProvider, JobState, JobStatus
from htex_ref.providers.local import LocalProvider

__all__ = ["TERMINAL_STATES", "ExecutionProvider", "JobState", "JobStatus", "LocalProvider"]
