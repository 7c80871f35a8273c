"""htex_ref: a reference pilot-job executor for Python on HPC clusters (Parsl HTEx compatible).

    from htex_ref import HighThroughputExecutor

    with HighThroughputExecutor(max_workers_per_node=2) as ex:
        print(ex.submit(pow, 2, 10).result())
"""

from htex_ref.core.selectors import BlockIdManagerSelector, RandomManagerSelector
from htex_ref.errors import (
    BadStateException,
    CommandTimeout,
    DeserializationError,
    ExecutorShutdown,
    InterchangeError,
    InvalidResourceSpecification,
    ManagerLost,
    RemoteError,
    SerializationError,
    VersionMismatch,
    WorkerLost,
)
from htex_ref.executor import HighThroughputExecutor, HtexFuture
from htex_ref.launchers import Launcher, SimpleLauncher, SingleNodeLauncher
from htex_ref.providers import ExecutionProvider, JobState, JobStatus, LocalProvider
from htex_ref.version import PROTOCOL_VERSION, __version__

__all__ = [
    "PROTOCOL_VERSION",
    "BadStateException",
    "BlockIdManagerSelector",
    "CommandTimeout",
    "DeserializationError",
    "ExecutionProvider",
    "ExecutorShutdown",
    "HighThroughputExecutor",
    "HtexFuture",
    "InterchangeError",
    "InvalidResourceSpecification",
    "JobState",
    "JobStatus",
    "Launcher",
    "LocalProvider",
    "ManagerLost",
    "RandomManagerSelector",
    "RemoteError",
    "SerializationError",
    "SimpleLauncher",
    "SingleNodeLauncher",
    "VersionMismatch",
    "WorkerLost",
    "__version__",
]
