"""Scenarios: what cluster, what other users' load, what workload, and which executor configurations to try.

A scenario is a TOML file (read with ``tomllib``) or the same structure as dicts; ``load_scenario``
checks every field and raises ``ScenarioError`` naming the field (``executor[1].max_blocks``) and what
it accepts. See ``docs/simcluster.md`` for the whole format and ``examples/scenarios/`` for examples.

Times are seconds. The workload's clock starts at 0 when the executor starts; background load may start
earlier (``background.warmup``), so the cluster is already busy when the executor submits its first block.
``[[faults]]`` (``Fault``) are interchange restarts and network partitions at set times, carried out by
``simcluster.pilot``.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from htex_ref.core.mpi import MPI_POLICIES, MpiScheduler, Node, parse_mpi_request
from htex_ref.core.selectors import SELECTORS
from htex_ref.core.strategy import STRATEGY_NAMES
from htex_ref.errors import InvalidResourceSpecification


class ScenarioError(ValueError):
    """A scenario field is missing, of the wrong type, or out of range; the message names it."""


@dataclass(frozen=True)
class Partition:
    name: str = "compute"
    nodes: int = 4
    cores: int = 32
    memory_gb: float = 128.0
    gpus: int = 0
    #: Mean time between failures of one node, in hours; 0: nodes never fail.
    node_mtbf_hours: float = 0.0
    #: Seconds a failed node stays down.
    repair_time: float = 3600.0


@dataclass(frozen=True)
class NodeFailure:
    """A scripted failure: node ``node`` of ``partition`` fails at ``time`` (seconds from the executor's start)."""

    time: float
    node: int
    partition: str = "compute"


@dataclass(frozen=True)
class Cluster:
    partitions: tuple[Partition, ...] = (Partition(),)
    #: Seconds between a job's submission and the scheduler first considering it (its scheduling cycle).
    schedule_delay: float = 0.0
    failures: tuple[NodeFailure, ...] = ()

    def partition(self, name: str) -> Partition:
        for p in self.partitions:
            if p.name == name:
                return p
        raise ScenarioError(f"no partition named {name!r}; the cluster has {[p.name for p in self.partitions]}")


@dataclass(frozen=True)
class Distribution:
    """A seeded random duration: ``fixed`` (value), ``uniform`` (low, high), ``exponential`` (mean),
    ``lognormal`` (mean, sigma: the mean of the distribution itself), ``pareto`` (minimum, alpha: a long tail)."""

    dist: str = "fixed"
    value: float = 1.0
    low: float = 0.0
    high: float = 1.0
    mean: float = 1.0
    sigma: float = 0.5
    minimum: float = 1.0
    alpha: float = 2.0
    #: Cap on any sample (0: none), to keep a heavy tail finite.
    cap: float = 0.0


@dataclass(frozen=True)
class Choice:
    """A whole number drawn per task: one of ``values``, with ``weights`` (all equal when empty). In TOML
    an int (that number for every task) or ``{ values = [1, 2, 8], weights = [6, 3, 1] }``."""

    values: tuple[int, ...] = (1,)
    weights: tuple[float, ...] = ()


@dataclass(frozen=True)
class Background:
    """Other users' jobs: ``none``, ``synthetic`` (Poisson arrivals sized to keep ``load`` of the nodes
    busy on average) or ``swf`` (a Standard Workload Format trace)."""

    kind: str = "none"
    partition: str = ""
    load: float = 0.7
    runtime: Distribution = Distribution("lognormal", mean=3600.0, sigma=1.0, cap=86400.0)
    #: Job sizes in nodes, drawn uniformly from powers of two up to this.
    max_nodes: int = 8
    #: Requested walltime = runtime x this (users overestimate), rounded up to a minute.
    walltime_factor: float = 2.0
    #: Seconds of background load simulated before the executor starts.
    warmup: float = 6 * 3600.0
    path: str = ""
    #: Trace seconds skipped (the trace's time ``offset`` is the executor's start, less ``warmup``).
    offset: float = 0.0
    #: Multiply trace arrival times by this (below 1 packs the trace tighter: more load).
    time_scale: float = 1.0
    #: Jobs given one by one, in addition to ``kind``: submit (seconds from the executor's start; may be
    #: negative, within the warm-up), nodes, runtime, walltime.
    jobs: tuple[tuple[float, int, float, float], ...] = ()


@dataclass(frozen=True)
class Phase:
    """One part of the workload. ``bag``: ``tasks`` at ``start``; ``arrivals``: ``tasks`` in a Poisson
    stream of ``rate`` per second; ``bursts``: ``bursts`` of ``tasks`` each, ``interval`` apart; ``waves``:
    ``waves`` of ``tasks`` each, a wave submitted when the whole previous wave is done (a dependency
    barrier). Durations from ``duration``; ``priority`` as in a resource specification (lower first)."""

    kind: str = "bag"
    tasks: int = 100
    start: float = 0.0
    rate: float = 1.0
    bursts: int = 1
    interval: float = 600.0
    waves: int = 1
    duration: Distribution = Distribution("fixed", value=10.0)
    priority: float = math.inf
    #: Fraction of the phase's tasks (drawn with the seed) that kill their worker process instead of
    #: returning, as a task calling ``os._exit`` would: each fails with ``WorkerLost`` and the worker is
    #: replaced.
    crash_fraction: float = 0.0
    #: MPI tasks: the nodes each task asks for (``resource_specification={"num_nodes": n}``), drawn per
    #: task; None (and ``ranks_per_node`` None): not MPI tasks.
    num_nodes: Choice | None = None
    #: MPI tasks: ranks on each of its nodes (what counts against a node's cores with ``mpi_share_nodes``).
    ranks_per_node: Choice | None = None
    #: Each task's time limit in seconds (``resource_specification={"walltime": s}``); None: none. A task
    #: drawn longer is stopped at the limit, fails with ``TaskTimeout``, and its worker is replaced.
    walltime: float | None = None
    #: ``trace``: the tasks themselves, (submit offset from ``start``, duration, priority) each, as a
    #: recorded run gives them (``htex-ref sim --replay``; in TOML, ``path`` to a CSV file with columns
    #: submit, duration and optionally priority).
    trace: tuple[tuple[float, float, float], ...] = ()

    @property
    def mpi(self) -> bool:
        """Whether the phase's tasks carry MPI keys (the executor must be in MPI mode)."""
        return self.num_nodes is not None or self.ranks_per_node is not None


#: What a provider model may report: ``htex_ref.providers.base.JobState`` names.
LIVE_STATES = ("PENDING", "RUNNING", "HELD", "UNKNOWN")
END_STATES = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "MISSING")
#: The end states the simulated batch system gives a job (what ``ProviderModel.final`` may rename).
SCHEDULER_END_STATES = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT")


