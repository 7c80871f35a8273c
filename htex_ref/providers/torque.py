"""TorqueProvider: blocks as Torque (OpenPBS 2.x lineage) batch jobs, submitted with ``qsub``.

Torque is PBS Professional's older sibling: the same ``qsub``/``qstat``/``qdel`` and ``#PBS`` directives,
but nodes are asked for as ``-l nodes=N:ppn=P``, ``qstat`` has no JSON and no job history, and exit
statuses use Torque's own negative codes. What the two share is imported from ``pbspro``: the job
name rule, qsub's job id, matching qsub's ids to qstat's, and telling "none listed" from a failed qstat.

Pure parts, table-tested on recorded outputs: ``render_torque_script`` (the submit script),
``parse_qstat_full`` (``qstat -f`` text into job attributes, folded lines joined) and
``torque_job_status`` (Torque's job state and exit status into a ``JobStatus``).

Status comes from ``qstat -f <ids>``. Torque keeps a completed job (state C, with ``exit_status``) for
the server's ``keep_completed`` seconds and then forgets it; a job it no longer lists is MISSING once
``absent_grace`` has passed since its submission (see ``ClusterProvider``). ``qstat`` exits non-zero
when some ids are unknown but still prints the others, so its output is used whenever it parses.
Cancel is ``qdel``; a job this provider cancelled is CANCELLED.

Torque job states: C (completed) by exit status: 0 COMPLETED, -11 (walltime) TIMEOUT, other negative
values (Torque could not run the job or ended it: JOB_EXEC_* codes) FAILED, above 256 (killed by signal
value-256; 271 is SIGTERM, as qdel sends) CANCELLED for 271 and FAILED otherwise, except that a job
killed by a signal once its used walltime reached its limit is TIMEOUT (older Torque versions end a
job at its walltime with SIGTERM, not -11); none (deleted before it ran) CANCELLED; 1..255 FAILED.
E (exiting) RUNNING; H (held) HELD; Q (queued) PENDING; R (running) RUNNING; S (suspended) HELD;
T (being moved) PENDING; W (waiting for its start time) PENDING; anything else UNKNOWN.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from htex_ref.errors import ExecutionProviderException
from htex_ref.launchers import AprunLauncher, Launcher
from htex_ref.providers.base import JobState, JobStatus, check_optional_count
from htex_ref.providers.cluster import (
    ClusterProvider,
    CommandResult,
    check_directive_lines,
    check_optional_word,
    format_walltime,
    job_script,
)
from htex_ref.providers.pbspro import lists_none_of_them, match_job_ids, parse_qsub_output, pbs_job_name

#: Torque's own exit statuses (JOB_EXEC_* in its job.h), as its documentation lists them up to 6.1.
TORQUE_EXEC_CODES: dict[int, str] = {
    -1: "JOB_EXEC_FAIL1: the job could not be started (before its files were staged); not retried",
    -2: "JOB_EXEC_FAIL2: the job could not be started (after its files were staged); not retried",
    -3: "JOB_EXEC_RETRY: the job could not be started; Torque retries it",
    -4: "JOB_EXEC_INITABT: the job was aborted when the MOM started",
    -5: "JOB_EXEC_INITRST: the job was aborted when the MOM started (checkpointed, not migrated)",
    -6: "JOB_EXEC_INITRMG: the job was aborted when the MOM started (checkpointed, may migrate)",
    -7: "JOB_EXEC_BADRESRT: the job's restart failed",
    -8: "JOB_EXEC_CMDFAIL: the job's command could not be executed",
    -9: "JOB_EXEC_STDOUTFAIL: the job's stdout or stderr file could not be created",
    -10: "JOB_EXEC_OVERLIMIT_MEM: the job exceeded a memory limit",
    -11: "JOB_EXEC_OVERLIMIT_WT: the job exceeded its walltime limit",
    -12: "JOB_EXEC_OVERLIMIT_CPUT: the job exceeded a CPU time limit",
    -13: "the job's cgroups could not be created",
    -14: "the job's prologue failed",
}
WALLTIME_EXCEEDED = -11
SIGTERM = 15

_STATES: dict[str, tuple[JobState, str | None]] = {
    "E": (JobState.RUNNING, "exiting"),
    "H": (JobState.HELD, "held"),
    "Q": (JobState.PENDING, None),
    "R": (JobState.RUNNING, None),
    "S": (JobState.HELD, "suspended"),
    "T": (JobState.PENDING, "being moved to another queue or server"),
    "W": (JobState.PENDING, "waiting for its start time"),
}
_ENDED = "C"

_JOB_ID_LINE = re.compile(r"^Job Id:\s*(\S+)\s*$")
_ATTRIBUTE = re.compile(r"^\s+([A-Za-z_][\w.]*)\s+=\s?(.*)$")


class TorqueQstatError(ExecutionProviderException):
    """``qstat`` gave no usable answer."""


# ------------------------------------------------------------------------------------------ pure


def render_torque_script(
    *,
    job_name: str,
    walltime: str,
    nodes_per_block: int,
    ppn: int,
    stdout_path: str,
    stderr_path: str,
    account: str | None,
    queue: str | None,
    scheduler_options: str,
    worker_init: str,
    environment: str,
    launcher_text: str,
) -> str:
    """The submit script. Every ``#PBS`` line comes before the first command (qsub stops reading directives
    there); the user's ``scheduler_options`` come after the generated ones, so the user's choice wins."""
    directives = [
        "#PBS -S /bin/bash",
        f"#PBS -N {pbs_job_name(job_name)}",
        "#PBS -m n",
        f"#PBS -l walltime={walltime}",
        f"#PBS -l nodes={nodes_per_block}:ppn={ppn}",
        f"#PBS -o {stdout_path}",
        f"#PBS -e {stderr_path}",
    ]
    if account:
        directives.append(f"#PBS -A {account}")
    if queue:
        directives.append(f"#PBS -q {queue}")
    return job_script(directives, scheduler_options, worker_init, environment, launcher_text)


def parse_qstat_full(text: str) -> dict[str, dict[str, str]]:
    """The jobs of ``qstat -f`` output: attributes (``job_state``, ``exit_status``, ...) by job id.

    Torque folds long values onto continuation lines that start with a tab; they are joined back. Lines
    that are neither a job header, an attribute nor a continuation are skipped. Raises ValueError for
    output with no ``Job Id:`` block at all (empty output included).
    """
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last_key: str | None = None
    for line in text.splitlines():
        header = _JOB_ID_LINE.match(line)
        if header:
            current = jobs.setdefault(header.group(1), {})
            last_key = None
            continue
        if current is None:
            continue
        if not line.strip():
            last_key = None
            continue
        attribute = None if line.startswith("\t") else _ATTRIBUTE.match(line)
        if attribute:
            last_key = attribute.group(1)
            current[last_key] = attribute.group(2)
        elif line.startswith("\t") and last_key is not None:
            # Torque folds at a fixed width, mid-word: the text after the tab continues the value as is.
            current[last_key] += line[1:]
        elif line[0].isspace() and last_key is not None:
            current[last_key] += line.strip()
        else:
            last_key = None
    if not jobs:
        raise ValueError("no 'Job Id:' block in qstat's output" if text.strip() else "qstat printed nothing")
    return {job_id: {k: v.strip() for k, v in attrs.items()} for job_id, attrs in jobs.items()}


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def duration_seconds(value: object) -> int | None:
    """Seconds in a Torque duration (``HH:MM:SS``, ``MM:SS`` or plain seconds), or None if it is not one."""
    parts = str(value).strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() and p.isascii() for p in parts):
        return None
    total = 0
    for p in parts:
        total = total * 60 + int(p)
    return total


def _reached_walltime(attrs: Mapping[str, str]) -> bool:
    used = duration_seconds(attrs.get("resources_used.walltime", ""))
    limit = duration_seconds(attrs.get("Resource_List.walltime", ""))
    return used is not None and limit is not None and limit > 0 and used >= limit


def torque_job_status(attrs: Mapping[str, str]) -> JobStatus:
    """A job's state from its ``qstat -f`` attributes (``job_state``, ``exit_status``, walltimes, ``comment``)."""
    letter = str(attrs.get("job_state", "")).strip()
    comment = str(attrs.get("comment") or "").strip() or None
    if letter == _ENDED:
        return _ended_status(_int_or_none(attrs.get("exit_status")), _reached_walltime(attrs), comment)
    if letter in _STATES:
        state, what = _STATES[letter]
        parts = [p for p in (what, comment) if p]
        return JobStatus(state, "; ".join(parts) if parts else None)
    return JobStatus(JobState.UNKNOWN, f"unknown Torque job_state {letter!r}" + (f"; {comment}" if comment else ""))


