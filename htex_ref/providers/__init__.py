"""Providers: turn blocks into jobs on a resource (the local machine, Slurm, PBS Pro, Grid Engine, Torque, HTCondor) or
into pods (Kubernetes)."""

from htex_ref.providers.base import TERMINAL_STATES, ExecutionProvider, JobState, JobStatus
from htex_ref.providers.cluster import ClusterProvider, CommandResult, merge_status, run_command
from htex_ref.providers.condor import CondorProvider
from htex_ref.providers.gridengine import GridEngineProvider
from htex_ref.providers.kubernetes import KubernetesProvider
from htex_ref.providers.local import LocalProvider
from htex_ref.providers.pbspro import PBSProProvider
from htex_ref.providers.slurm import SlurmProvider
from htex_ref.providers.torque import TorqueProvider

__all__ = [
    "TERMINAL_STATES",
    "ClusterProvider",
    "CommandResult",
    "CondorProvider",
    "ExecutionProvider",
    "GridEngineProvider",
    "JobState",
    "JobStatus",
    "KubernetesProvider",
    "LocalProvider",
    "PBSProProvider",
    "SlurmProvider",
    "TorqueProvider",
    "merge_status",
    "run_command",
]
