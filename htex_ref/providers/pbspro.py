"""PBSProProvider: blocks as PBS Professional (OpenPBS) batch jobs, submitted with ``qsub``.

Pure parts, table-tested on recorded outputs: ``render_pbs_script`` (the submit script),
``parse_qsub_output`` (the job id, server part included), ``parse_qstat_json`` (``qstat -f -F json``
into job attributes), ``match_job_ids`` (qsub's ids to qstat's, which may carry a longer server name)
and ``pbs_job_status`` (PBS's job state and exit status into a ``JobStatus``).

Status comes from ``qstat -f -F json <ids>``; jobs it no longer lists (finished jobs leave the live
list) are looked up with ``qstat -x -f -F json``, the job history. ``qstat`` exits non-zero when some
of the ids have finished or are unknown but still prints the others, so its JSON is used whenever it
parses; only output that does not parse counts as a failed query (and jobs keep their states, see
``ClusterProvider``). Cancel is ``qdel``; a job this provider cancelled is CANCELLED.

PBS job states: B (array job begun) RUNNING; E (exiting) RUNNING; F (finished) and X (finished
subjob) by exit status: 0 COMPLETED, -29 (walltime) TIMEOUT, 271 (SIGTERM: qdel) CANCELLED, other
values FAILED (above 256: killed by signal value-256; below 0: PBS could not run the job), none
(deleted before it ran) CANCELLED;
H (held) HELD; M (moved to another server) MISSING; Q (queued) PENDING; R (running) RUNNING;
S (suspended) HELD; T (in transit) PENDING; U (suspended while the workstation is busy) HELD;
W (waiting for its start time) PENDING; anything else UNKNOWN.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from htex_ref.errors import ConfigurationError, ExecutionProviderException
from htex_ref.launchers import Launcher, SingleNodeLauncher
from htex_ref.providers.base import JobState, JobStatus
from htex_ref.providers.cluster import (
    ClusterProvider,
    CommandResult,
    check_directive_lines,
    check_optional_word,
    format_walltime,
    job_script,
)

#: PBS's own exit statuses for jobs it could not run or had to end (JOB_EXEC_* in PBS's job.h).
PBS_EXEC_CODES: dict[int, str] = {
    -1: "JOB_EXEC_FAIL1: the job could not be started (before its files were staged); not retried",
    -2: "JOB_EXEC_FAIL2: the job could not be started (after its files were staged); not retried",
    -3: "JOB_EXEC_RETRY: the job could not be started; PBS retries it",
    -4: "JOB_EXEC_INITABT: the job was aborted when the MoM started",
    -24: "JOB_EXEC_KILL_NCPUS_BURST: killed for using more CPUs than requested (burst)",
    -25: "JOB_EXEC_KILL_NCPUS_SUM: killed for using more CPUs than requested (sum)",
    -26: "JOB_EXEC_KILL_VMEM: killed for using more virtual memory than requested",
    -27: "JOB_EXEC_KILL_MEM: killed for using more memory than requested",
    -28: "JOB_EXEC_KILL_CPUT: killed for using more CPU time than requested",
    -29: "JOB_EXEC_KILL_WALLTIME: killed for running past its walltime",
}
WALLTIME_EXCEEDED = -29
SIGTERM = 15

_STATES: dict[str, tuple[JobState, str | None]] = {
    "B": (JobState.RUNNING, "array job begun"),
    "E": (JobState.RUNNING, "exiting"),
    "H": (JobState.HELD, "held"),
    "M": (JobState.MISSING, "moved to another PBS server; htex_ref does not follow moved jobs"),
    "Q": (JobState.PENDING, None),
    "R": (JobState.RUNNING, None),
    "S": (JobState.HELD, "suspended"),
    "T": (JobState.PENDING, "in transit"),
    "U": (JobState.HELD, "suspended while its workstation is busy"),
    "W": (JobState.PENDING, "waiting for its start time"),
}
_ENDED = {"F", "X"}

_JOB_NAME_MAX = 236
#: What qstat says on stderr about ids it does not list; with only these, "none of them" is an answer.
_NOT_LISTED = re.compile(r"^qstat: (?:.*Job has finished|Unknown Job Id)")
_QSUB_ID = re.compile(r"^\d+(\[\d*\])?(\.[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class QstatError(ExecutionProviderException):
    """``qstat`` gave no usable answer."""


# ------------------------------------------------------------------------------------------ pure


def pbs_job_name(job_name: str) -> str:
    """A name ``qsub -N`` accepts: printable, no whitespace, starting with a letter, at most 236 chars."""
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", job_name)
    if not name or not name[0].isalpha():
        name = "j" + name
    return name[:_JOB_NAME_MAX]


def render_pbs_script(
    *,
    job_name: str,
    walltime: str,
    nodes_per_block: int,
    cpus_per_node: int,
    select_options: str,
    stdout_path: str,
    stderr_path: str,
    account: str | None,
    queue: str | None,
    scheduler_options: str,
    worker_init: str,
    environment: str,
    launcher_text: str,
) -> str:
    """The submit script. Every ``#PBS`` line comes before the first command, since qsub stops reading
    directives there, and the user's ``scheduler_options`` come after the generated ones, so that the
    user's choice wins where both set the same thing."""
    directives = [
        "#PBS -S /bin/bash",
        f"#PBS -N {pbs_job_name(job_name)}",
        "#PBS -m n",
        f"#PBS -l walltime={walltime}",
        f"#PBS -l select={nodes_per_block}:ncpus={cpus_per_node}{select_options}",
        f"#PBS -o {stdout_path}",
        f"#PBS -e {stderr_path}",
    ]
    if account:
        directives.append(f"#PBS -A {account}")
    if queue:
        directives.append(f"#PBS -q {queue}")
    return job_script(directives, scheduler_options, worker_init, environment, launcher_text)


