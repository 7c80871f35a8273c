"""MPI mode's decisions as pure code: what a task asks for, which nodes it gets, in which order tasks
start, and what its launcher prefix says.

In MPI mode one worker pool runs on the first node of a block and knows every node of the block. A
task whose ``resource_specification`` has MPI keys asks for ``num_nodes`` nodes with ``ranks_per_node``
ranks on each; the pool's ``MpiScheduler`` gives it a set of nodes, the worker that runs it exports
``PARSL_MPI_PREFIX`` (``srun``/``mpiexec``/``aprun`` with those nodes) for that task only, and the nodes
come back when the task ends, fails, or its worker dies. Tasks without MPI keys run as usual, on the
pool's node, and take no nodes.

Nodes are given whole by default (Parsl's behaviour: disjoint node sets). With ``share=True`` a node is
counted in slots (its CPUs) and tasks whose ranks fit share it: ``ranks_per_node`` slots on each of its
nodes, best fit first, so that whole nodes stay free for large tasks.

The order tasks start in (``MpiPolicy``):

- ``backfill`` (default): lowest priority value first, then arrival order. A task that does not fit
  yet may be passed by later tasks that do, but only ``max_bypass`` times; after that it holds a
  reservation and nothing behind it starts until it has started. Nodes are used while a large task
  waits, and a large task waits behind at most ``max_bypass`` smaller ones, so none starves (tasks
  end, so the nodes it needs come free).
- ``fifo``: the same order, no bypass at all: simple and fair, but nodes idle while the head waits.
- ``smallest_first``: fewest nodes first, unbounded bypass: Parsl's order. Small tasks finish soonest,
  but a steady stream of them starves a large task; it is here to be compared in simcluster.

Nothing here reads the environment, runs ``scontrol`` or opens a file: the worker pool does that and
hands the results to the parsers at the end of this module.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from htex_ref.errors import InvalidResourceSpecification

#: The launchers a task's prefix can be written for.
MPI_LAUNCHERS = ("srun", "aprun", "mpiexec")
#: Resource-specification keys of an MPI task.
MPI_SPEC_KEYS = frozenset({"num_nodes", "ranks_per_node", "num_ranks", "launcher_options"})
#: The variables a running MPI task gets (and that are removed after it).
MPI_ENV_NAMES = ("PARSL_MPI_PREFIX", "PARSL_SRUN_PREFIX", "PARSL_APRUN_PREFIX", "PARSL_MPIEXEC_PREFIX",
                 "PARSL_MPI_NODELIST", "PARSL_NUM_NODES", "PARSL_RANKS_PER_NODE", "PARSL_NUM_RANKS")


@dataclass(frozen=True, slots=True)
class MpiRequest:
    """What one MPI task asks for."""

    num_nodes: int
    ranks_per_node: int
    launcher_options: str = ""

    @property
    def num_ranks(self) -> int:
        return self.num_nodes * self.ranks_per_node

    def as_spec(self) -> dict[str, Any]:
        """The checked request as a resource specification (what travels to the pool)."""
        return {"num_nodes": self.num_nodes, "ranks_per_node": self.ranks_per_node,
                "launcher_options": self.launcher_options}


def _positive_int(spec: Mapping[str, Any], key: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    # Parsl fills num_ranks/ranks_per_node in as strings ("15"); a whole number written either way is fine.
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidResourceSpecification({key}, f"resource_specification[{key!r}] must be a whole number >= 1, "
                                                  f"got {spec.get(key)!r}")
    return value


def parse_mpi_request(spec: Mapping[str, Any], *, nodes_per_block: float | None = None) -> MpiRequest | None:
    """The MPI part of a resource specification, checked; None when it has no MPI key.

    ``num_nodes`` defaults to 1; ``ranks_per_node`` to ``num_ranks / num_nodes`` (which must divide) or
    to 1; a ``num_ranks`` given with both others must equal their product. ``nodes_per_block``, when
    known, bounds ``num_nodes``. Every error names the key.
    """
    if not MPI_SPEC_KEYS & spec.keys():
        return None
    nodes = _positive_int(spec, "num_nodes")
    rpn = _positive_int(spec, "ranks_per_node")
    ranks = _positive_int(spec, "num_ranks")
    if nodes is None:
        nodes = 1
    if ranks is not None:
        if rpn is None:
            if ranks % nodes:
                raise InvalidResourceSpecification(
                    {"num_ranks"}, f"num_ranks={ranks} does not divide evenly over num_nodes={nodes}; "
                                   "give ranks_per_node instead")
            rpn = ranks // nodes
        elif ranks != nodes * rpn:
            raise InvalidResourceSpecification(
                {"num_ranks"}, f"num_ranks={ranks} is not num_nodes * ranks_per_node = {nodes} * {rpn}")
    if rpn is None:
        rpn = 1
    if nodes_per_block is not None and nodes > nodes_per_block:
        raise InvalidResourceSpecification(
            {"num_nodes"}, f"num_nodes={nodes} is more than a block has ({nodes_per_block:g} node"
                           f"{'s' if nodes_per_block != 1 else ''}: the provider's nodes_per_block, or mpi_nodes); "
                           "no block could ever run this task")
    options = spec.get("launcher_options", "")
    if options is None:
        options = ""
    if not isinstance(options, str):
        raise InvalidResourceSpecification({"launcher_options"},
                                           f"launcher_options must be a str, got {type(options).__name__}")
    return MpiRequest(nodes, rpn, options.strip())


# -------------------------------------------------------------------------------------- prefixes


def compose_prefixes(launcher: str, nodes: Sequence[str], request: MpiRequest) -> dict[str, str]:
    """The variables a task placed on ``nodes`` runs with; ``PARSL_MPI_PREFIX`` is ``launcher``'s."""
    if launcher not in MPI_LAUNCHERS:
        raise ValueError(f"mpi_launcher must be one of {MPI_LAUNCHERS}, got {launcher!r}")
    hosts = ",".join(nodes)
    r, p, n, opts = request.num_ranks, request.ranks_per_node, len(nodes), request.launcher_options
    prefixes = {
        "srun": f"srun --ntasks {r} --ntasks-per-node {p} --nodelist {hosts} --nodes {n}",
        "aprun": f"aprun -n {r} -N {p} -node-list {hosts}",
        "mpiexec": f"mpiexec -n {r} -ppn {p} -hosts {hosts}",
    }
    if opts:
        prefixes = {k: f"{v} {opts}" for k, v in prefixes.items()}
    return {
        "PARSL_MPI_PREFIX": prefixes[launcher],
        "PARSL_SRUN_PREFIX": prefixes["srun"],
        "PARSL_APRUN_PREFIX": prefixes["aprun"],
        "PARSL_MPIEXEC_PREFIX": prefixes["mpiexec"],
        "PARSL_MPI_NODELIST": hosts,
        "PARSL_NUM_NODES": str(n),
        "PARSL_RANKS_PER_NODE": str(p),
        "PARSL_NUM_RANKS": str(r),
    }


