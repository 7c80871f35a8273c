"""GridEngineProvider: blocks as (Son of) Grid Engine batch jobs, submitted with ``qsub``.

Pure parts, table-tested on outputs recorded from a real Son of Grid Engine 8.1.9
(``tests/data/providers/gridengine/``): ``render_gridengine_script`` (the submit script with its
``#$`` directives), ``parse_qsub_output`` (the job id of ``qsub -terse`` or of the classic "Your job
42 ("name") has been submitted"), ``parse_qstat_xml`` (``qstat -xml`` into state letters by job id),
``gridengine_state`` (state letters into a ``JobStatus``), ``parse_qacct`` and ``qacct_status`` (how a
finished job ended, from the accounting file).

Status. Live jobs come from one ``qstat -xml`` call (the user's jobs; the ids asked for are picked
out). A job ``qstat`` no longer lists has left the queue: ``qacct -j ID`` says how it ended. The
accounting file is written ``accounting_flush_time`` after a job ends (15 s by default), so a job
neither listed nor in the accounting yet keeps its last state for ``accounting_grace`` seconds; after
that it is MISSING (the base's rule). ``qacct`` answering "job id N not found" is an answer (not in
the accounting yet, or deleted before it ran), not a failed query.

Grid Engine job states are strings of letters (``qstat`` man page): d deleted, E error, h hold,
r running, R restarted, s/S suspended (job/queue), t transferring, T threshold, w waiting, q queued.
They are read in this order: E (error: the job cannot start and stays in the queue) FAILED, and the
provider deletes it so that it does not sit there forever; d (being deleted: its processes are being
killed) RUNNING when it had started, else PENDING; s, S or T (suspended) HELD; h (hold) HELD; r or t
RUNNING; q or w PENDING ("Rq", rescheduled, included); anything else UNKNOWN.

How a finished job ended (``qacct``'s ``failed`` and ``exit_status``): failed 0 and exit 0
COMPLETED; failed 0 and another exit status FAILED with that code (above 128: killed by signal code
- 128); failed 37 (the limit of ``h_rt``, ``h_cpu`` or ``h_vmem`` enforced) TIMEOUT; failed 100
("assumedly after job": ended by a signal) with SIGKILL or SIGTERM CANCELLED, since that is what
``qdel`` does (an administrator's kill reads the same), with another signal FAILED; any other failed
code (Grid Engine could not run the job: output file, shell, directory...) FAILED with its text.
"""

from __future__ import annotations

import logging
import re
import signal
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass

from htex_ref.errors import ExecutionProviderException
from htex_ref.launchers import Launcher, SingleNodeLauncher
from htex_ref.providers.base import JobState, JobStatus, check_number
from htex_ref.providers.cluster import (
    ClusterProvider,
    CommandResult,
    check_directive_lines,
    check_optional_word,
    format_walltime,
    job_script,
)

logger = logging.getLogger(__name__)

#: qacct's ``failed`` codes this provider reads (Grid Engine's sge_jobs.h / qacct man page).
FAILED_LIMIT = 37
FAILED_AFTER_JOB = 100
#: Seconds a job gone from qstat and not yet in the accounting file keeps its last state.
ACCOUNTING_GRACE = 30.0

_TERSE_ID = re.compile(r"^\s*(\d+)(?:\.\d+-\d+:\d+)?\s*$")
_CLASSIC_ID = re.compile(r"^\s*Your job(?:-array)? (\d+)(?:\.\d+-\d+:\d+)? \(.*\) has been submitted\s*$")
_NOT_IN_ACCOUNTING = re.compile(r"error: job id \S+ not found")
#: Characters qsub refuses in a job name (``-N``), and whitespace, which would split the directive.
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+-]")
_JOB_NAME_MAX = 200


class QstatError(ExecutionProviderException):
    """``qstat`` or ``qacct`` gave no usable answer."""


# ------------------------------------------------------------------------------------------ pure