@dataclass(frozen=True)
class StateStep:
    """From ``after`` seconds into a stage of a job's life on, the provider reports ``state`` (a job state
    name, or ``final`` for the job's own end state) with ``message`` (``""``: the batch system's own)."""

    after: float = 0.0
    state: str = "PENDING"
    message: str = ""


@dataclass(frozen=True)
class ProviderModel:
    """How a batch system looks through its provider (``[executor.provider]``; see ``simcluster.provider``):
    seconds from a submit to the job reaching the queue, and the states reported while a job is queued,
    running and after it ended, each a sequence of steps in time; ``final`` renames end states (as a
    provider that reports every ended job COMPLETED would)."""

    submit_latency: Distribution = Distribution("fixed", value=0.0)
    queued: tuple[StateStep, ...] = (StateStep(0.0, "PENDING"),)
    running: tuple[StateStep, ...] = (StateStep(0.0, "RUNNING"),)
    ended: tuple[StateStep, ...] = (StateStep(0.0, "final"),)
    final: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ExecutorConfig:
    label: str = "htex"
    partition: str = ""
    strategy: str = "htex_auto_scale"
    nodes_per_block: int = 1
    init_blocks: int = 0
    min_blocks: int = 0
    max_blocks: int = 4
    parallelism: float = 1.0
    walltime: float = 3600.0
    max_workers_per_node: int = 0
    cores_per_worker: float = 1.0
    mem_per_worker: float = 0.0
    #: GPUs per node handed one per worker (available_accelerators); 0: none.
    accelerators: int = 0
    max_idletime: float = 120.0
    strategy_period: float = 5.0
    #: As the Slurm provider's default (Parsl's cluster providers use 60).
    status_polling_interval: float = 10.0
    heartbeat_threshold: float = 120.0
    heartbeat_period: float = 30.0
    #: Tasks a manager may hold beyond its workers; None: automatic prefetch (``"auto"`` in TOML).
    prefetch_capacity: int | None = None
    #: Seconds from a block's job starting to its managers registering (the calibration parameter).
    job_start_latency: float = 10.0
    block_registration_timeout: float | None = 120.0
    block_error_handler: str = "simple"
    manager_selector: str = "random"
    #: As the executor's: seconds after registration at which a pool drains; None: never.
    drain_period: float | None = None
    #: As the executor's: seconds before its job's walltime at which a pool drains; None: never.
    drain_before_walltime: float | None = None
    #: Seconds the executor stays up after its last task, scaling in as its strategy says, before it shuts
    #: down (sooner once no block is live); 0: it shuts down at once, cancelling its blocks.
    linger: float = 0.0
    #: MPI mode (``MPIExecutor``, or ``enable_mpi_mode=True``): one pool per block, on its first node, with
    #: ``max_workers_per_block`` workers, places MPI tasks on the block's nodes (``htex_ref.core.mpi``).
    enable_mpi_mode: bool = False
    max_workers_per_block: int = 1
    #: The order MPI tasks start in: ``backfill``, ``fifo`` or ``smallest_first``.
    mpi_policy: str = "backfill"
    #: Tasks whose ranks fit share a node, counted in its cores (False: whole nodes, Parsl's behaviour).
    mpi_share_nodes: bool = False
    #: As the executor's: runs of a task lost with its worker or pool that are retried, and the worker
    #: deaths after which a task is the likely culprit (0: no limit).
    max_retries_on_system_failure: int = 0
    crash_limit: int = 2
    #: As the executor's: seconds from a stopped task's SIGTERM to its SIGKILL (the simulated worker dies
    #: at the SIGTERM).
    task_kill_grace: float = 2.0
    #: How the provider reports its jobs (submit latency, state sequences); the default reports the batch
    #: system's states as they are, at once.
    provider: ProviderModel = ProviderModel()
    #: As the executor's: seconds of silence from the interchange after which a pool exits; None: twice
    #: ``heartbeat_threshold``.
    reconnect_timeout: float | None = None


