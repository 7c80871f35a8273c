"""CondorProvider: blocks as HTCondor vanilla-universe jobs, submitted with ``condor_submit``.

A block is two files: ``J.submit``, the submit description (what ``condor_submit`` reads), and ``J.sh``,
the job's shell script that it names as the ``executable`` (``worker_init``, the environment, the
launcher). HTCondor runs one vanilla job in one slot, so a block is one slot (``nodes_per_block`` 1).

Pure parts, table-tested on recorded outputs: ``render_submit_description``, ``render_job_script``,
``condor_environment`` (the quoting of the ``environment`` command), ``parse_condor_submit`` (the job id
in ``condor_submit``'s output), ``parse_condor_json`` (``condor_q -json`` / ``condor_history -json``
into job ads by id) and ``condor_job_status`` (an ad's ``JobStatus`` and exit attributes into a
``JobStatus``).

Status comes from ``condor_q -json IDS``, which lists jobs still in the queue; jobs it no longer lists
have left the queue and are looked up with ``condor_history -json IDS``. Cancel is ``condor_rm``; a job
this provider cancelled is CANCELLED. The walltime is enforced by a ``periodic_remove`` expression, so
the schedd removes a job that has run longer (within its ``PERIODIC_EXPR_INTERVAL``, 60 s by default):
such a removal is TIMEOUT.

JobStatus values: 1 Idle PENDING; 2 Running RUNNING; 3 Removed CANCELLED (TIMEOUT when removed by the
walltime expression); 4 Completed by ``ExitCode``: 0 COMPLETED, other values FAILED, killed by a signal
(``ExitBySignal``) FAILED; 5 Held: held by a user (``condor_hold``, ``HoldReasonCode`` 1), submitted on
hold (15) or waiting for input spooling (16) HELD, any other hold (HTCondor holds a job it cannot run:
a missing executable, a failed file transfer, a policy) FAILED with the ``HoldReason``; 6 Transferring
Output RUNNING; 7 Suspended HELD; anything else UNKNOWN.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from htex_ref.errors import ConfigurationError, ExecutionProviderException
from htex_ref.launchers import Launcher, SingleNodeLauncher
from htex_ref.providers.base import JobState, JobStatus, check_optional_amount, check_optional_count
from htex_ref.providers.cluster import ClusterProvider, CommandResult, job_script

#: Attributes asked of condor_q and condor_history (all that ``condor_job_status`` reads, and the id).
AD_ATTRIBUTES = ("ClusterId", "ProcId", "JobStatus", "ExitCode", "ExitBySignal", "ExitSignal", "HoldReason",
                 "HoldReasonCode", "RemoveReason")

#: Hold reasons that are a choice, not a failure: held by a user, submitted on hold, spooling input.
_WAITING_HOLDS = {1: "held by a user (condor_hold)", 15: "submitted on hold", 16: "waiting for its input to be spooled"}

_STATES: dict[int, tuple[JobState, str | None]] = {
    1: (JobState.PENDING, "idle"),
    2: (JobState.RUNNING, None),
    6: (JobState.RUNNING, "transferring output"),
    7: (JobState.HELD, "suspended"),
}
_SUBMITTED = re.compile(r"^\s*(\d+) job\(s\) submitted to cluster (\d+)\.?\s*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: The expression that removes a job past its walltime; its name is how the removal is recognised.
WALLTIME_EXPRESSION = "periodic_remove"


class CondorQueryError(ExecutionProviderException):
    """``condor_q`` or ``condor_history`` gave no usable answer."""


# ------------------------------------------------------------------------------------------ pure


def condor_environment(env: Mapping[str, str]) -> str:
    """The value of the submit description's ``environment`` command, in HTCondor's quoted syntax: the whole
    in double quotes, ``NAME='value'`` pairs separated by spaces, a literal ' or " written twice."""
    pairs = []
    for name, value in env.items():
        quoted = value.replace("'", "''").replace('"', '""')
        pairs.append(f"{name}='{quoted}'")
    return '"' + " ".join(pairs) + '"'


