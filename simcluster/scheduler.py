"""A simulated batch system on a simpy clock: partitions of whole nodes, FCFS with EASY backfill,
walltime kills and node failures.

Jobs ask for whole nodes of one partition for at most ``walltime`` seconds (the batch system kills them
then: TIMEOUT). Each partition keeps its own queue in submission order and schedules on every change
(a submission reaching the queue, a job ending, a node failing or coming back):

1. start jobs from the head of the queue while enough nodes are free (first come, first served);
2. if the head does not fit, reserve for it: walk the running jobs by their walltime end (what the
   scheduler knows; it does not know their real run time) until enough nodes would be free, which
   gives the head's *shadow time*, and the *extra* nodes free then beyond what the head needs;
3. backfill: start any later job, in queue order, that fits in the free nodes now and either ends
   (by its walltime) before the shadow time or uses only extra nodes (EASY: it cannot delay the head).

Nodes are taken lowest index first. A node that fails ends the job running on it (FAILED, as real
providers report Slurm's NODE_FAIL) and stays down for the partition's ``repair_time``.

Job states use ``htex_ref.providers.base.JobState`` names exactly as real providers report them:
PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT (walltime), FAILED (node failure).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

import simpy

from htex_ref.providers.base import JobState
from simcluster.scenario import Cluster, Partition
from simcluster.workload import rng_for


class Job:
    """One batch job. ``runtime`` inf: it runs until cancelled or killed at its walltime (a pilot block)."""

    __slots__ = (
        "alloc",
        "end",
        "ended",
        "job_id",
        "message",
        "nodes",
        "on_end",
        "on_start",
        "owner",
        "partition",
        "runtime",
        "start",
        "state",
        "submit",
        "walltime",
    )

    def __init__(self, job_id: str, partition: str, nodes: int, runtime: float, walltime: float, submit: float,
                 owner: str) -> None:
        self.job_id = job_id
        self.partition = partition
        self.nodes = nodes
        self.runtime = runtime
        self.walltime = walltime
        self.submit = submit
        self.owner = owner
        self.start = math.nan
        self.end = math.nan
        self.state = JobState.PENDING
        self.message = ""
        self.alloc: list[int] = []
        self.ended = False
        self.on_start: Callable[[Job], None] | None = None
        self.on_end: Callable[[Job], None] | None = None


class _Part:
    __slots__ = ("down", "free", "free_heap", "node_job", "queue", "running", "spec")

    def __init__(self, spec: Partition) -> None:
        self.spec = spec
        self.free = spec.nodes
        self.free_heap = list(range(spec.nodes))
        #: Which job holds each node ("" when free), and which are down.
        self.node_job: list[Job | None] = [None] * spec.nodes
        self.down: set[int] = set()
        self.queue: list[Job] = []
        self.running: dict[str, Job] = {}


class Scheduler:
    """The batch system. ``submit``/``cancel``/``job`` are what a provider calls."""

    def __init__(self, env: simpy.Environment, cluster: Cluster, seed: int) -> None:
        self.env = env
        self.cluster = cluster
        self.parts = {p.name: _Part(p) for p in cluster.partitions}
        self.jobs: dict[str, Job] = {}
        self._ids = 0
        for p in cluster.partitions:
            if p.node_mtbf_hours > 0:
                env.process(self._failures(p, seed))
        #: Node failures so far: (time, partition, node, job id or "").
        self.failures: list[tuple[float, str, int, str]] = []

    # ------------------------------------------------------------------------------ provider API

    def submit(self, partition: str, nodes: int, runtime: float, walltime: float, owner: str,
               on_start: Callable[[Job], None] | None = None, on_end: Callable[[Job], None] | None = None,
               latency: float = 0.0) -> Job:
        """A new job, known (PENDING) at once; it reaches the queue after the cluster's ``schedule_delay``
        plus ``latency`` (the provider's submit latency)."""
        part = self.parts[partition]
        if nodes > part.spec.nodes:
            raise ValueError(f"job asks for {nodes} nodes; partition {partition!r} has {part.spec.nodes}")
        self._ids += 1
        job = Job(str(self._ids), partition, nodes, runtime, walltime, self.env.now, owner)
        job.on_start, job.on_end = on_start, on_end
        self.jobs[job.job_id] = job
        delay = self.cluster.schedule_delay + latency
        if delay > 0:
            self.env.timeout(delay).callbacks.append(lambda _ev: self._enqueue(job))
        else:
            self._enqueue(job)
        return job

    def cancel(self, job_id: str) -> bool:
        job = self.jobs.get(job_id)
        if job is None:
            return False
        if not job.ended:
            self._finish(job, JobState.CANCELLED, "cancelled")
        return True

    def complete(self, job_id: str) -> None:
        """The job's command exited by itself (every worker pool of a block stopped)."""
        job = self.jobs.get(job_id)
        if job is not None and not job.ended and job.state == JobState.RUNNING:
            self._finish(job, JobState.COMPLETED, "the job's command exited")

    # ---------------------------------------------------------------------------------- internals

    def _enqueue(self, job: Job) -> None:
        if job.ended:
            return  # cancelled before the scheduler saw it
        self.parts[job.partition].queue.append(job)
        self._schedule(self.parts[job.partition])

    def _start(self, part: _Part, job: Job) -> None:
        now = self.env.now
        alloc: list[int] = []
        heap = part.free_heap
        while len(alloc) < job.nodes:
            n = heapq.heappop(heap)
            if part.node_job[n] is None and n not in part.down:
                # Taken at once: a node that failed while free and was repaired has two heap entries, and
                # the second must not give this job the same node twice.
                part.node_job[n] = job
                alloc.append(n)
        part.free -= job.nodes
        job.alloc = alloc
        job.start = now
        job.state = JobState.RUNNING
        part.running[job.job_id] = job
        span = min(job.runtime, job.walltime)
        if span < math.inf:
            final = JobState.COMPLETED if job.runtime <= job.walltime else JobState.TIMEOUT

            def ended(_ev: Any, job: Job = job, final: JobState = final) -> None:
                if not job.ended:
                    self._finish(job, final, "walltime reached" if final == JobState.TIMEOUT else "")

            self.env.timeout(span).callbacks.append(ended)
        if job.on_start is not None:
            job.on_start(job)

    def _finish(self, job: Job, state: JobState, message: str, schedule: bool = True) -> None:
        job.ended = True
        job.state = state
        job.message = message
        job.end = self.env.now
        part = self.parts[job.partition]
        if job.job_id in part.running:
            del part.running[job.job_id]
            for n in job.alloc:
                part.node_job[n] = None
                if n not in part.down:
                    part.free += 1
                    heapq.heappush(part.free_heap, n)
        elif job in part.queue:
            part.queue.remove(job)
        if job.on_end is not None:
            job.on_end(job)
        if schedule:
            self._schedule(part)

    def _schedule(self, part: _Part) -> None:
        queue = part.queue
        while queue and queue[0].nodes <= part.free:
            self._start(part, queue.pop(0))
        if not queue or part.free == 0:
            return
        now = self.env.now
        head = queue[0]
        shadow, extra = math.inf, 0
        avail = part.free
        for end, n in sorted((j.start + j.walltime, j.nodes) for j in part.running.values()):
            avail += n
            if avail >= head.nodes:
                shadow, extra = end, avail - head.nodes
                break
        i = 1
        while i < len(queue) and part.free > 0:
            job = queue[i]
            if job.nodes <= part.free:
                if now + job.walltime <= shadow:
                    queue.pop(i)
                    self._start(part, job)
                    continue
                if job.nodes <= extra:
                    extra -= job.nodes
                    queue.pop(i)
                    self._start(part, job)
                    continue
            i += 1

    def _failures(self, spec: Partition, seed: int) -> Any:
        """Node failures as a Poisson process over the partition (each node fails at rate 1/MTBF)."""
        rng = rng_for(seed, f"failures-{spec.name}")
        rate = spec.nodes / (spec.node_mtbf_hours * 3600.0)
        while True:
            yield self.env.timeout(rng.expovariate(rate))
            self.fail_node(spec.name, rng.randrange(spec.nodes))

    def fail_node(self, partition: str, node: int) -> None:
        """Node ``node`` fails now: the job on it ends FAILED; the node is down for ``repair_time``."""
        part = self.parts[partition]
        if node in part.down:
            return
        job = part.node_job[node]
        self.failures.append((self.env.now, partition, node, job.job_id if job else ""))
        part.down.add(node)
        if job is None:
            part.free -= 1  # its stale heap entry is skipped when popped
        else:
            self._finish(job, JobState.FAILED, f"node {partition}-{node} failed", schedule=False)
        self._repair_later(part, node, part.spec.repair_time)
        self._schedule(part)

    def _repair_later(self, part: _Part, node: int, after: float) -> None:
        def repaired(_ev: simpy.Event) -> None:
            self._repair(part, node)

        self.env.timeout(after).callbacks.append(repaired)

    def _repair(self, part: _Part, node: int) -> None:
        part.down.discard(node)
        if part.node_job[node] is None:
            part.free += 1
            heapq.heappush(part.free_heap, node)
        self._schedule(part)