FAULT_KINDS = ("interchange_restart", "partition")


@dataclass(frozen=True)
class Fault:
    """A fault at ``at`` seconds from the executor's start (``[[faults]]``; see ``simcluster.pilot``).

    ``interchange_restart``: the interchange dies and a new one starts ``down`` seconds later, as
    ``restart_interchange`` does. ``partition``: for ``duration`` seconds no message passes between the
    interchange and the pools of block ``block``, or of the first ``nodes`` nodes (in node order) that
    run a pool then; what was sent meanwhile is delivered, in order, when it heals."""

    kind: str
    at: float
    down: float = 0.0
    duration: float = 0.0
    block: str | None = None
    nodes: int = 0


@dataclass(frozen=True)
class Scenario:
    name: str = "scenario"
    seed: int = 1
    #: Simulated seconds after the executor starts at which the run stops, finished or not; 0: 30 days.
    max_time: float = 0.0
    cluster: Cluster = Cluster()
    background: Background = Background()
    workload: tuple[Phase, ...] = (Phase(),)
    executors: tuple[ExecutorConfig, ...] = (ExecutorConfig(),)
    #: Where the file came from (for relative paths such as an SWF trace).
    base_dir: str = "."
    #: Seconds between timeline samples (0: every wake of the executor's control thread).
    sample_every: float = 0.0
    #: Interchange restarts and network partitions, in time order (every configuration meets the same).
    faults: tuple[Fault, ...] = ()

    def with_seed(self, seed: int) -> Scenario:
        return replace(self, seed=seed)

    @property
    def total_tasks(self) -> int:
        return sum(phase_task_count(p) for p in self.workload)


def phase_task_count(p: Phase) -> int:
    if p.kind == "bursts":
        return p.tasks * p.bursts
    if p.kind == "waves":
        return p.tasks * p.waves
    return p.tasks


# ---------------------------------------------------------------------------------------------- parsing


class _Fields:
    """Reads one table, naming ``where`` in every error, and refuses keys nobody asked for."""

    def __init__(self, table: Any, where: str) -> None:
        if not isinstance(table, Mapping):
            raise ScenarioError(f"{where} must be a table, got {type(table).__name__}")
        self.table = dict(table)
        self.where = where
        self.used: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        return self.table.get(key, default)

    def number(self, key: str, default: float, *, low: float = 0.0, strict: bool = False) -> float:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < low \
                or (strict and v <= low):
            rel = ">" if strict else ">="
            raise ScenarioError(f"{self._name(key)} must be a finite number {rel} {low:g}, got {v!r}")
        return float(v)

    def maybe_number(self, key: str, default: float | None, *, low: float = 0.0) -> float | None:
        v = self.get(key, default)
        if v is None or v == "none":
            return None
        return self.number(key, default or 0.0, low=low, strict=True)

    def integer(self, key: str, default: int, *, low: int = 0) -> int:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ScenarioError(f"{self._name(key)} must be an int >= {low}, got {v!r}")
        return v

    def boolean(self, key: str, default: bool) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise ScenarioError(f"{self._name(key)} must be true or false, got {v!r}")
        return v

    def text(self, key: str, default: str, choices: tuple[str, ...] | None = None) -> str:
        v = self.get(key, default)
        if not isinstance(v, str):
            raise ScenarioError(f"{self._name(key)} must be a string, got {v!r}")
        if choices is not None and v not in choices:
            raise ScenarioError(f"{self._name(key)} must be one of {list(choices)}, got {v!r}")
        return v

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise ScenarioError(f"{self.where or 'scenario'} has unknown keys {unknown}")