def _ended_status(code: int | None, reached_walltime: bool, comment: str | None) -> JobStatus:
    said = f" ({comment})" if comment else ""
    if code is None:
        return JobStatus(JobState.CANCELLED, f"completed without an exit status: deleted before it ran{said}")
    if code == 0:
        return JobStatus(JobState.COMPLETED, None, 0)
    if code == WALLTIME_EXCEEDED:
        return JobStatus(JobState.TIMEOUT, f"{TORQUE_EXEC_CODES[WALLTIME_EXCEEDED]}{said}", code)
    if code < 0:
        meaning = TORQUE_EXEC_CODES.get(code, "Torque could not run the job or had to end it")
        return JobStatus(JobState.FAILED, f"Torque exit status {code}: {meaning}{said}; see `tracejob`", code)
    if code > 256 and reached_walltime:
        return JobStatus(JobState.TIMEOUT, f"killed by signal {code - 256} (exit_status {code}) once its used "
                                           f"walltime reached its limit{said}", code)
    if code == 256 + SIGTERM:
        return JobStatus(JobState.CANCELLED, f"killed by SIGTERM (exit_status {code}): deleted with qdel by someone "
                                             f"else, an administrator or preemption{said}", code)
    if code > 256:
        return JobStatus(JobState.FAILED, f"killed by signal {code - 256} (exit_status {code}){said}", code)
    return JobStatus(JobState.FAILED, f"the job script exited with code {code}{said}", code)