# ---------------------------------------------------------------------------------- scheduling


@dataclass(frozen=True, slots=True)
class MpiPolicy:
    """The order MPI tasks start in (see the module docstring)."""

    name: str
    #: "arrival": priority, then arrival. "smallest": priority, then fewest nodes, then arrival.
    order: str = "arrival"
    #: How many later tasks may start ahead of a task that does not fit; None: no bound.
    max_bypass: int | None = 8


MPI_POLICIES = {
    "backfill": MpiPolicy("backfill", "arrival", 8),
    "fifo": MpiPolicy("fifo", "arrival", 0),
    "smallest_first": MpiPolicy("smallest_first", "smallest", None),
}


def mpi_policy(name: str) -> MpiPolicy:
    try:
        return MPI_POLICIES[name]
    except KeyError:
        raise ValueError(f"mpi_policy must be one of {sorted(MPI_POLICIES)}, got {name!r}") from None


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    #: CPUs (rank slots) on the node: only counted when nodes are shared.
    slots: int = 1


@dataclass(slots=True)
class _Waiting:
    key: tuple[float, float, int]
    task: Any  # anything with ``task_id`` and ``request`` (an MpiRequest or None)
    bypassed: int = 0

    def __lt__(self, other: _Waiting) -> bool:
        return self.key < other.key


@dataclass(slots=True)
class _Usage:
    free: list[int]
    held: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # task id -> [(node index, slots)]


