"""htex_ref: a reference pilot-job executor for Python on HPC clusters (Parsl HTEx compatible).

    from htex_ref import HighThroughputExecutor

    with HighThroughputExecutor(max_workers_per_node=2) as ex:
        print(ex.submit(pow, 2, 10).result())

Names are imported on first use, so the interchange, worker-pool and worker processes (which import
submodules of this package) do not pay for importing the executor: it keeps their start-up short.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from htex_ref.version import PROTOCOL_VERSION, __version__

_LAZY = {
    "AppFuture": "htex_ref.apps",
    "BashExitFailure": "htex_ref.apps",
    "DependencyError": "htex_ref.apps",
    "JoinError": "htex_ref.apps",
    "NoConfigLoaded": "htex_ref.apps",
    "bash_app": "htex_ref.apps",
    "join_app": "htex_ref.apps",
    "python_app": "htex_ref.apps",
    "Config": "htex_ref.config",
    "Session": "htex_ref.config",
    "clear": "htex_ref.config",
    "load": "htex_ref.config",
    "local_config": "htex_ref.config",
    "noop_error_handler": "htex_ref.block_errors",
    "simple_error_handler": "htex_ref.block_errors",
    "windowed_error_handler": "htex_ref.block_errors",
    "BlockIdManagerSelector": "htex_ref.core.selectors",
    "RandomManagerSelector": "htex_ref.core.selectors",
    "BadStateException": "htex_ref.errors",
    "CommandTimeout": "htex_ref.errors",
    "DeserializationError": "htex_ref.errors",
    "ExecutorShutdown": "htex_ref.errors",
    "InterchangeError": "htex_ref.errors",
    "InvalidResourceSpecification": "htex_ref.errors",
    "ManagerLost": "htex_ref.errors",
    "NoBlocks": "htex_ref.errors",
    "RemoteError": "htex_ref.errors",
    "SerializationError": "htex_ref.errors",
    "PayloadTooLarge": "htex_ref.errors",
    "VersionMismatch": "htex_ref.errors",
    "WorkerLost": "htex_ref.errors",
    "CrashLimitExceeded": "htex_ref.errors",
    "TaskMemoryExceeded": "htex_ref.errors",
    "TaskTimeout": "htex_ref.errors",
    "ExecutionProviderException": "htex_ref.errors",
    "SchedulerCommandTimeout": "htex_ref.errors",
    "SubmitException": "htex_ref.errors",
    "HighThroughputExecutor": "htex_ref.executor",
    "HtexFuture": "htex_ref.executor",
    "MPIExecutor": "htex_ref.mpi_executor",
    "Launcher": "htex_ref.launchers",
    "SimpleLauncher": "htex_ref.launchers",
    "SingleNodeLauncher": "htex_ref.launchers",
    "AprunLauncher": "htex_ref.launchers",
    "GnuParallelLauncher": "htex_ref.launchers",
    "JsrunLauncher": "htex_ref.launchers",
    "MpiExecLauncher": "htex_ref.launchers",
    "MpiRunLauncher": "htex_ref.launchers",
    "SrunLauncher": "htex_ref.launchers",
    "SrunMPILauncher": "htex_ref.launchers",
    "WrappedLauncher": "htex_ref.launchers",
    "ExecutionProvider": "htex_ref.providers",
    "JobState": "htex_ref.providers",
    "JobStatus": "htex_ref.providers",
    "LocalProvider": "htex_ref.providers",
    "ClusterProvider": "htex_ref.providers",
    "PBSProProvider": "htex_ref.providers",
    "SlurmProvider": "htex_ref.providers",
    "TorqueProvider": "htex_ref.providers",
    "CondorProvider": "htex_ref.providers",
    "KubernetesProvider": "htex_ref.providers",
    "GridEngineProvider": "htex_ref.providers",
}

if TYPE_CHECKING:
    from htex_ref.apps import (
        AppFuture,
        BashExitFailure,
        DependencyError,
        JoinError,
        NoConfigLoaded,
        bash_app,
        join_app,
        python_app,
    )
    from htex_ref.block_errors import noop_error_handler, simple_error_handler, windowed_error_handler
    from htex_ref.config import Config, Session, clear, load, local_config
    from htex_ref.core.selectors import BlockIdManagerSelector, RandomManagerSelector
    from htex_ref.errors import (
        BadStateException,
        CommandTimeout,
        CrashLimitExceeded,
        DeserializationError,
        ExecutionProviderException,
        ExecutorShutdown,
        InterchangeError,
        InvalidResourceSpecification,
        ManagerLost,
        PayloadTooLarge,
        RemoteError,
        SchedulerCommandTimeout,
        SerializationError,
        SubmitException,
        TaskMemoryExceeded,
        TaskTimeout,
        VersionMismatch,
        WorkerLost,
    )
    from htex_ref.executor import HighThroughputExecutor, HtexFuture
    from htex_ref.launchers import (
        AprunLauncher,
        GnuParallelLauncher,
        JsrunLauncher,
        Launcher,
        MpiExecLauncher,
        MpiRunLauncher,
        SimpleLauncher,
        SingleNodeLauncher,
        SrunLauncher,
        SrunMPILauncher,
        WrappedLauncher,
    )
    from htex_ref.mpi_executor import MPIExecutor
    from htex_ref.providers import (
        ClusterProvider,
        CondorProvider,
        ExecutionProvider,
        GridEngineProvider,
        JobState,
        JobStatus,
        KubernetesProvider,
        LocalProvider,
        PBSProProvider,
        SlurmProvider,
        TorqueProvider,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'htex_ref' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "PROTOCOL_VERSION",
    "AppFuture",
    "AprunLauncher",
    "BadStateException",
    "BashExitFailure",
    "BlockIdManagerSelector",
    "ClusterProvider",
    "CommandTimeout",
    "CondorProvider",
    "Config",
    "CrashLimitExceeded",
    "DependencyError",
    "DeserializationError",
    "ExecutionProvider",
    "ExecutionProviderException",
    "ExecutorShutdown",
    "GnuParallelLauncher",
    "GridEngineProvider",
    "HighThroughputExecutor",
    "HtexFuture",
    "InterchangeError",
    "InvalidResourceSpecification",
    "JobState",
    "JobStatus",
    "JoinError",
    "JsrunLauncher",
    "KubernetesProvider",
    "Launcher",
    "LocalProvider",
    "MPIExecutor",
    "ManagerLost",
    "MpiExecLauncher",
    "MpiRunLauncher",
    "NoConfigLoaded",
    "PBSProProvider",
    "PayloadTooLarge",
    "RandomManagerSelector",
    "RemoteError",
    "SchedulerCommandTimeout",
    "SerializationError",
    "Session",
    "SimpleLauncher",
    "SingleNodeLauncher",
    "SlurmProvider",
    "SrunLauncher",
    "SrunMPILauncher",
    "SubmitException",
    "TaskMemoryExceeded",
    "TaskTimeout",
    "TorqueProvider",
    "VersionMismatch",
    "WorkerLost",
    "WrappedLauncher",
    "__version__",
    "bash_app",
    "clear",
    "join_app",
    "load",
    "local_config",
    "noop_error_handler",
    "python_app",
    "simple_error_handler",
    "windowed_error_handler",
]