def gridengine_job_name(job_name: str) -> str:
    """A name ``qsub -N`` accepts: no whitespace, ``/``, ``:``, ``@``, ``\\``, ``*`` or ``?``, and
    starting with a letter (a name that starts with a digit reads as a job id to ``qdel`` and ``qstat``)."""
    name = _BAD_NAME_CHARS.sub("_", job_name)
    if not name or not name[0].isalpha():
        name = "j" + name
    return name[:_JOB_NAME_MAX]


def render_gridengine_script(
    *,
    job_name: str,
    walltime: str,
    stdout_path: str,
    stderr_path: str,
    queue: str | None,
    scheduler_options: str,
    worker_init: str,
    environment: str,
    launcher_text: str,
) -> str:
    """The submit script. The generated ``#$`` lines come first and the user's ``scheduler_options``
    after them, so that the user's choice wins where both set the same thing."""
    directives = [
        "#$ -S /bin/bash",
        f"#$ -N {gridengine_job_name(job_name)}",
        # The job starts in the directory qsub ran in: the provider runs qsub in its script_dir.
        "#$ -cwd",
        f"#$ -o {stdout_path}",
        f"#$ -e {stderr_path}",
        f"#$ -l h_rt={walltime}",
    ]
    if queue:
        directives.append(f"#$ -q {queue}")
    return job_script(directives, scheduler_options, worker_init, environment, launcher_text)


def parse_qsub_output(stdout: str) -> str | None:
    """The job number qsub printed: ``qsub -terse`` prints it alone ("42", or "42.1-3:1" for an array),
    plain ``qsub`` says 'Your job 42 ("name") has been submitted'. None when neither is there."""
    for line in stdout.splitlines():
        m = _TERSE_ID.match(line) or _CLASSIC_ID.match(line)
        if m:
            return m.group(1)
    return None


@dataclass(frozen=True)
class QstatJob:
    """One job as ``qstat -xml`` lists it (an array job's tasks merged: see ``parse_qstat_xml``)."""

    job_id: str
    state: str
    name: str = ""
    queue: str = ""


def parse_qstat_xml(text: str) -> dict[str, QstatJob]:
    """The jobs in ``qstat -xml`` output, by job number ({} when it lists none).

    Raises ValueError for anything that is not qstat's XML. An array job is listed once per running
    task and once for its pending tasks; it is kept once, with a running task's entry if it has one.
    """
    if not text.strip():
        raise ValueError("qstat printed nothing")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"qstat output is not XML: {e}") from None
    if root.tag != "job_info":
        raise ValueError(f"qstat XML has the root element <{root.tag}>, not <job_info>")
    jobs: dict[str, QstatJob] = {}
    for entry in root.iter("job_list"):
        number = (entry.findtext("JB_job_number") or "").strip()
        if not number.isdigit():
            raise ValueError(f"qstat XML lists a job without a job number: {ET.tostring(entry)[:200]!r}")
        job = QstatJob(number, (entry.findtext("state") or "").strip(), (entry.findtext("JB_name") or "").strip(),
                       (entry.findtext("queue_name") or "").strip())
        known = jobs.get(number)
        if known is None or (not _has_started(known.state) and _has_started(job.state)):
            jobs[number] = job
    return jobs


def _has_started(letters: str) -> bool:
    return "r" in letters or "t" in letters