def _classad_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_submit_description(
    *,
    job_name: str,
    executable: str,
    stdout_path: str,
    stderr_path: str,
    log_path: str,
    walltime_seconds: int,
    cores_per_slot: int | None,
    mem_per_slot: float | None,
    environment: Mapping[str, str],
    project: str,
    requirements: str,
    transfer_input_files: Sequence[str],
    scheduler_options: str,
) -> str:
    """The submit description: one vanilla-universe job running ``executable``. The user's
    ``scheduler_options`` come after the generated commands (the last value of a command before ``queue``
    is the one HTCondor uses, so the user's win), and ``queue`` ends the file."""
    lines = [
        f"# htex_ref block {job_name}: condor_submit this file",
        "universe = vanilla",
        f"batch_name = {job_name}",
        f"executable = {executable}",
        f"output = {stdout_path}",
        f"error = {stderr_path}",
        f"log = {log_path}",
        "should_transfer_files = IF_NEEDED",
        "when_to_transfer_output = ON_EXIT_OR_EVICT",
        # Removed once it has run walltime seconds: JobCurrentStartDate is when the current run started.
        f"{WALLTIME_EXPRESSION} = (JobStatus == 2) && (time() - JobCurrentStartDate > {walltime_seconds})",
    ]
    if cores_per_slot is not None:
        lines.append(f"request_cpus = {cores_per_slot}")
    if mem_per_slot is not None:
        lines.append(f"request_memory = {math.ceil(mem_per_slot * 1024)}")
    if environment:
        lines.append(f"environment = {condor_environment(environment)}")
    if project:
        lines.append(f"+ProjectName = {_classad_string(project)}")
    if requirements:
        lines.append(f"requirements = {requirements}")
    if transfer_input_files:
        lines.append(f"transfer_input_files = {','.join(transfer_input_files)}")
    user = scheduler_options.strip("\n")
    return "\n".join(lines) + "\n" + (user + "\n" if user else "") + "queue\n"


def render_job_script(*, worker_init: str, environment: str, launcher_text: str) -> str:
    """The shell script the job runs (the submit description's ``executable``)."""
    return job_script([], "", worker_init, environment, launcher_text)


def parse_condor_submit(stdout: str) -> str | None:
    """The job id (``CLUSTER.0``) in condor_submit's output (``1 job(s) submitted to cluster 42.``), or None."""
    for line in stdout.splitlines():
        m = _SUBMITTED.match(line)
        if m and int(m.group(1)) >= 1:
            return f"{int(m.group(2))}.0"
    return None


