"""Providers: turn blocks into jobs on a resource (the local machine, Slurm, PBS Pro)."""

from htex_ref.providers.base import TERMINAL_STATES, ExecutionProvider, JobState, JobStatus
from htex_ref.providers.cluster import ClusterProvider, CommandResult, merge_status, run_command
from htex_ref.providers.gridengine import GridEngineProvider
from htex_ref.providers.local import LocalProvider
from htex_ref.providers.pbspro import PBSProProvider
from htex_ref.providers.slurm import SlurmProvider

__all__ = [
    "TERMINAL_STATES",
    "ClusterProvider",
    "CommandResult",
    "ExecutionProvider",
    "GridEngineProvider",
    "JobState",
    "JobStatus",
    "LocalProvider",
    "PBSProProvider",
    "SlurmProvider",
    "merge_status",
    "run_command",
]