def gridengine_state(letters: str) -> JobStatus:
    """A live job's state from its qstat state letters (see the module docstring for the order)."""
    s = letters.strip()
    if not s or not re.fullmatch(r"[dEhrRsStTwq]+", s):
        return JobStatus(JobState.UNKNOWN, f"unknown Grid Engine job state {letters!r}")
    if "E" in s:
        return JobStatus(JobState.FAILED, f"error state {s!r}: Grid Engine cannot start the job (`qstat -j ID` "
                                          f"says why)")
    if "d" in s:
        return JobStatus(JobState.RUNNING if _has_started(s) else JobState.PENDING,
                         f"being deleted (state {s!r})")
    if "s" in s or "S" in s or "T" in s:
        return JobStatus(JobState.HELD, f"suspended (state {s!r})")
    if "h" in s:
        return JobStatus(JobState.HELD, f"on hold (state {s!r})")
    if _has_started(s):
        return JobStatus(JobState.RUNNING, None if s == "r" else f"state {s!r}")
    if "q" in s or "w" in s:
        return JobStatus(JobState.PENDING, None if s == "qw" else f"state {s!r}")
    return JobStatus(JobState.UNKNOWN, f"unknown Grid Engine job state {letters!r}")


def parse_qacct(text: str) -> list[dict[str, str]]:
    """The records of ``qacct -j`` output (``====`` separated ``key value`` lines), oldest first.

    A rescheduled job has one record per run. Raises ValueError when there is no record at all.
    """
    records: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("====="):
            current = {}
            records.append(current)
            continue
        if current is None or not line.strip():
            continue
        key, _, value = line.partition(" ")
        current[key] = value.strip()
    records = [r for r in records if r]
    if not records:
        raise ValueError("no accounting record in qacct output")
    return records


def _leading_int(value: str | None) -> int | None:
    m = re.match(r"\s*(-?\d+)", value or "")
    return int(m.group(1)) if m else None


def qacct_status(record: Mapping[str, str]) -> JobStatus:
    """How a finished job ended, from its ``qacct`` record (see the module docstring)."""
    failed_text = record.get("failed", "").strip()
    failed = _leading_int(failed_text)
    exit_status = _leading_int(record.get("exit_status"))
    if failed is None or exit_status is None:
        return JobStatus(JobState.FAILED, f"cannot read qacct's failed {record.get('failed')!r} and exit_status "
                                          f"{record.get('exit_status')!r}")
    why = " ".join(failed_text.split(":", 1)[1].split()) if ":" in failed_text else ""
    said = f"failed {failed}" + (f": {why}" if why else "")
    sig = exit_status - 128 if exit_status > 128 else None
    sig_name = _signal_name(sig) if sig else None
    if failed == 0:
        if exit_status == 0:
            return JobStatus(JobState.COMPLETED, None, 0)
        if sig_name:
            return JobStatus(JobState.FAILED, f"the job exited with status {exit_status} (killed by {sig_name}?)",
                             exit_status)
        return JobStatus(JobState.FAILED, f"the job script exited with code {exit_status}", exit_status)
    if failed == FAILED_LIMIT:
        return JobStatus(JobState.TIMEOUT, f"Grid Engine ended the job at a limit (h_rt, the walltime, or h_cpu or "
                                           f"h_vmem): {said}, exit_status {exit_status}", exit_status)
    if failed == FAILED_AFTER_JOB and sig in (signal.SIGKILL, signal.SIGTERM):
        return JobStatus(JobState.CANCELLED, f"killed by {sig_name} ({said}, exit_status {exit_status}): deleted "
                                             f"with qdel, by someone else or an administrator", exit_status)
    if failed == FAILED_AFTER_JOB and sig_name:
        return JobStatus(JobState.FAILED, f"killed by {sig_name} ({said}, exit_status {exit_status})", exit_status)
    return JobStatus(JobState.FAILED, f"Grid Engine could not run the job or had to end it: {said}, exit_status "
                                      f"{exit_status}", exit_status or None)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def statuses_from_qstat(result: CommandResult, job_ids: list[str]) -> dict[str, JobStatus]:
    """The states of ``job_ids`` in a ``qstat -xml`` result; QstatError when it has no answer."""
    if not result.ok:
        raise QstatError(f"`{result.command_line}` exited with code {result.returncode}: "
                         f"{(result.stderr or result.stdout).strip()!r}")
    try:
        jobs = parse_qstat_xml(result.stdout)
    except ValueError as e:
        raise QstatError(f"`{result.command_line}` gave no usable answer ({e}); stderr: {result.stderr.strip()!r}") \
            from None
    return {j: gridengine_state(jobs[j].state) for j in job_ids if j in jobs}