def parse_condor_json(text: str) -> dict[str, dict[str, Any]]:
    """The job ads of ``condor_q -json`` or ``condor_history -json`` output, by ``CLUSTER.PROC`` id.

    Both print nothing at all when no job matches: that is ``{}``. Raises ValueError for output that is
    not a JSON array of ads with integer ``ClusterId`` and ``ProcId``.
    """
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(doc, list):
        raise ValueError(f"the JSON is a {type(doc).__name__}, not an array of job ads")
    ads: dict[str, dict[str, Any]] = {}
    for ad in doc:
        if not isinstance(ad, dict):
            raise ValueError(f"a job ad is a {type(ad).__name__}, not an object")
        cluster, proc = ad.get("ClusterId"), ad.get("ProcId")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (cluster, proc)):
            raise ValueError(f"a job ad without integer ClusterId and ProcId: {ad!r:.200}")
        ads[f"{cluster}.{proc}"] = ad
    return ads


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def condor_job_status(ad: Mapping[str, Any]) -> JobStatus:
    """A job's state from its ad (``JobStatus``, ``ExitCode``, ``ExitBySignal``, ``ExitSignal``, ``HoldReason``,
    ``HoldReasonCode``, ``RemoveReason``); never raises, whatever the values."""
    code = _int(ad.get("JobStatus"))
    if code in _STATES:
        state, what = _STATES[code]
        return JobStatus(state, what)
    if code == 3:
        reason = _text(ad.get("RemoveReason"))
        if reason and "PeriodicRemove" in reason:
            return JobStatus(JobState.TIMEOUT, f"removed at its walltime by the {WALLTIME_EXPRESSION} expression "
                                               f"({reason})")
        return JobStatus(JobState.CANCELLED, "removed (condor_rm by someone else or an administrator)"
                                             + (f": {reason}" if reason else ""))
    if code == 4:
        if ad.get("ExitBySignal") is True:
            signal = _int(ad.get("ExitSignal"))
            return JobStatus(JobState.FAILED, f"killed by signal {signal if signal is not None else '(unknown)'}",
                             -signal if signal is not None else None)
        exit_code = _int(ad.get("ExitCode"))
        if exit_code == 0:
            return JobStatus(JobState.COMPLETED, None, 0)
        if exit_code is None:
            return JobStatus(JobState.FAILED, "completed without an exit code")
        return JobStatus(JobState.FAILED, f"the job script exited with code {exit_code}", exit_code)
    if code == 5:
        reason = _text(ad.get("HoldReason")) or "no reason given"
        hold = _int(ad.get("HoldReasonCode"))
        if hold in _WAITING_HOLDS:
            return JobStatus(JobState.HELD, f"{_WAITING_HOLDS[hold]}: {reason}")
        return JobStatus(JobState.FAILED, f"held by HTCondor (HoldReasonCode {hold}): {reason}; the job stays in the "
                                          f"queue until it is released (condor_release) or removed (condor_rm)")
    return JobStatus(JobState.UNKNOWN, f"unknown HTCondor JobStatus {ad.get('JobStatus')!r}")


def statuses_from_condor(result: CommandResult, job_ids: list[str]) -> dict[str, JobStatus]:
    """The states of ``job_ids`` in a ``condor_q -json`` or ``condor_history -json`` result; raises
    CondorQueryError when it failed (a non-zero exit, or output that is not job ads). Jobs it does not
    list are left out."""
    try:
        if not result.ok:
            raise ValueError(f"exited with code {result.returncode}")
        ads = parse_condor_json(result.stdout)
    except ValueError as e:
        raise CondorQueryError(f"`{result.command_line}` gave no usable answer ({e}); "
                               f"stderr: {result.stderr.strip()!r}") from None
    return {job_id: condor_job_status(ads[job_id]) for job_id in job_ids if job_id in ads}


# ----------------------------------------------------------------------------------- checks


def _check_environment(owner: str, value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{owner}.environment must be None or a dict of str to str, got "
                                 f"{type(value).__name__} {value!r}")
    for name, val in value.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ConfigurationError(f"{owner}.environment has a name that is not a shell variable name: {name!r}")
        if not isinstance(val, str) or any(c in val for c in "\n\r"):
            raise ConfigurationError(f"{owner}.environment[{name!r}] must be a string without newlines (it goes "
                                     f"on one line of the submit description), got {val!r}")
    return dict(value)


def _check_line(owner: str, name: str, value: object) -> str:
    if not isinstance(value, str) or any(c in value for c in "\n\r"):
        raise ConfigurationError(f"{owner}.{name} must be a string on one line (it is one command of the submit "
                                 f"description), got {value!r}")
    return value


def _check_options(owner: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{owner}.scheduler_options must be a string of submit description lines, got "
                                 f"{type(value).__name__} {value!r}")
    if "\r" in value:
        raise ConfigurationError(f"{owner}.scheduler_options must not contain carriage returns, got {value!r}")
    for number, line in enumerate(value.split("\n"), 1):
        words = line.split()
        if words and words[0].lower() == "queue":
            raise ConfigurationError(f"{owner}.scheduler_options line {number}, {line!r}: a 'queue' statement "
                                     f"would submit more jobs than the block; htex_ref ends the description "
                                     f"with the one 'queue'")
    return value