DISTRIBUTIONS = ("fixed", "uniform", "exponential", "lognormal", "pareto")


def _distribution(raw: Any, where: str, default: Distribution) -> Distribution:
    if raw is None:
        return default
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        raw = {"dist": "fixed", "value": raw}
    f = _Fields(raw, where)
    d = Distribution(
        dist=f.text("dist", default.dist, DISTRIBUTIONS),
        value=f.number("value", default.value),
        low=f.number("low", default.low),
        high=f.number("high", default.high),
        mean=f.number("mean", default.mean),
        sigma=f.number("sigma", default.sigma),
        minimum=f.number("minimum", default.minimum),
        alpha=f.number("alpha", default.alpha, strict=True),
        cap=f.number("cap", default.cap),
    )
    f.done()
    if d.dist == "uniform" and d.high < d.low:
        raise ScenarioError(f"{where}: high ({d.high}) is below low ({d.low})")
    return d


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _choice(raw: Any, where: str) -> Choice | None:
    """``num_nodes`` / ``ranks_per_node``: absent, an int >= 1, or ``{values = [...], weights = [...]}``."""
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        f = _Fields(raw, where)
        values = f.get("values", None)
        weights = f.get("weights", [])
        f.done()
        if not isinstance(values, list) or not values or not all(_whole(v) for v in values):
            raise ScenarioError(f"{where}.values must be a non-empty array of ints >= 1, got {values!r}")
        if not isinstance(weights, list) or (weights and len(weights) != len(values)) \
                or not all(isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                           for w in weights) or (weights and not sum(weights) > 0):
            raise ScenarioError(f"{where}.weights must be an array of {len(values)} numbers >= 0, not all 0 "
                                f"(one per value; leave it out for equal weights), got {weights!r}")
        return Choice(tuple(values), tuple(float(w) for w in weights))
    if not _whole(raw):
        raise ScenarioError(f"{where} must be an int >= 1 or a table {{ values = [...], weights = [...] }}, "
                            f"got {raw!r}")
    return Choice((raw,))


def _partition(raw: Any, where: str) -> Partition:
    f = _Fields(raw, where)
    p = Partition(
        name=f.text("name", "compute"),
        nodes=f.integer("nodes", 4, low=1),
        cores=f.integer("cores", 32, low=1),
        memory_gb=f.number("memory_gb", 128.0),
        gpus=f.integer("gpus", 0),
        node_mtbf_hours=f.number("node_mtbf_hours", 0.0),
        repair_time=f.number("repair_time", 3600.0),
    )
    f.done()
    return p


