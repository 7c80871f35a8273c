"""What a running test cluster tells its tests: how to reach it and how to run htex_ref on it.

A cluster script (``python -m clusters.local_slurm up --info FILE``) writes this as JSON; the cluster tests
find the file through the ``HTEX_CLUSTER_INFO`` environment variable. Nothing here starts or stops anything.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

INFO_ENV = "HTEX_CLUSTER_INFO"


@dataclass
class ClusterInfo:
    #: "local" (network namespaces) or "compose" (Docker Compose).
    name: str
    #: Environment for Slurm commands run on this (the submit) host, e.g. SLURM_CONF and the munge socket.
    env: dict[str, str]
    #: Address of this host that every compute node can reach: the interchange binds and advertises it.
    address: str
    #: Compute node host names, as the nodes report them (socket.gethostname() in a task).
    nodes: list[str]
    cores_per_node: int
    partition: str
    #: A directory with the same path on this host and on every node: run_dir and scripts go under it.
    shared_dir: str
    #: Command that starts htex_ref's worker pool on a node; None means the executor's default (the
    #: submit host's interpreter, which works when nodes share this host's filesystem).
    worker_pool_cmd: str | None = None
    #: Whether sacct works (slurmdbd running); otherwise the provider must use squeue.
    accounting: bool = False
    #: Shell lines a job runs before the pool starts (activate an environment, etc.).
    worker_init: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def write(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ClusterInfo:
        return cls(**json.loads(Path(path).read_text()))

    @classmethod
    def from_env(cls) -> ClusterInfo | None:
        path = os.environ.get(INFO_ENV)
        return cls.read(path) if path else None