def _check_files(owner: str, value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(
            isinstance(v, str) and v and not any(c in v for c in ",\n\r") for v in value):
        raise ConfigurationError(f"{owner}.transfer_input_files must be a list of paths (strings without commas or "
                                 f"newlines: HTCondor separates them with commas), got {value!r}")
    return list(value)


# -------------------------------------------------------------------------------------- provider


class CondorProvider(ClusterProvider):
    """Blocks as HTCondor vanilla-universe jobs, one slot each.

    Submit descriptions, job scripts, job output, HTCondor's job event log (``J.log``) and submit logs go
    to the executor's ``{run_dir}/submit_scripts``. Parameters keep the names and meanings of Parsl's
    CondorProvider; bad values raise ``ConfigurationError`` (a ``ValueError``) or ``TypeError`` here,
    naming the parameter.

    Parameters
    ----------
    nodes_per_block : int
        Must be 1: a vanilla-universe job runs in one slot (Parsl writes ``machine_count``, which only
        the parallel universe reads). Ask for more blocks instead.
    cores_per_slot : int | None
        CPUs each job asks for (``request_cpus``), exported to the job as ``PARSL_CORES``; ``None``: the
        pool's default request (often 1 core).
    mem_per_slot : float | None
        Memory each job asks for, in GB (``request_memory``, in MB, rounded up), exported to the job as
        ``PARSL_MEMORY_GB``; ``None``: the pool's default.
    init_blocks : int
        Blocks (jobs) submitted when the executor starts; not more than ``max_blocks``.
    min_blocks : int
        Fewest blocks the scaling strategy keeps; not more than ``max_blocks``.
    max_blocks : int
        Most blocks at a time, idle jobs included.
    parallelism : float
        Share (0 to 1) of waiting tasks that the scaling strategy finds worker slots for: 1 asks for
        enough blocks for every waiting task, smaller values ask for fewer.
    environment : dict[str, str] | None
        Variables set in the job's environment (the submit description's ``environment``); names must be
        shell variable names, values one line each.
    project : str
        Project the jobs are charged to (``+ProjectName``); ``""``: none.
    scheduler_options : str
        Extra submit description lines, placed after the generated ones so that they win; a ``queue``
        statement is refused (the description ends with the block's one ``queue``).
    transfer_input_files : list[str] | None
        Files or directories HTCondor copies into the job's sandbox on pools without a shared file system.
    walltime : str
        Longest run of each job, ``HH:MM:SS`` or ``D-HH:MM:SS``: a ``periodic_remove`` expression removes a
        job that has run longer (the schedd evaluates it every ``PERIODIC_EXPR_INTERVAL``, 60 s by
        default); the block is then TIMEOUT.
    worker_init : str
        Shell lines run in the job script before the launcher.
    launcher : Launcher | None
        How the job starts the worker pool; ``None`` gives ``SingleNodeLauncher()``.
    requirements : str
        The ``requirements`` expression (a ClassAd expression on one line); ``""``: HTCondor's default.
    cmd_timeout : float
        Seconds a ``condor_submit``, ``condor_q``, ``condor_history`` or ``condor_rm`` call may take before
        it is killed.
    label : str
        Name of the provider in logs.
    status_polling_interval : float
        Seconds between the executor's ``condor_q`` queries.
    absent_grace : float
        Seconds after submission during which a job that neither ``condor_q`` nor ``condor_history`` lists
        counts as pending; a job not listed after that is MISSING.
    query_failure_limit : float
        Seconds of status queries failing without a break after which live jobs are reported UNKNOWN
        (until a query works again); until then they keep their last known states.
    """

    _repr_params = (
        "label", "nodes_per_block", "cores_per_slot", "mem_per_slot", "init_blocks", "min_blocks", "max_blocks",
        "parallelism", "environment", "project", "requirements", "transfer_input_files", "walltime", "launcher",
        "cmd_timeout",
    )

    def __init__(
        self,
        nodes_per_block: int = 1,
        cores_per_slot: int | None = None,
        mem_per_slot: float | None = None,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1,
        environment: dict[str, str] | None = None,
        project: str = "",
        scheduler_options: str = "",
        transfer_input_files: list[str] | None = None,
        walltime: str = "00:10:00",
        worker_init: str = "",
        launcher: Launcher | None = None,
        requirements: str = "",
        cmd_timeout: float = 60,
        label: str = "condor",
        status_polling_interval: float = 60.0,
        absent_grace: float = 30.0,
        query_failure_limit: float = 600.0,
    ) -> None:
        owner = type(self).__name__
        if nodes_per_block != 1 or isinstance(nodes_per_block, bool):
            raise ConfigurationError(f"{owner}.nodes_per_block must be 1 (a vanilla-universe job runs in one slot; "
                                     f"ask for more blocks instead), got {nodes_per_block!r}")
        # Checked here under their own names (the base checks them again as cores_per_node / mem_per_node).
        check_optional_count(owner, "cores_per_slot", cores_per_slot)
        check_optional_amount(owner, "mem_per_slot", mem_per_slot, "GB")
        self.environment = _check_environment(owner, environment)
        self.project = _check_line(owner, "project", project)
        self.requirements = _check_line(owner, "requirements", requirements)
        self.scheduler_options = _check_options(owner, scheduler_options)
        self.transfer_input_files = _check_files(owner, transfer_input_files)
        super().__init__(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime,
            launcher=launcher if launcher is not None else SingleNodeLauncher(), worker_init=worker_init,
            cmd_timeout=cmd_timeout, status_polling_interval=status_polling_interval, absent_grace=absent_grace,
            query_failure_limit=query_failure_limit, cores_per_node=cores_per_slot, mem_per_node=mem_per_slot,
        )
        # A slot is what a node is to the other providers: the executor sizes pools by these.
        self.cores_per_slot = self.cores_per_node
        self.mem_per_slot = self.mem_per_node

    def render_script(self, *, job_name: str, launcher_text: str, stdout_path: str, stderr_path: str,
                      tasks_per_node: int) -> str:
        script_dir = self._script_dir()
        return render_submit_description(
            job_name=job_name,
            executable=str(script_dir / f"{job_name}.sh"),
            stdout_path=stdout_path,
            stderr_path=stderr_path,
            log_path=str(script_dir / f"{job_name}.log"),
            walltime_seconds=self.walltime_seconds,
            cores_per_slot=self.cores_per_slot,
            mem_per_slot=self.mem_per_slot,
            environment=self.environment,
            project=self.project,
            requirements=self.requirements,
            transfer_input_files=self.transfer_input_files,
            scheduler_options=self.scheduler_options,
        )

    def companion_files(self, *, job_name: str, launcher_text: str, stdout_path: str, stderr_path: str,
                        tasks_per_node: int) -> dict[str, str]:
        exports = ""
        if self.cores_per_slot is not None:
            exports += f"export PARSL_CORES={self.cores_per_slot}\n"
        if self.mem_per_slot is not None:
            exports += f"export PARSL_MEMORY_GB={shlex.quote(str(self.mem_per_slot))}\n"
        return {".sh": render_job_script(worker_init=self.worker_init,
                                         environment=exports + self.job_environment(job_name),
                                         launcher_text=launcher_text)}

    def submit_command(self, script_path: str) -> list[str]:
        return ["condor_submit", script_path]

    def parse_submit_output(self, stdout: str) -> str | None:
        return parse_condor_submit(stdout)

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        return ["condor_rm", *job_ids]

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        attributes = ",".join(AD_ATTRIBUTES)
        found = statuses_from_condor(self._run(["condor_q", "-json", "-attributes", attributes, *job_ids]), job_ids)
        rest = [j for j in job_ids if j not in found]
        if rest:
            # A job that left the queue (completed or removed) is in the history, with how it ended.
            found.update(statuses_from_condor(
                self._run(["condor_history", "-json", "-attributes", attributes, "-limit", str(len(rest)), *rest]),
                rest))
        return found