class MpiScheduler:
    """Waiting tasks and the block's nodes: ``pop_next`` starts the next task the policy allows.

    Has the queue interface the manager core uses (``count``, ``append``, ``extend``, ``appendleft``,
    ``clear``, iteration in start order), so the core holds either this or its plain queue.
    """

    def __init__(self, nodes: Sequence[Node], *, share: bool = False, policy: MpiPolicy | None = None) -> None:
        if not nodes:
            raise ValueError("MPI mode needs at least one node")
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node list names a node twice: {names}")
        if any(n.slots < 1 for n in nodes):
            raise ValueError(f"every node needs at least one slot: {nodes}")
        self.nodes = tuple(nodes)
        self.share = share
        self.policy = policy or MPI_POLICIES["backfill"]
        self._usage = _Usage([n.slots for n in nodes])
        self._waiting: list[_Waiting] = []
        self._seq = itertools.count()
        self._front = itertools.count(-1, -1)
        #: Tasks queued (read on every manager call, as LocalQueue's).
        self.count = 0

    # queue interface

    def _key(self, task: Any, seq: int) -> tuple[float, float, int]:
        request: MpiRequest | None = task.request
        size = 0.0 if request is None else float(request.num_nodes)
        return (task.priority, size if self.policy.order == "smallest" else 0.0, seq)

    def append(self, task: Any) -> None:
        bisect.insort(self._waiting, _Waiting(self._key(task, next(self._seq)), task))
        self.count += 1

    def extend(self, tasks: Iterable[Any]) -> None:
        for task in tasks:
            self.append(task)

    def appendleft(self, task: Any) -> None:
        """Put a task back in front of its priority (one a dead worker held but never started)."""
        bisect.insort(self._waiting, _Waiting(self._key(task, next(self._front)), task))
        self.count += 1

    def clear(self) -> None:
        self._waiting.clear()
        self.count = 0

    def remove(self, task_ids: set[int] | frozenset[int]) -> list[Any]:
        """Take the waiting tasks whose ids are in ``task_ids`` out of the queue; returns them."""
        gone = [w.task for w in self._waiting if w.task.task_id in task_ids]
        if gone:
            self._waiting = [w for w in self._waiting if w.task.task_id not in task_ids]
            self.count -= len(gone)
        return gone

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Any]:
        return (w.task for w in self._waiting)

    # nodes

    @property
    def free_slots(self) -> list[int]:
        return list(self._usage.free)

    def free_nodes(self) -> list[str]:
        """Nodes no task holds any part of."""
        return [n.name for n, f in zip(self.nodes, self._usage.free, strict=True) if f == n.slots]

    def holding(self, task_id: int) -> list[str]:
        return [self.nodes[i].name for i, _ in self._usage.held.get(task_id, [])]

    def unsatisfiable(self, request: MpiRequest) -> str | None:
        """Why no state of this block's nodes could ever run ``request``; None when one could."""
        if request.num_nodes > len(self.nodes):
            return (f"num_nodes={request.num_nodes} but this block has {len(self.nodes)} node"
                    f"{'s' if len(self.nodes) != 1 else ''} ({','.join(n.name for n in self.nodes)})")
        if self.share:
            fitting = sum(1 for n in self.nodes if n.slots >= request.ranks_per_node)
            if fitting < request.num_nodes:
                return (f"ranks_per_node={request.ranks_per_node} fits on {fitting} of this block's nodes "
                        f"(slots per node: {','.join(f'{n.name}:{n.slots}' for n in self.nodes)}) "
                        f"but num_nodes={request.num_nodes}")
        return None

    def _choose(self, request: MpiRequest) -> list[tuple[int, int]] | None:
        free = self._usage.free
        if not self.share:
            whole = [i for i, n in enumerate(self.nodes) if free[i] == n.slots]
            if len(whole) < request.num_nodes:
                return None
            return [(i, self.nodes[i].slots) for i in whole[:request.num_nodes]]
        need = request.ranks_per_node
        # Best fit: the fullest nodes that still have room, so whole nodes stay free for large tasks.
        fits = sorted((free[i], i) for i in range(len(free)) if free[i] >= need)
        if len(fits) < request.num_nodes:
            return None
        return sorted((i, need) for _, i in fits[:request.num_nodes])

    def fits_now(self, request: MpiRequest | None) -> bool:
        return request is None or self._choose(request) is not None

    def pop_next(self) -> tuple[Any, list[str] | None] | None:
        """Start the next task the policy allows: (task, its nodes or None), or None when none may start."""
        limit = self.policy.max_bypass
        blocked: list[_Waiting] = []
        for index, waiting in enumerate(self._waiting):
            request: MpiRequest | None = waiting.task.request
            placement = None if request is None else self._choose(request)
            if request is not None and placement is None:
                if limit is not None and waiting.bypassed >= limit:
                    return None  # it holds the reservation: nothing behind it starts
                blocked.append(waiting)
                continue
            for b in blocked:
                b.bypassed += 1
            del self._waiting[index]
            self.count -= 1
            if placement is None:
                return waiting.task, None
            for i, slots in placement:
                self._usage.free[i] -= slots
            self._usage.held[waiting.task.task_id] = placement
            return waiting.task, [self.nodes[i].name for i, _ in placement]
        return None

    def release(self, task_id: int) -> list[str]:
        """Give back the nodes ``task_id`` holds (none: nothing happens); returns their names."""
        placement = self._usage.held.pop(task_id, None)
        if placement is None:
            return []
        for i, slots in placement:
            self._usage.free[i] += slots
        return [self.nodes[i].name for i, _ in placement]

    def reserved(self) -> Any | None:
        """The waiting task that holds the reservation now, if any."""
        limit = self.policy.max_bypass
        if limit is None:
            return None
        for waiting in self._waiting:
            if not self.fits_now(waiting.task.request) and waiting.bypassed >= limit:
                return waiting.task
        return None


