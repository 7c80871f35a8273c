"""LocalProvider: a block is a bash script run in the background on this machine, in its own session.

The script is ``worker_init``, ``export JOBNAME=...`` and the launcher's text. Its stdout and stderr go
to ``{script_dir}/{job_name}.out`` / ``.err`` beside the script, and its exit code to ``.ec``, so the
state of a job survives a restart of the executor. Cancel signals the job's whole process group (the
script, the worker pool and its workers): SIGTERM, then SIGKILL after ``cancel_grace`` seconds. When a
job ends by itself, whatever is left in its group (processes that its tasks started) gets SIGKILL the
first time its status is read, as a batch system ends a job's processes.

With a ``walltime``, a job still running when its walltime is up is ended as a batch system would end
it: SIGTERM to its whole process group at the first status read past the walltime, SIGKILL once
``cancel_grace`` has passed, and the state TIMEOUT. Status reads never wait for the group to exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from htex_ref.errors import SubmitException
from htex_ref.launchers import Launcher, SingleNodeLauncher
from htex_ref.providers.base import ExecutionProvider, JobState, JobStatus, check_number
from htex_ref.providers.cluster import JOB_START_EXPORT, parse_walltime


@dataclass
class _Job:
    proc: subprocess.Popen[bytes]
    script: Path
    #: time.monotonic() when the job started.
    started: float = 0.0
    cancelled: bool = False
    #: time.monotonic() when the walltime's SIGTERM went out; None while within the walltime.
    timed_out_at: float | None = None
    final: JobStatus | None = None


def _session_groups(sid: int) -> set[int]:
    """The process groups of session ``sid`` that have a running member (zombies waiting to be reaped do
    not count). A job's script leads its own session; the pool's workers each lead a group in it."""
    groups: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != b"Z":
            groups.add(int(fields[2]))
    return groups


def _group_running(sid: int) -> bool:
    """Whether any process of the job whose session is ``sid`` still runs."""
    return bool(_session_groups(sid))


def render_script(worker_init: str, job_name: str, launcher_text: str) -> str:
    return f"#!/bin/bash\n{JOB_START_EXPORT}\n{worker_init}\nexport JOBNAME={job_name}\n{launcher_text}\n"


class LocalProvider(ExecutionProvider):
    """Blocks as bash scripts on this machine (see the module docstring for what a job is).

    Parameters
    ----------
    nodes_per_block : int
        Nodes a block stands for; the launcher starts ``tasks_per_node * nodes_per_block`` pools here.
    launcher : Launcher | None
        How the script starts the worker pool; ``None`` gives ``SingleNodeLauncher()``.
    init_blocks : int
        Blocks started with the executor; not more than ``max_blocks``.
    min_blocks : int
        Blocks the scaling strategy keeps at least.
    max_blocks : int
        Blocks the scaling strategy keeps at most.
    worker_init : str
        Shell lines run at the top of each block's script (activate an environment, load modules).
    cmd_timeout : float
        Seconds allowed for a provider command, a finite number > 0 (kept for interface parity; local
        jobs start directly).
    parallelism : float
        Share of waiting tasks that gets slots when scaling (0 to 1); see the scaling guide.
    label : str
        Name used in logs.
    cores_per_node : int | None
        Cores a block may use, for the scaling arithmetic; ``None``: unknown.
    mem_per_node : float | None
        GB of memory a block may use, for the scaling arithmetic; ``None``: unknown.
    cancel_grace : float
        Seconds between SIGTERM and SIGKILL when a job is cancelled or reaches its walltime (0: SIGKILL
        at once).
    walltime : str | None
        ``HH:MM:SS`` (or ``D-HH:MM:SS``) after which a job is ended as a batch system would end it
        (state TIMEOUT); lets walltime behaviour, such as the executor's ``drain_before_walltime``, be
        tried on one machine. ``None``: jobs run until they end or are cancelled.
    """

    same_host = True

    def __init__(
        self,
        nodes_per_block: int = 1,
        launcher: Launcher | None = None,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        worker_init: str = "",
        cmd_timeout: float = 30,
        parallelism: float = 1,
        label: str = "local",
        cores_per_node: int | None = None,
        mem_per_node: float | None = None,
        cancel_grace: float = 2.0,
        walltime: str | None = None,
    ) -> None:
        self._configure(
            label=label, launcher=launcher if launcher is not None else SingleNodeLauncher(),
            worker_init=worker_init, cmd_timeout=cmd_timeout, nodes_per_block=nodes_per_block,
            init_blocks=init_blocks, min_blocks=min_blocks, max_blocks=max_blocks, parallelism=parallelism,
            cores_per_node=cores_per_node, mem_per_node=mem_per_node,
        )
        self.cancel_grace = check_number("LocalProvider", "cancel_grace", cancel_grace, zero_ok=True, unit="seconds")
        self.walltime_seconds = None if walltime is None else parse_walltime(walltime, "LocalProvider.walltime")
        self.walltime = None if walltime is None else walltime.strip()
        self.script_dir: str | None = None
        self._jobs: dict[str, _Job] = {}

    def __repr__(self) -> str:
        return (f"LocalProvider(init_blocks={self.init_blocks}, min_blocks={self.min_blocks}, "
                f"max_blocks={self.max_blocks}, launcher={self.launcher!r})")

    @property
    def status_polling_interval(self) -> float:
        # Checking a local job is a waitpid: cheap enough to notice a dead block within a second.
        return 1.0

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex_ref.auto") -> str:
        script_dir = Path(self.script_dir or ".")
        script_dir.mkdir(parents=True, exist_ok=True)
        script = script_dir / f"{job_name}.sh"
        text = render_script(self.worker_init, job_name, self.launcher(command, tasks_per_node, self.nodes_per_block))
        script.write_text(text)
        out, err, ec = (script.with_suffix(s) for s in (".out", ".err", ".ec"))
        ec.write_text("-\n")
        # A wrapper records the exit code in .ec so status survives this process.
        wrapper = f'bash "{script}" >"{out}" 2>"{err}"; echo $? >"{ec}"'
        try:
            proc = subprocess.Popen(
                ["/bin/bash", "-c", wrapper],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            raise SubmitException(job_name, f"could not start bash for {script}: {e}") from e
        job_id = str(proc.pid)
        self._jobs[job_id] = _Job(proc, script, started=time.monotonic())
        return job_id

    def _status_of(self, job_id: str) -> JobStatus:
        job = self._jobs.get(job_id)
        if job is None:
            return JobStatus(JobState.MISSING, f"job {job_id} is not known to this provider")
        if job.final is not None:
            return job.final
        out, err, ec = (str(job.script.with_suffix(s)) for s in (".out", ".err", ".ec"))
        rc = job.proc.poll()
        if rc is None:
            self._enforce_walltime(job)
            return JobStatus(JobState.RUNNING, stdout_path=out, stderr_path=err)
        self._end_leftovers(job)
        try:
            text = Path(ec).read_text().strip()
            code = int(text) if text != "-" else rc
        except (OSError, ValueError):
            code = rc
        if job.cancelled:
            status = JobStatus(JobState.CANCELLED, "cancelled by the executor", code, out, err)
        elif job.timed_out_at is not None:
            status = JobStatus(JobState.TIMEOUT, f"the job reached its walltime ({self.walltime})", code, out, err)
        elif code == 0:
            status = JobStatus(JobState.COMPLETED, None, 0, out, err)
        elif code < 0 or rc < 0:
            sig = -(code if code < 0 else rc)
            status = JobStatus(JobState.FAILED, f"job was killed by signal {sig}", code, out, err)
        else:
            status = JobStatus(JobState.FAILED, f"job script {job.script} exited with code {code}", code, out, err)
        job.final = status
        return status

    def status(self, job_ids: list[str]) -> list[JobStatus]:
        return [self._status_of(j) for j in job_ids]

    def cancel(self, job_ids: list[str]) -> list[bool]:
        results = []
        live: list[_Job] = []
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is None:
                results.append(False)
                continue
            results.append(True)
            if job.proc.poll() is None:
                job.cancelled = True
                self._signal(job, signal.SIGTERM)
                live.append(job)
            else:
                self._end_leftovers(job)
        # Give the whole group (the worker pool, not only the script) the grace period to exit cleanly.
        deadline = time.monotonic() + self.cancel_grace
        for job in live:
            while time.monotonic() < deadline and _group_running(job.proc.pid):
                time.sleep(0.02)
        for job in live:
            # Anything left in the job's process group (pool, workers) gets SIGKILL.
            self._signal(job, signal.SIGKILL)
            job.proc.wait()
        return results

    def _enforce_walltime(self, job: _Job) -> None:
        """SIGTERM a running job's group once its walltime is up, SIGKILL it ``cancel_grace`` later."""
        if self.walltime_seconds is None or job.cancelled:
            return
        now = time.monotonic()
        if job.timed_out_at is None:
            if now - job.started >= self.walltime_seconds:
                job.timed_out_at = now
                self._signal(job, signal.SIGTERM)
        elif now - job.timed_out_at >= self.cancel_grace:
            self._signal(job, signal.SIGKILL)

    def _end_leftovers(self, job: _Job) -> None:
        """The job has ended: like a batch system at the end of a job, SIGKILL what it left in its
        session (processes its tasks started, say, once its pool was killed or drained)."""
        if _group_running(job.proc.pid):
            self._signal(job, signal.SIGKILL)

    @staticmethod
    def _signal(job: _Job, sig: int) -> None:
        """Signal every process group of the job's session (the script's, and each worker's). A group
        with members keeps its id from being reused, so the signal cannot reach another job."""
        for pgid in _session_groups(job.proc.pid) | {job.proc.pid}:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