def status_from_qacct(result: CommandResult) -> JobStatus | None:
    """How a job ended, from a ``qacct -j ID`` result; None when the accounting has no record of it
    (yet); QstatError when qacct failed otherwise."""
    if result.ok:
        try:
            return qacct_status(parse_qacct(result.stdout)[-1])
        except ValueError as e:
            raise QstatError(f"`{result.command_line}` gave no usable answer ({e})") from None
    if _NOT_IN_ACCOUNTING.search(result.stderr + result.stdout):
        return None
    raise QstatError(f"`{result.command_line}` exited with code {result.returncode}: "
                     f"{(result.stderr or result.stdout).strip()!r}")


# -------------------------------------------------------------------------------------- provider


class GridEngineProvider(ClusterProvider):
    """Blocks as Grid Engine (Son of Grid Engine, Univa/Altair) batch jobs, one ``qsub`` each.

    Scripts, job output and submit logs go to the executor's ``{run_dir}/submit_scripts``, and ``qsub``
    runs there (the job starts there too: ``#$ -cwd``). Parameters keep the names and meanings of Parsl's
    GridEngineProvider; ``label``, ``status_polling_interval``, ``absent_grace``, ``query_failure_limit`` and
    ``accounting_grace`` are additions. Bad values raise ``ConfigurationError`` (a ``ValueError``) or
    ``TypeError`` here, naming the parameter.

    Parameters
    ----------
    nodes_per_block : int
        Nodes in each job, as the launcher is told. Grid Engine has no node count of its own: a job on
        more than one host needs a parallel environment, asked for in ``scheduler_options``
        (``"#$ -pe mpi 64"``), and a launcher that starts a pool on each of its hosts.
    init_blocks : int
        Blocks (jobs) submitted when the executor starts; not more than ``max_blocks``.
    min_blocks : int
        Fewest blocks the scaling strategy keeps; not more than ``max_blocks``.
    max_blocks : int
        Most blocks at a time, queued jobs included.
    parallelism : float
        Share (0 to 1) of waiting tasks that the scaling strategy finds worker slots for: 1 asks for
        enough blocks for every waiting task, smaller values ask for fewer.
    walltime : str
        Time limit of each job, ``HH:MM:SS`` or ``D-HH:MM:SS`` (written to ``#$ -l h_rt`` as
        ``HH:MM:SS``; Grid Engine counts seconds). At the limit Grid Engine kills the job with SIGKILL:
        the block is TIMEOUT and its running tasks fail.
    scheduler_options : str
        Extra ``#$`` lines, placed after the generated ones so that they win. Every line must be blank
        or start with ``#$`` in its first column: qsub reads no other line as a directive, so anything
        else would be lost or run as a command at the top of the job.
    worker_init : str
        Shell lines run in the job before the launcher (load modules, activate an environment). Jobs
        do not inherit the submitting shell's environment.
    launcher : Launcher | None
        How the job starts the worker pools; ``None`` gives ``SingleNodeLauncher()``.
    cmd_timeout : float
        Seconds a ``qsub``, ``qstat``, ``qacct`` or ``qdel`` call may take before it is killed. A submit
        that times out raises ``SubmitException``; a status query that times out changes nothing.
    queue : str | None
        Queue the jobs go to (``#$ -q``), one word such as ``all.q``; ``None``: Grid Engine picks.
    label : str
        Name of the provider in logs.
    status_polling_interval : float
        Seconds between the executor's ``qstat`` queries; shorter notices ended jobs sooner and adds
        load on the qmaster.
    absent_grace : float
        Seconds after submission during which a job that ``qstat`` does not list counts as pending.
    query_failure_limit : float
        Seconds of status queries failing without a break after which live jobs are reported UNKNOWN
        (until a query works again); until then they keep their last known states.
    accounting_grace : float
        Seconds a job that has left ``qstat`` but is not in ``qacct``'s accounting file yet keeps its
        last state (the file is written ``accounting_flush_time`` after the job ends, 15 s by
        default); after that it is MISSING.
    """

    _repr_params = (
        *ClusterProvider._repr_params, "queue", "scheduler_options", "worker_init",
    )

    def __init__(
        self,
        nodes_per_block: int = 1,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1,
        walltime: str = "00:10:00",
        scheduler_options: str = "",
        worker_init: str = "",
        launcher: Launcher | None = None,
        cmd_timeout: float = 60,
        queue: str | None = None,
        label: str = "grid_engine",
        status_polling_interval: float = 60.0,
        absent_grace: float = 30.0,
        query_failure_limit: float = 600.0,
        accounting_grace: float = ACCOUNTING_GRACE,
    ) -> None:
        owner = type(self).__name__
        self.queue = check_optional_word(owner, "queue", queue)
        # qsub reads '#$' only where it starts the line.
        self.scheduler_options = check_directive_lines(owner, "scheduler_options", scheduler_options, "#$",
                                                       "qsub", indent_ok=False)
        self.accounting_grace = check_number(owner, "accounting_grace", accounting_grace, zero_ok=True,
                                             unit="seconds")
        #: Jobs qstat no longer lists that the accounting did not know yet: when that was first seen.
        self._gone_since: dict[str, float] = {}
        super().__init__(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime,
            launcher=launcher if launcher is not None else SingleNodeLauncher(), worker_init=worker_init,
            cmd_timeout=cmd_timeout, status_polling_interval=status_polling_interval, absent_grace=absent_grace,
            query_failure_limit=query_failure_limit,
        )

    def render_script(self, *, job_name: str, launcher_text: str, stdout_path: str, stderr_path: str,
                      tasks_per_node: int) -> str:
        return render_gridengine_script(
            job_name=job_name,
            walltime=format_walltime(self.walltime_seconds),
            stdout_path=stdout_path,
            stderr_path=stderr_path,
            queue=self.queue,
            scheduler_options=self.scheduler_options,
            worker_init=self.worker_init,
            environment=self.job_environment(job_name),
            launcher_text=launcher_text,
        )

    def submit_command(self, script_path: str) -> list[str]:
        return ["qsub", "-terse", script_path]

    def parse_submit_output(self, stdout: str) -> str | None:
        return parse_qsub_output(stdout)

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        return ["qdel", *job_ids]

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        found = statuses_from_qstat(self._run(["qstat", "-xml"]), job_ids)
        errored = [j for j, st in found.items() if st.state is JobState.FAILED and not self.jobs[j].cancel_requested]
        if errored:
            # A job in an error state never starts and stays in the queue until someone clears or deletes
            # it; its block has failed, so it goes.
            result = self._run(self.cancel_command(errored))
            logger.warning("%s: jobs %s are in Grid Engine's error state; deleted them (`%s`: exit code %d%s)",
                           self.label, errored, result.command_line, result.returncode,
                           f", {result.stderr.strip()}" if result.stderr.strip() else "")
        now = self.clock()
        for job_id in [j for j in job_ids if j not in found]:
            ended = status_from_qacct(self._run(["qacct", "-j", job_id]))
            if ended is not None:
                found[job_id] = ended
                self._gone_since.pop(job_id, None)
                continue
            first = self._gone_since.setdefault(job_id, now)
            job = self.jobs.get(job_id)
            if job is not None and now - first < self.accounting_grace:
                found[job_id] = job.status  # not in the accounting file yet: wait for it
            else:
                self._gone_since.pop(job_id, None)
        for job_id in [j for j in found if j in self._gone_since and found[j].terminal]:
            del self._gone_since[job_id]
        return found