def _executor(raw: Any, where: str, cluster: Cluster) -> ExecutorConfig:
    f = _Fields(raw, where)
    prefetch = f.get("prefetch_capacity", "auto")
    if prefetch == "auto" or prefetch is None:
        prefetch_capacity = None
    elif isinstance(prefetch, int) and not isinstance(prefetch, bool) and prefetch >= 0:
        prefetch_capacity = prefetch
    else:
        raise ScenarioError(f"{where}.prefetch_capacity must be \"auto\" or an int >= 0, got {prefetch!r}")
    cfg = ExecutorConfig(
        label=f.text("label", where.replace("[", "").replace("]", "")),
        partition=f.text("partition", cluster.partitions[0].name, tuple(p.name for p in cluster.partitions)),
        strategy=f.text("strategy", "htex_auto_scale", STRATEGY_NAMES),
        nodes_per_block=f.integer("nodes_per_block", 1, low=1),
        init_blocks=f.integer("init_blocks", 0),
        min_blocks=f.integer("min_blocks", 0),
        max_blocks=f.integer("max_blocks", 4),
        parallelism=f.number("parallelism", 1.0),
        walltime=f.number("walltime", 3600.0, strict=True),
        max_workers_per_node=f.integer("max_workers_per_node", 0),
        cores_per_worker=f.number("cores_per_worker", 1.0, strict=True),
        mem_per_worker=f.number("mem_per_worker", 0.0),
        accelerators=f.integer("accelerators", 0),
        max_idletime=f.number("max_idletime", 120.0),
        strategy_period=f.number("strategy_period", 5.0, strict=True),
        status_polling_interval=f.number("status_polling_interval", 10.0, strict=True),
        heartbeat_threshold=f.number("heartbeat_threshold", 120.0, strict=True),
        heartbeat_period=f.number("heartbeat_period", 30.0, strict=True),
        prefetch_capacity=prefetch_capacity,
        job_start_latency=f.number("job_start_latency", 10.0),
        block_registration_timeout=f.maybe_number("block_registration_timeout", 120.0),
        block_error_handler=f.text("block_error_handler", "simple", ("simple", "windowed", "none")),
        manager_selector=f.text("manager_selector", "random", tuple(SELECTORS)),
        linger=f.number("linger", 0.0),
        drain_period=f.maybe_number("drain_period", None),
        drain_before_walltime=f.maybe_number("drain_before_walltime", None),
        enable_mpi_mode=f.boolean("enable_mpi_mode", False),
        max_workers_per_block=f.integer("max_workers_per_block", 1, low=1),
        mpi_policy=f.text("mpi_policy", "backfill", tuple(MPI_POLICIES)),
        mpi_share_nodes=f.boolean("mpi_share_nodes", False),
        max_retries_on_system_failure=f.integer("max_retries_on_system_failure", 0),
        crash_limit=f.integer("crash_limit", 2),
        task_kill_grace=f.number("task_kill_grace", 2.0),
        provider=_provider_model(f.get("provider", None), f"{where}.provider"),
        reconnect_timeout=f.maybe_number("reconnect_timeout", None),
    )
    f.done()
    table = f.table
    if cfg.enable_mpi_mode:
        # As MPIExecutor: the block's one pool runs max_workers_per_block workers, whatever the node.
        sizing = [k for k in ("max_workers_per_node", "cores_per_worker", "mem_per_worker", "accelerators")
                  if k in table]
        if sizing:
            raise ScenarioError(f"{where}.{sizing[0]}: in MPI mode the block's one pool runs "
                                "max_workers_per_block workers (as MPIExecutor, which does not take "
                                f"{', '.join(sizing)}); set max_workers_per_block instead")
    else:
        extra = [k for k in ("max_workers_per_block", "mpi_policy", "mpi_share_nodes") if k in table]
        if extra:
            raise ScenarioError(f"{where}.{extra[0]} only means something in MPI mode: set enable_mpi_mode = true "
                                "in this executor table")
    if cfg.parallelism > 1:
        raise ScenarioError(f"{where}.parallelism must be between 0 and 1, got {cfg.parallelism}")
    if cfg.min_blocks > cfg.max_blocks:
        raise ScenarioError(f"{where}: min_blocks ({cfg.min_blocks}) is greater than max_blocks ({cfg.max_blocks})")
    if cfg.heartbeat_period > cfg.heartbeat_threshold:
        raise ScenarioError(f"{where}: heartbeat_period ({cfg.heartbeat_period}) exceeds heartbeat_threshold "
                            f"({cfg.heartbeat_threshold})")
    for name in ("drain_period", "drain_before_walltime"):
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise ScenarioError(f"{where}.{name} must be a number of seconds > 0, got {value}")
    if cfg.drain_before_walltime is not None and cfg.strategy == "none":
        raise ScenarioError(f"{where}.drain_before_walltime needs a strategy other than \"none\" to replace "
                            "the blocks it drains")
    if cfg.drain_before_walltime is not None and cfg.drain_before_walltime >= cfg.walltime:
        raise ScenarioError(f"{where}.drain_before_walltime ({cfg.drain_before_walltime}) must be less than "
                            f"walltime ({cfg.walltime}), or every block would drain as it starts")
    part = cluster.partition(cfg.partition)
    if cfg.nodes_per_block > part.nodes:
        raise ScenarioError(f"{where}.nodes_per_block ({cfg.nodes_per_block}) exceeds the {part.nodes} nodes "
                            f"of partition {part.name!r}")
    if cfg.accelerators > part.gpus:
        raise ScenarioError(f"{where}.accelerators ({cfg.accelerators}) exceeds the {part.gpus} GPUs per node "
                            f"of partition {part.name!r}")
    return cfg


#: The keys each kind of fault takes (besides ``kind`` and ``at``).
_FAULT_KEYS = {"interchange_restart": ("down",), "partition": ("duration", "block", "nodes")}