# ------------------------------------------------------------------------------ node discovery


_SLURM_CPUS = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def expand_slurm_cpus(value: str) -> list[int]:
    """``SLURM_JOB_CPUS_PER_NODE`` ("4(x2),2") as one count per node ([4, 4, 2])."""
    out: list[int] = []
    for part in value.split(","):
        m = _SLURM_CPUS.match(part.strip())
        if not m:
            raise ValueError(f"cannot read SLURM_JOB_CPUS_PER_NODE={value!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def nodes_from_hostnames(names: Iterable[str], cpus: Sequence[int] | None, default_slots: int) -> list[Node]:
    """Nodes from ``scontrol show hostnames`` output (one name a line) and Slurm's CPU counts."""
    hosts = [n.strip() for n in names if n.strip()]
    if cpus is not None and len(cpus) != len(hosts):
        cpus = None  # the counts do not line up with the names: use the default for every node
    return [Node(h, cpus[i] if cpus is not None else default_slots) for i, h in enumerate(hosts)]


def nodes_from_nodefile(text: str, default_slots: int) -> list[Node]:
    """Nodes from a PBS node file: one line per MPI process slot, so a name may repeat; the order of
    first appearance is kept. A node listed once counts ``default_slots`` (PBS Pro writes one line per
    chunk unless ``mpiprocs`` is set)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        name = line.strip()
        if name:
            counts[name] = counts.get(name, 0) + 1
    return [Node(name, c if c > 1 else default_slots) for name, c in counts.items()]


def nodes_from_list(entries: Iterable[str], default_slots: int) -> list[Node]:
    """An explicit list: "host" or "host:slots" entries."""
    nodes: list[Node] = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        name, sep, slots = entry.partition(":")
        if sep and not slots.isdigit():
            raise ValueError(f"node {entry!r}: the slots after ':' must be a whole number")
        nodes.append(Node(name, int(slots) if sep else default_slots))
    return nodes


def check_mpi_nodes(value: Any) -> list[str] | None:
    """Validate an ``mpi_nodes`` setting: None, or a non-empty list of "host" / "host:slots" strings."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"mpi_nodes must be None or a non-empty list of host names, got {value!r}")
    for entry in value:
        if not isinstance(entry, str) or not entry.strip() or "," in entry or " " in entry.strip():
            raise ValueError(f"mpi_nodes entries are 'host' or 'host:slots' strings, got {entry!r}")
    nodes_from_list(value, 1)  # the slots part
    if len({e.partition(":")[0] for e in value}) != len(value):
        raise ValueError(f"mpi_nodes names a host twice: {value!r}")
    return [e.strip() for e in value]


__all__ = [
    "MPI_ENV_NAMES", "MPI_LAUNCHERS", "MPI_POLICIES", "MPI_SPEC_KEYS", "MpiPolicy", "MpiRequest",
    "MpiScheduler", "Node", "check_mpi_nodes", "compose_prefixes", "expand_slurm_cpus", "mpi_policy",
    "nodes_from_hostnames", "nodes_from_list", "nodes_from_nodefile", "parse_mpi_request",
]