def statuses_from_qstat_full(result: CommandResult, job_ids: list[str]) -> dict[str, JobStatus]:
    """The states of ``job_ids`` in a ``qstat -f`` result; raises TorqueQstatError when it has none to
    give (output that is not ``qstat -f`` text). Jobs it does not list are left out."""
    try:
        jobs = parse_qstat_full(result.stdout)
    except ValueError as e:
        if lists_none_of_them(result):
            return {}
        raise TorqueQstatError(
            f"`{result.command_line}` exited with code {result.returncode} and gave no usable answer ({e}); "
            f"stderr: {result.stderr.strip()!r}") from None
    return {req: torque_job_status(jobs[key]) for req, key in match_job_ids(job_ids, jobs).items()}


# -------------------------------------------------------------------------------------- provider


class TorqueProvider(ClusterProvider):
    """Blocks as Torque jobs of ``nodes_per_block`` nodes (``-l nodes=N:ppn=P``).

    Scripts, job output and submit logs go to the executor's ``{run_dir}/submit_scripts``. Parameters
    keep the names and meanings of Parsl's TorqueProvider; bad values raise ``ConfigurationError`` (a
    ``ValueError``) or ``TypeError`` here, naming the parameter.

    Parameters
    ----------
    account : str | None
        Account the jobs are charged to (``#PBS -A``), one word; ``None``: none given.
    queue : str | None
        Queue the jobs go to (``#PBS -q``), one word; ``None``: the server's default queue.
    scheduler_options : str
        Extra ``#PBS`` lines, placed after the generated ones so that they win. Every line must be blank
        or a ``#PBS`` directive: qsub ignores other comments, and any other line would end its directives
        and run as a command at the top of the job.
    worker_init : str
        Shell lines run in the job before the launcher. Torque jobs start in the home directory, so change
        directory or set paths here if tasks need them.
    nodes_per_block : int
        Nodes in each job: ``nodes={nodes_per_block}``.
    cpus_per_node : int | None
        ``ppn`` (processors per node) of the request. ``None``: the number of worker pools per node the
        executor asks for (usually 1), as in Parsl; on a cluster that confines jobs to the cores they
        asked for, set it to the node's core count, or the pool has one core.
    init_blocks : int
        Blocks (jobs) submitted when the executor starts; not more than ``max_blocks``.
    min_blocks : int
        Fewest blocks the scaling strategy keeps; not more than ``max_blocks``.
    max_blocks : int
        Most blocks at a time, queued jobs included.
    parallelism : float
        Share (0 to 1) of waiting tasks that the scaling strategy finds worker slots for: 1 asks for
        enough blocks for every waiting task, smaller values ask for fewer.
    launcher : Launcher | None
        How the job starts the worker pools; ``None`` gives ``AprunLauncher()``, Parsl's default for
        Torque (whose large sites were Cray systems). Elsewhere use ``SingleNodeLauncher`` or
        ``MpiExecLauncher``.
    walltime : str
        Time limit of each job, ``HH:MM:SS`` or ``D-HH:MM:SS`` (written to ``#PBS -l walltime`` as
        ``HH:MM:SS``); Torque then kills the job: the block is TIMEOUT and its running tasks fail.
    cmd_timeout : float
        Seconds a ``qsub``, ``qstat`` or ``qdel`` call may take before it is killed. A submit that times
        out raises ``SubmitException``; a status query that times out changes nothing.
    label : str
        Name of the provider in logs.
    status_polling_interval : float
        Seconds between the executor's ``qstat`` queries. Keep it well below the server's
        ``keep_completed``, or a job may end and be forgotten between two queries (it is then MISSING).
    absent_grace : float
        Seconds after submission during which a job that ``qstat`` does not list counts as pending; a
        job not listed after that is MISSING.
    query_failure_limit : float
        Seconds of status queries failing without a break after which live jobs are reported UNKNOWN
        (until a query works again); until then they keep their last known states.
    """

    _repr_params = (
        "label", "account", "queue", "nodes_per_block", "cpus_per_node", "init_blocks", "min_blocks",
        "max_blocks", "parallelism", "walltime", "launcher", "cmd_timeout",
    )

    def __init__(
        self,
        account: str | None = None,
        queue: str | None = None,
        scheduler_options: str = "",
        worker_init: str = "",
        nodes_per_block: int = 1,
        cpus_per_node: int | None = None,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1,
        launcher: Launcher | None = None,
        walltime: str = "00:20:00",
        cmd_timeout: float = 120,
        label: str = "torque",
        status_polling_interval: float = 60.0,
        absent_grace: float = 30.0,
        query_failure_limit: float = 600.0,
    ) -> None:
        owner = type(self).__name__
        self.account = check_optional_word(owner, "account", account)
        self.queue = check_optional_word(owner, "queue", queue)
        # Torque's qsub, like PBS Pro's, reads '#PBS' after leading whitespace too.
        self.scheduler_options = check_directive_lines(owner, "scheduler_options", scheduler_options, "#PBS",
                                                       "qsub", indent_ok=True)
        self.cpus_per_node = check_optional_count(owner, "cpus_per_node", cpus_per_node)
        super().__init__(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime,
            launcher=launcher if launcher is not None else AprunLauncher(), worker_init=worker_init,
            cmd_timeout=cmd_timeout, status_polling_interval=status_polling_interval, absent_grace=absent_grace,
            query_failure_limit=query_failure_limit,
        )

    def render_script(self, *, job_name: str, launcher_text: str, stdout_path: str, stderr_path: str,
                      tasks_per_node: int) -> str:
        return render_torque_script(
            job_name=job_name,
            walltime=format_walltime(self.walltime_seconds),
            nodes_per_block=self.nodes_per_block,
            ppn=self.cpus_per_node or max(1, tasks_per_node),
            stdout_path=stdout_path,
            stderr_path=stderr_path,
            account=self.account,
            queue=self.queue,
            scheduler_options=self.scheduler_options,
            worker_init=self.worker_init,
            environment=self.job_environment(job_name),
            launcher_text=launcher_text,
        )

    def submit_command(self, script_path: str) -> list[str]:
        return ["qsub", script_path]

    def parse_submit_output(self, stdout: str) -> str | None:
        return parse_qsub_output(stdout)

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        return ["qdel", *job_ids]

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        return statuses_from_qstat_full(self._run(["qstat", "-f", *job_ids]), job_ids)