def _fault(raw: Any, where: str) -> Fault:
    """One ``[[faults]]`` table: ``kind``, ``at``, and ``down`` (a restart) or ``duration`` with ``block`` or
    ``nodes`` (a partition)."""
    f = _Fields(raw, where)
    if "kind" not in f.table:
        raise ScenarioError(f"{where}.kind is required: one of {list(FAULT_KINDS)}")
    kind = f.text("kind", "", FAULT_KINDS)
    if "at" not in f.table:
        raise ScenarioError(f"{where}.at is required: seconds from the executor's start")
    at = f.number("at", 0.0)
    for other, keys in _FAULT_KEYS.items():
        if other != kind:
            for key in keys:
                if key in f.table and key not in _FAULT_KEYS[kind]:
                    raise ScenarioError(f"{where}.{key} only goes with kind = {other!r} (this fault is {kind!r})")
    if kind == "interchange_restart":
        if "down" not in f.table:
            raise ScenarioError(f"{where}.down is required: seconds the interchange is dead before the new one "
                                "starts")
        fault = Fault(kind, at, down=f.number("down", 0.0, strict=True))
    else:
        if "duration" not in f.table:
            raise ScenarioError(f"{where}.duration is required: seconds the partition lasts")
        duration = f.number("duration", 0.0, strict=True)
        if ("block" in f.table) == ("nodes" in f.table):
            raise ScenarioError(f"{where}: a partition needs exactly one of block (a block id, such as \"0\") or "
                                "nodes (a number of nodes)")
        block = None
        nodes = 0
        if "block" in f.table:
            raw_block = f.get("block", None)
            if isinstance(raw_block, int) and not isinstance(raw_block, bool) and raw_block >= 0:
                raw_block = str(raw_block)
            if not isinstance(raw_block, str) or not raw_block:
                raise ScenarioError(f"{where}.block must be a block id (a string such as \"0\"), got {raw_block!r}")
            block = raw_block
        else:
            nodes = f.integer("nodes", 0, low=1)
        fault = Fault(kind, at, duration=duration, block=block, nodes=nodes)
    f.done()
    return fault


def _provider_model(raw: Any, where: str) -> ProviderModel:
    """``[executor.provider]``: ``submit_latency`` (seconds or a distribution), ``queued`` / ``running`` /
    ``ended`` (arrays of ``{ after, state, message }`` in increasing ``after``) and ``final`` (a table
    renaming end states)."""
    default = ProviderModel()
    if raw is None:
        return default
    f = _Fields(raw, where)
    latency = _distribution(f.get("submit_latency", None), f"{where}.submit_latency", default.submit_latency)
    stages: dict[str, tuple[StateStep, ...]] = {}
    for stage, allowed in (("queued", LIVE_STATES), ("running", LIVE_STATES),
                           ("ended", (*LIVE_STATES, *END_STATES, "final"))):
        steps_raw = f.get(stage, None)
        if steps_raw is None:
            stages[stage] = getattr(default, stage)
            continue
        if not isinstance(steps_raw, list) or not steps_raw:
            raise ScenarioError(f"{where}.{stage} must be a non-empty array of {{ after, state, message }} tables")
        steps: list[StateStep] = []
        for i, step_raw in enumerate(steps_raw):
            sf = _Fields(step_raw, f"{where}.{stage}[{i}]")
            step = StateStep(after=sf.number("after", 0.0), state=sf.text("state", "", allowed),
                             message=sf.text("message", ""))
            sf.done()
            if steps and step.after <= steps[-1].after:
                raise ScenarioError(f"{where}.{stage}[{i}].after ({step.after:g}) must be greater than the step "
                                    f"before's ({steps[-1].after:g})")
            steps.append(step)
        stages[stage] = tuple(steps)
    final_raw = f.get("final", {})
    ff = _Fields(final_raw, f"{where}.final")
    final = tuple((name, ff.text(name, name, END_STATES)) for name in SCHEDULER_END_STATES if name in ff.table)
    ff.done()
    f.done()
    return ProviderModel(submit_latency=latency, queued=stages["queued"], running=stages["running"],
                         ended=stages["ended"], final=final)


def _job(raw: Any, where: str) -> tuple[float, int, float, float]:
    f = _Fields(raw, where)
    job = (f.number("submit", 0.0, low=-math.inf), f.integer("nodes", 1, low=1), f.number("runtime", 60.0),
           f.number("walltime", 3600.0, strict=True))
    f.done()
    return job


PHASES = ("bag", "arrivals", "bursts", "waves", "trace")


