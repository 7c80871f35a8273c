"""The command that starts a worker pool on a node: its template, the check of a user's template, and
rendering it for one block.

The executor hands the rendered command to its provider, which writes it into the block's job script
behind the launcher (``srun``, ``mpiexec``, ...). Rendering is a pure function of the settings, the block
id and where the interchange listens.
"""

from __future__ import annotations

import re
import shlex
import shutil
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_LAUNCH_CMD = (
    "{worker_pool}{debug} --addresses={addresses} --port={worker_port} --cert-dir={cert_dir} "
    "--block-id={block_id} --cores-per-worker={cores_per_worker} --mem-per-worker={mem_per_worker} "
    "{max_workers_per_node} --prefetch-capacity={prefetch_capacity} "
    "--hb-period={heartbeat_period} --hb-threshold={heartbeat_threshold} --drain-period={drain_period} "
    "--address-probe-timeout={address_probe_timeout} --cpu-affinity={cpu_affinity} --logdir={logdir} "
    "--available-accelerators {accelerators}{walltime_drain}{mpi_options}"
)
#: htex_ref's placeholders, and those of Parsl's launch commands (2026 and 1.x), with Parsl's meanings.
LAUNCH_CMD_FIELDS = frozenset(
    {"worker_pool", "debug", "addresses", "worker_port", "cert_dir", "block_id", "cores_per_worker",
     "mem_per_worker", "max_workers_per_node", "prefetch_capacity", "heartbeat_period", "heartbeat_threshold",
     "drain_period", "address_probe_timeout", "cpu_affinity", "logdir", "accelerators", "python",
     "walltime_drain", "mpi_options",
     # Parsl's own
     "poll_period", "logconf", "address_probe_timeout_string", "enable_mpi_mode", "mpi_launcher", "task_url",
     "result_url", "nodes_per_block"}
)
#: Parsl's worker-pool program; in a launch command it runs htex_ref's pool, which takes its options.
PARSL_POOL_PROGRAM = "process_worker_pool.py"


def check_launch_cmd(launch_cmd: object) -> str | None:
    """A user's ``launch_cmd`` in the form ``render`` takes, or ``ValueError``/``TypeError`` naming it."""
    if launch_cmd is None:
        return None
    if not isinstance(launch_cmd, str) or not launch_cmd.strip():
        raise TypeError(f"launch_cmd must be a non-empty string, got {launch_cmd!r}")
    # Parsl formats its launch command twice, so its users write {{block_id}}; we format once.
    template = launch_cmd.replace("{{block_id}}", "{block_id}")
    # A command written for Parsl names its pool program: htex_ref's pool takes its options (a Parsl pool
    # could not talk to htex_ref's interchange), found on PATH as Parsl's is, inside a container too.
    template = re.sub(rf"(?<![\w./-]){re.escape(PARSL_POOL_PROGRAM)}(?![\w.-])", "htex-worker-pool", template)
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ValueError(f"launch_cmd is not a valid format string: {e}") from None
    unknown = fields - LAUNCH_CMD_FIELDS
    if unknown:
        raise ValueError(f"launch_cmd has unknown placeholders {sorted(unknown)}; "
                         f"accepted: {sorted(LAUNCH_CMD_FIELDS)}")
    return template


def default_worker_pool_command() -> str:
    """The worker-pool entry point of this installation, as a shell word."""
    beside = Path(sys.executable).parent / "htex-worker-pool"
    if beside.exists():
        return shlex.quote(str(beside))
    found = shutil.which("htex-worker-pool")
    if found:
        return shlex.quote(found)
    return f"{shlex.quote(sys.executable)} -m htex_ref.worker_pool"


@dataclass(frozen=True)
class PoolOptions:
    """Everything in a pool's command line except the block id."""

    addresses: str
    worker_port: int
    cert_dir: str | None
    logdir: str
    debug: bool
    cores_per_worker: float
    mem_per_worker: float | None
    max_workers_per_node: int | None
    prefetch_capacity: int | None
    heartbeat_period: float
    heartbeat_threshold: float
    drain_period: float | None
    #: ``(walltime, drain_before_walltime)`` in seconds, or None.
    walltime_drain: tuple[float, float] | None
    address_probe_timeout: float | None
    cpu_affinity: str
    accelerators: tuple[str, ...]
    poll_period: int = 10
    nodes_per_block: int = 1
    #: The pool's MPI options (empty outside MPI mode).
    mpi_options: tuple[str, ...] = ()
    mpi_launcher: str = "mpiexec"


def render(template: str, block_id: str, o: PoolOptions) -> str:
    """The command for one block's pools."""

    def q(value: Any) -> str:
        return shlex.quote(str(value))

    values = {
        "worker_pool": default_worker_pool_command(),
        "python": shlex.quote(sys.executable),
        "debug": " --debug" if o.debug else "",
        "addresses": q(o.addresses),
        "worker_port": o.worker_port,
        "cert_dir": q(o.cert_dir),
        "block_id": q(block_id),
        "cores_per_worker": o.cores_per_worker,
        "mem_per_worker": q(o.mem_per_worker),
        # Parsl's meaning: the whole option, or nothing for no cap.
        "max_workers_per_node": f"--max_workers_per_node={o.max_workers_per_node}" if o.max_workers_per_node else "",
        "prefetch_capacity": o.prefetch_capacity or 0,
        "heartbeat_period": o.heartbeat_period,
        "heartbeat_threshold": o.heartbeat_threshold,
        "drain_period": q(o.drain_period),
        "walltime_drain": "" if o.walltime_drain is None else
        f" --walltime={o.walltime_drain[0]} --drain-before-walltime={o.walltime_drain[1]}",
        "address_probe_timeout": o.address_probe_timeout or 30,
        "cpu_affinity": q(o.cpu_affinity),
        "logdir": q(o.logdir),
        # Parsl's meaning: the names, after the --available-accelerators option the template writes.
        "accelerators": " ".join(q(a) for a in o.accelerators),
        "poll_period": o.poll_period,
        "logconf": "None",
        "address_probe_timeout_string": "" if o.address_probe_timeout is None
        else f"--address_probe_timeout={o.address_probe_timeout}",
        "mpi_options": "".join(f" {q(opt)}" for opt in o.mpi_options),
        # Parsl's meaning: the option turning MPI mode on (here with the rest of htex_ref's MPI options).
        "enable_mpi_mode": " ".join(q(opt) for opt in o.mpi_options),
        "mpi_launcher": q(o.mpi_launcher),
        "task_url": q(f"tcp://{o.addresses.split(',')[0]}:{o.worker_port}"),
        "result_url": q(f"tcp://{o.addresses.split(',')[0]}:{o.worker_port}"),
        "nodes_per_block": o.nodes_per_block,
    }
    return template.format(**values)

