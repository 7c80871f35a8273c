"""``SimProvider``: the ``htex_ref`` provider interface backed by the simulated batch system.

The executor's own block bookkeeping (``htex_ref.core.blocks``) submits, polls and cancels through it
exactly as through ``LocalProvider`` or a Slurm provider: ``submit`` returns a job id, ``status`` reports
PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT or FAILED as real providers do, ``cancel`` ends the job.
A block's job holds ``nodes_per_block`` whole nodes until it is cancelled or killed at its walltime.
"""

from __future__ import annotations

from collections.abc import Callable

from htex_ref.errors import SubmitException
from htex_ref.launchers import SimpleLauncher
from htex_ref.providers.base import ExecutionProvider, JobState, JobStatus
from simcluster.scheduler import Job, Scheduler


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
        self.check_block_shape()

    @property
    def status_polling_interval(self) -> float:
        return self._polling

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex_ref.auto") -> str:
        try:
            job = self.scheduler.submit(self.partition, self.nodes_per_block, float("inf"), self.walltime,
                                        owner=job_name, on_start=self.on_start, on_end=self.on_end)
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
            message = job.message or None
            if st is None or st.state is not job.state or st.message != message:
                st = known[j] = JobStatus(job.state, message)
            out.append(st)
        return out

    def cancel(self, job_ids: list[str]) -> list[bool]:
        return [self.scheduler.cancel(j) for j in job_ids]