def read_trace(path: Path) -> tuple[tuple[float, float, float], ...]:
    """A trace CSV: a header naming ``submit`` and ``duration`` (and optionally ``priority``), one task a row."""
    import csv

    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as e:
        raise ScenarioError(f"cannot read the trace {path}: {e}") from None
    out = []
    for i, row in enumerate(rows):
        try:
            submit, duration = float(row["submit"]), float(row["duration"])
            prio = row.get("priority") or "inf"
            priority = math.inf if prio in ("", "none", "inf") else float(prio)
        except (KeyError, ValueError, TypeError) as e:
            raise ScenarioError(f"{path} row {i + 2}: needs numbers in submit and duration ({e})") from None
        if not (math.isfinite(submit) and math.isfinite(duration) and duration >= 0):
            raise ScenarioError(f"{path} row {i + 2}: submit and duration must be finite, duration >= 0")
        out.append((submit, duration, priority))
    return tuple(out)
BACKGROUNDS = ("none", "synthetic", "swf")


def parse_scenario(data: Mapping[str, Any], base_dir: str = ".", name: str = "scenario") -> Scenario:
    """Build a ``Scenario`` from TOML-shaped data; ``ScenarioError`` names any bad field."""
    top = _Fields(data, "")
    cl = _Fields(top.get("cluster", {}), "cluster")
    parts_raw = cl.get("partitions", [{}])
    if not isinstance(parts_raw, list) or not parts_raw:
        raise ScenarioError("cluster.partitions must be a non-empty array of tables")
    partitions = tuple(_partition(p, f"cluster.partitions[{i}]") for i, p in enumerate(parts_raw))
    if len({p.name for p in partitions}) != len(partitions):
        raise ScenarioError("cluster.partitions have duplicate names")
    failures_raw = cl.get("failures", [])
    if not isinstance(failures_raw, list):
        raise ScenarioError("cluster.failures must be an array of tables")
    failures = []
    for i, raw in enumerate(failures_raw):
        f = _Fields(raw, f"cluster.failures[{i}]")
        part_name = f.text("partition", partitions[0].name, tuple(p.name for p in partitions))
        nodes = next(p.nodes for p in partitions if p.name == part_name)
        failure = NodeFailure(time=f.number("time", 0.0, low=-math.inf), node=f.integer("node", 0),
                              partition=part_name)
        f.done()
        if failure.node >= nodes:
            raise ScenarioError(f"cluster.failures[{i}].node must be below {nodes}, got {failure.node}")
        failures.append(failure)
    cluster = Cluster(partitions=partitions, schedule_delay=cl.number("schedule_delay", 0.0),
                      failures=tuple(failures))
    cl.done()

    bg = _Fields(top.get("background", {}), "background")
    background = Background(
        kind=bg.text("kind", "none", BACKGROUNDS),
        partition=bg.text("partition", partitions[0].name, tuple(p.name for p in partitions)),
        load=bg.number("load", 0.7),
        runtime=_distribution(bg.get("runtime", None), "background.runtime", Background.runtime),
        max_nodes=bg.integer("max_nodes", 8, low=1),
        walltime_factor=bg.number("walltime_factor", 2.0, low=1.0),
        warmup=bg.number("warmup", 6 * 3600.0),
        path=bg.text("path", ""),
        offset=bg.number("offset", 0.0),
        time_scale=bg.number("time_scale", 1.0, strict=True),
        jobs=tuple(_job(raw, f"background.jobs[{i}]") for i, raw in enumerate(bg.get("jobs", []))),
    )
    bg.done()
    if background.kind == "swf" and not background.path:
        raise ScenarioError("background.path must name an SWF trace when background.kind is \"swf\"")
    if background.load >= 1.5:
        raise ScenarioError(f"background.load must be below 1.5, got {background.load}")

    phases_raw = top.get("workload", [{}])
    if isinstance(phases_raw, Mapping):
        phases_raw = [phases_raw]
    if not isinstance(phases_raw, list) or not phases_raw:
        raise ScenarioError("workload must be a table or an array of tables")
    phases = []
    for i, raw in enumerate(phases_raw):
        where = f"workload[{i}]"
        f = _Fields(raw, where)
        prio = f.get("priority", None)
        if prio is not None and (isinstance(prio, bool) or not isinstance(prio, int | float)
                                 or not math.isfinite(prio)):
            raise ScenarioError(f"{where}.priority must be a finite number, got {prio!r}")
        phases.append(Phase(
            kind=f.text("kind", "bag", PHASES),
            tasks=f.integer("tasks", 100),
            start=f.number("start", 0.0),
            rate=f.number("rate", 1.0, strict=True),
            bursts=f.integer("bursts", 1, low=1),
            interval=f.number("interval", 600.0),
            waves=f.integer("waves", 1, low=1),
            duration=_distribution(f.get("duration", None), f"{where}.duration", Phase.duration),
            priority=math.inf if prio is None else float(prio),
            crash_fraction=f.number("crash_fraction", 0.0),
            num_nodes=_choice(f.get("num_nodes", None), f"{where}.num_nodes"),
            ranks_per_node=_choice(f.get("ranks_per_node", None), f"{where}.ranks_per_node"),
            walltime=f.maybe_number("walltime", None),
            trace=read_trace(Path(base_dir) / str(f.get("path", ""))) if raw.get("kind") == "trace" else (),
        ))
        if phases[-1].kind == "trace" and not phases[-1].trace:
            raise ScenarioError(f"{where}: a trace phase needs path = a CSV file of tasks (submit, duration)")
        if phases[-1].walltime is not None and not phases[-1].walltime > 0:
            raise ScenarioError(f"{where}.walltime must be a number of seconds > 0, got {phases[-1].walltime}")
        if phases[-1].crash_fraction > 1:
            raise ScenarioError(f"{where}.crash_fraction must be between 0 and 1, got {phases[-1].crash_fraction}")
        f.done()

    execs_raw = top.get("executor", [{}])
    if isinstance(execs_raw, Mapping):
        execs_raw = [execs_raw]
    if not isinstance(execs_raw, list) or not execs_raw:
        raise ScenarioError("executor must be a table or an array of tables")
    executors = tuple(_executor(raw, f"executor[{i}]", cluster) for i, raw in enumerate(execs_raw))
    labels = [e.label for e in executors]
    if len(set(labels)) != len(labels):
        raise ScenarioError(f"executor labels must differ (they name output folders), got {labels}")
    for label in labels:
        if not label or "/" in label or label.startswith("."):
            raise ScenarioError(f"executor label {label!r} cannot name a folder")
    faults_raw = top.get("faults", [])
    if not isinstance(faults_raw, list):
        raise ScenarioError("faults must be an array of tables ([[faults]])")
    faults = tuple(sorted((_fault(raw, f"faults[{i}]") for i, raw in enumerate(faults_raw)), key=lambda x: x.at))
    for i, phase in enumerate(phases):
        if phase.mpi:
            for j, cfg in enumerate(executors):
                _check_mpi_phase(phase, f"workload[{i}]", cfg, f"executor[{j}]", cluster.partition(cfg.partition))

    scenario = Scenario(
        name=top.text("name", name),
        seed=top.integer("seed", 1),
        max_time=top.number("max_time", 0.0),
        cluster=cluster,
        background=background,
        workload=tuple(phases),
        executors=executors,
        base_dir=base_dir,
        sample_every=top.number("sample_every", 0.0),
        faults=faults,
    )
    top.done()
    return scenario


