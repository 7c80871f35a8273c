"""``SimProvider``: the ``htex_ref`` provider interface backed by the simulated batch system.

The executor's own block bookkeeping (``htex_ref.core.blocks``) submits, polls and cancels through it
exactly as through ``LocalProvider`` or a Slurm provider: ``submit`` returns a job id, ``status`` reports
PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT or FAILED as real providers do, ``cancel`` ends the job.
A block's job holds ``nodes_per_block`` whole nodes until it is cancelled or killed at its walltime.

What the provider reports can be shaped by a ``ProviderModel`` (a scenario's ``[executor.provider]``), so
that a scenario can stand for any batch system as its provider sees it:

- ``submit_latency``: seconds (drawn per submit, seeded) from ``submit`` to the job reaching the queue; the
  job is known, and reported as queued, from the submit on. The submit itself returns at once: the
  executor's control loop is not held up by it, as it would be by a slow submit command.
- ``queued``, ``running``, ``ended``: what is reported in each stage of a job's life, as steps in time
  from the stage's start (from the submit, from the job's start, from its end): a state each, and a
  message. ``final`` in ``ended`` stands for the job's end state; the default reports each stage's own
  state at once (PENDING, RUNNING, the end state). A Torque-like exiting state is
  ``ended = [{state = "RUNNING", message = "exiting"}, {after = 5, state = "final"}]``; a pod that pulls
  its image first is ``running = [{state = "PENDING", message = "ContainerCreating"}, {after = 20, state
  = "RUNNING"}]`` (the job holds its nodes, the provider still says pending).
- ``final``: end states renamed, as a provider that reports every ended job COMPLETED would
  (``{ TIMEOUT = "COMPLETED", FAILED = "COMPLETED" }``).
"""

from __future__ import annotations

from collections.abc import Callable

from htex_ref.errors import SubmitException
from htex_ref.launchers import SimpleLauncher
from htex_ref.providers.base import ExecutionProvider, JobState, JobStatus
from simcluster.scenario import ProviderModel, StateStep
from simcluster.scheduler import Job, Scheduler
from simcluster.workload import rng_for, sampler


def reported(model: ProviderModel, job: Job, now: float) -> tuple[JobState, str]:
    """The state and message the provider reports for ``job`` at ``now`` under ``model`` (pure)."""
    if job.ended:
        steps, since, default = model.ended, job.end, "final"
    elif job.state is JobState.RUNNING:
        steps, since, default = model.running, job.start, "RUNNING"
    else:
        steps, since, default = model.queued, job.submit, "PENDING"
    step = _current(steps, now - since) or StateStep(0.0, default)
    if step.state == "final":
        renamed = dict(model.final).get(job.state.name)
        return (JobState[renamed] if renamed else job.state), step.message or job.message
    return JobState[step.state], step.message or job.message


def _current(steps: tuple[StateStep, ...], elapsed: float) -> StateStep | None:
    """The last step whose ``after`` has passed (steps are in increasing ``after``)."""
    current = None
    for step in steps:
        if step.after > elapsed:
            break
        current = step
    return current


class SimProvider(ExecutionProvider):
    def __init__(
        self,
        scheduler: Scheduler,
        partition: str,
        nodes_per_block: int = 1,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1.0,
        walltime: float = 3600.0,
        status_polling_interval: float = 5.0,
        label: str = "sim",
        model: ProviderModel | None = None,
        seed: int = 0,
    ) -> None:
        self.scheduler = scheduler
        self.partition = partition
        spec = scheduler.parts[partition].spec
        self.nodes_per_block = nodes_per_block
        self.init_blocks = init_blocks
        self.min_blocks = min_blocks
        self.max_blocks = max_blocks
        self.parallelism = parallelism
        self.walltime = walltime
        self.walltime_seconds = walltime
        self.label = label
        self.launcher = SimpleLauncher()
        self.cores_per_node = spec.cores
        self.mem_per_node = spec.memory_gb
        self.script_dir = "(simulated: no files)"
        self._polling = status_polling_interval
        self._statuses: dict[str, JobStatus] = {}
        #: Called when a block's job starts and ends (the simulated worker pools start and die with it).
        self.on_start: Callable[[Job], None] | None = None
        self.on_end: Callable[[Job], None] | None = None
        #: None: the batch system's states as they are, at once (the fast path).
        self.model = model if model is not None and model != ProviderModel() else None
        latency = (model or ProviderModel()).submit_latency
        self._latency = None if latency.dist == "fixed" and latency.value == 0 else \
            sampler(latency, rng_for(seed, f"submit-latency-{label}"))
        self.check_block_shape()

    @property
    def status_polling_interval(self) -> float:
        return self._polling

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex_ref.auto") -> str:
        try:
            job = self.scheduler.submit(self.partition, self.nodes_per_block, float("inf"), self.walltime,
                                        owner=job_name, on_start=self.on_start, on_end=self.on_end,
                                        latency=next(self._latency) if self._latency is not None else 0.0)
        except ValueError as e:
            raise SubmitException(job_name, str(e)) from None
        return job.job_id

    def status(self, job_ids: list[str]) -> list[JobStatus]:
        out = []
        jobs = self.scheduler.jobs
        known = self._statuses
        for j in job_ids:
            job = jobs.get(j)
            if job is None:
                out.append(JobStatus(JobState.MISSING, f"no job {j}"))
                continue
            # The same (frozen) answer as last time while the job's state holds: the executor asks about
            # every block it ever had at every refresh, and most of them ended long ago.
            st = known.get(j)
            if self.model is None:
                state, message = job.state, job.message or None
            else:
                state, text = reported(self.model, job, self.scheduler.env.now)
                message = text or None
            if st is None or st.state is not state or st.message != message:
                st = known[j] = JobStatus(state, message)
            out.append(st)
        return out

    def cancel(self, job_ids: list[str]) -> list[bool]:
        return [self.scheduler.cancel(j) for j in job_ids]