def parse_qsub_output(stdout: str) -> str | None:
    """The job id qsub printed (``1234.server``, kept whole), from the last line that is one."""
    for line in reversed(stdout.splitlines()):
        word = line.strip()
        if _QSUB_ID.match(word):
            return word
    return None


def parse_qstat_json(text: str) -> dict[str, dict[str, Any]]:
    """The ``Jobs`` of ``qstat -f -F json`` output, by full job id ({} when it lists none).

    Raises ValueError for output that is not qstat JSON. Some PBS versions write environment
    values into ``Variable_List`` without escaping them; when the text does not parse, it is parsed
    once more without that (unused) attribute.
    """
    if not text.strip():
        raise ValueError("qstat printed nothing")
    try:
        doc = json.loads(text, strict=False)
    except json.JSONDecodeError as first:
        cleaned = re.sub(r'"Variable_List"\s*:\s*\{[^{}]*\}\s*,?', "", text)
        try:
            doc = json.loads(cleaned, strict=False)
        except json.JSONDecodeError:
            raise ValueError(f"qstat output is not JSON: {first}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"qstat JSON is a {type(doc).__name__}, not an object")
    jobs = doc.get("Jobs", {})
    if not isinstance(jobs, dict) or not all(isinstance(v, dict) for v in jobs.values()):
        raise ValueError("qstat JSON has a 'Jobs' entry that is not an object of job objects")
    return jobs


def _split_id(job_id: str) -> tuple[str, tuple[str, ...]]:
    seq, _, server = job_id.partition(".")
    return seq, tuple(server.split(".")) if server else ()


def match_job_ids(requested: Iterable[str], listed: Iterable[str]) -> dict[str, str]:
    """Map each requested id to the id qstat lists for it. qsub may print ``1234.pbs01`` while qstat
    lists ``1234.pbs01.example.com`` (or the other way round): same sequence number, and one server
    name a dot-wise prefix of the other. Ids with no match, or more than one, are left out."""
    keys = list(listed)
    found: dict[str, str] = {}
    for req in requested:
        if req in keys:
            found[req] = req
            continue
        seq, server = _split_id(req)
        candidates = []
        for key in keys:
            kseq, kserver = _split_id(key)
            short = min(len(server), len(kserver))
            if kseq == seq and server[:short] == kserver[:short]:
                candidates.append(key)
        if len(candidates) == 1:
            found[req] = candidates[0]
    return found


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def pbs_job_status(attrs: Mapping[str, Any]) -> JobStatus:
    """A job's state from its qstat attributes (``job_state``, ``Exit_status``, ``comment``)."""
    letter = str(attrs.get("job_state", "")).strip()
    comment = attrs.get("comment")
    comment = str(comment) if comment else None
    if letter in _ENDED:
        return _ended_status(_int_or_none(attrs.get("Exit_status")), comment)
    if letter in _STATES:
        state, what = _STATES[letter]
        parts = [p for p in (what, comment) if p]
        return JobStatus(state, "; ".join(parts) if parts else None)
    return JobStatus(JobState.UNKNOWN, f"unknown PBS job_state {letter!r}" + (f"; {comment}" if comment else ""))


def _ended_status(code: int | None, comment: str | None) -> JobStatus:
    said = f" ({comment})" if comment else ""
    if code is None:
        return JobStatus(JobState.CANCELLED, f"finished without an exit status: deleted before it ran{said}")
    if code == 0:
        return JobStatus(JobState.COMPLETED, None, 0)
    if code == WALLTIME_EXCEEDED or (comment and "walltime" in comment and "exceeded" in comment):
        return JobStatus(JobState.TIMEOUT, f"{PBS_EXEC_CODES[WALLTIME_EXCEEDED]}{said}", code)
    if code < 0:
        meaning = PBS_EXEC_CODES.get(code, "PBS could not run the job or had to end it")
        return JobStatus(JobState.FAILED, f"PBS exit status {code}: {meaning}{said}; see `tracejob`", code)
    if code == 256 + SIGTERM:
        return JobStatus(JobState.CANCELLED, f"killed by SIGTERM (Exit_status {code}): deleted with qdel by someone "
                                             f"else, an administrator or preemption{said}", code)
    if code > 256:
        return JobStatus(JobState.FAILED, f"killed by signal {code - 256} (Exit_status {code}){said}", code)
    return JobStatus(JobState.FAILED, f"the job script exited with code {code}{said}", code)


def lists_none_of_them(result: CommandResult) -> bool:
    """Whether a qstat that printed nothing said only that the ids have finished or are unknown: an answer
    (none of them is listed), not a failed query. Torque's qstat words it the same way."""
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    return not result.stdout.strip() and bool(errors) and all(_NOT_LISTED.match(line) for line in errors)


def statuses_from_qstat(result: CommandResult, job_ids: list[str]) -> dict[str, JobStatus]:
    """The states of ``job_ids`` in a ``qstat -f -F json`` result; raises QstatError when it has none
    to give (output that is not qstat JSON). Jobs it does not list are left out."""
    try:
        jobs = parse_qstat_json(result.stdout)
    except ValueError as e:
        if lists_none_of_them(result):
            return {}
        raise QstatError(
            f"`{result.command_line}` exited with code {result.returncode} and gave no usable answer ({e}); "
            f"stderr: {result.stderr.strip()!r}") from None
    return {req: pbs_job_status(jobs[key]) for req, key in match_job_ids(job_ids, jobs).items()}


# -------------------------------------------------------------------------------------- provider


class PBSProProvider(ClusterProvider):
    """Blocks as PBS Pro jobs of ``nodes_per_block`` chunks with ``cpus_per_node`` cpus each.

    Scripts, job output and submit logs go to the executor's ``{run_dir}/submit_scripts``. Parameters
    keep the names and meanings of Parsl's PBSProProvider; bad values raise ``ConfigurationError`` (a
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
        Shell lines run in the job before the launcher. PBS jobs start in the home directory, so change
        directory or set paths here if tasks need them.
    nodes_per_block : int
        Chunks (nodes) in each job: ``select={nodes_per_block}``.
    cpus_per_node : int
        ``ncpus`` of each chunk. Only the request: the worker pool sizes itself by the cores it may run
        on (cap it with the executor's ``max_workers_per_node``).
    select_options : str
        Appended to the select statement, with or without a leading colon (``"ngpus=4:mem=100gb"``); no
        spaces.
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
        How the job starts the worker pools; ``None`` gives ``SingleNodeLauncher()``, which starts them
        all on the job's first node, so use ``MpiExecLauncher`` (or similar) when ``nodes_per_block > 1``.
    walltime : str
        Time limit of each job, ``HH:MM:SS`` or ``D-HH:MM:SS`` (written to ``#PBS -l walltime`` as
        ``HH:MM:SS``); PBS then kills the job: the block is TIMEOUT and its running tasks fail.
    cmd_timeout : float
        Seconds a ``qsub``, ``qstat`` or ``qdel`` call may take before it is killed. A submit that times
        out raises ``SubmitException``; a status query that times out changes nothing.
    label : str
        Name of the provider in logs.
    status_polling_interval : float
        Seconds between the executor's ``qstat`` queries; shorter notices ended jobs sooner and adds
        load on the PBS server.
    absent_grace : float
        Seconds after submission during which a job that ``qstat`` does not list counts as pending; a
        job not listed after that (no job history on the server) is MISSING.
    query_failure_limit : float
        Seconds of status queries failing without a break after which live jobs are reported UNKNOWN
        (until a query works again); until then they keep their last known states.
    """

    _repr_params = (
        "label", "account", "queue", "nodes_per_block", "cpus_per_node", "select_options", "init_blocks",
        "min_blocks", "max_blocks", "parallelism", "walltime", "launcher", "cmd_timeout",
    )

    def __init__(
        self,
        account: str | None = None,
        queue: str | None = None,
        scheduler_options: str = "",
        worker_init: str = "",
        nodes_per_block: int = 1,
        cpus_per_node: int = 1,
        select_options: str = "",
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1,
        launcher: Launcher | None = None,
        walltime: str = "00:20:00",
        cmd_timeout: float = 120,
        label: str = "pbspro",
        status_polling_interval: float = 60.0,
        absent_grace: float = 30.0,
        query_failure_limit: float = 600.0,
    ) -> None:
        owner = type(self).__name__
        self.account = check_optional_word(owner, "account", account)
        self.queue = check_optional_word(owner, "queue", queue)
        # qsub reads '#PBS' after leading whitespace too (only the first word must be it).
        self.scheduler_options = check_directive_lines(owner, "scheduler_options", scheduler_options, "#PBS",
                                                       "qsub", indent_ok=True)
        if not isinstance(select_options, str) or any(c.isspace() for c in select_options):
            raise ConfigurationError(f"{owner}.select_options must be a string without spaces (like "
                                     f"'ngpus=4:mem=100gb'), got {select_options!r}")
        self.select_options = select_options
        if not isinstance(cpus_per_node, int) or isinstance(cpus_per_node, bool) or cpus_per_node < 1:
            raise ConfigurationError(f"{owner}.cpus_per_node must be an int >= 1, got {cpus_per_node!r}")
        self.cpus_per_node = cpus_per_node
        super().__init__(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime,
            launcher=launcher if launcher is not None else SingleNodeLauncher(), worker_init=worker_init,
            cmd_timeout=cmd_timeout, status_polling_interval=status_polling_interval, absent_grace=absent_grace,
            query_failure_limit=query_failure_limit,
        )

    def render_script(self, *, job_name: str, launcher_text: str, stdout_path: str, stderr_path: str,
                      tasks_per_node: int) -> str:
        select = self.select_options
        return render_pbs_script(
            job_name=job_name,
            walltime=format_walltime(self.walltime_seconds),
            nodes_per_block=self.nodes_per_block,
            cpus_per_node=self.cpus_per_node,
            select_options=(":" + select) if select and not select.startswith(":") else select,
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
        found = statuses_from_qstat(self._run(["qstat", "-f", "-F", "json", *job_ids]), job_ids)
        rest = [j for j in job_ids if j not in found]
        if rest:
            # Finished jobs leave qstat's live list; the job history (-x) has how they ended.
            found.update(statuses_from_qstat(self._run(["qstat", "-x", "-f", "-F", "json", *rest]), rest))
        return found