def _check_mpi_phase(phase: Phase, where: str, cfg: ExecutorConfig, ewhere: str, part: Partition) -> None:
    """Refuse, before anything runs, MPI tasks the executor would refuse at submit (no MPI mode, more
    nodes than a block has) or that its pools would refuse on arrival (ranks that fit on too few nodes
    when they are shared): with the real checks, ``parse_mpi_request`` and ``MpiScheduler.unsatisfiable``."""
    key = "num_nodes" if phase.num_nodes is not None else "ranks_per_node"
    if not cfg.enable_mpi_mode:
        raise ScenarioError(f"{where}.{key}: MPI tasks need an executor in MPI mode, and {ewhere} "
                            f"({cfg.label!r}) is not: set enable_mpi_mode = true there (the executor refuses "
                            "MPI keys at submit outside MPI mode)")
    nodes = (phase.num_nodes or Choice()).values
    ranks = (phase.ranks_per_node or Choice()).values
    block = MpiScheduler([Node(f"{part.name}-{k}", part.cores) for k in range(cfg.nodes_per_block)],
                         share=cfg.mpi_share_nodes)
    for n in sorted(set(nodes)):
        for r in sorted(set(ranks)):
            try:
                request = parse_mpi_request({"num_nodes": n, "ranks_per_node": r}, nodes_per_block=cfg.nodes_per_block)
            except InvalidResourceSpecification as e:
                raise ScenarioError(f"{where}.num_nodes: {e} ({ewhere} {cfg.label!r} has nodes_per_block = "
                                    f"{cfg.nodes_per_block}); the executor refuses such a task at submit") from None
            assert request is not None
            why = block.unsatisfiable(request)
            if why is not None:
                raise ScenarioError(f"{where}.ranks_per_node: {why} ({ewhere} {cfg.label!r} shares nodes of "
                                    f"{part.cores} cores); its pools would refuse such a task")


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario TOML file."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{p}: not valid TOML: {e}") from None
    try:
        return parse_scenario(data, base_dir=str(p.parent), name=p.stem)
    except ScenarioError as e:
        raise ScenarioError(f"{p}: {e}") from None
