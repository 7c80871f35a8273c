"""SlurmProvider: a block is one Slurm batch job (``sbatch``), watched with ``sacct`` or ``squeue``.

Everything Slurm-specific that decides something is a pure function here, table-tested on outputs
recorded from a real Slurm (``tests/data/slurm/``): the submit script (``render_slurm_script``), the job
id in ``sbatch --parsable`` output, the state tables and the parsers of ``squeue`` and ``sacct``
output. The commands run through :class:`~htex_ref.providers.cluster.ClusterProvider`'s one runner,
with ``cmd_timeout``; the job table and the rules for merging states (terminal states stay, a
cancelled job stays CANCELLED, a job not listed just after submission is still pending, a failed query
changes nothing) are the base's.

Status source. ``sacct`` knows every job that ever ran, so it is used when Slurm accounting works;
whether it does is learnt from the first query (``sacct`` exits 1 with "accounting storage is
disabled" where there is no slurmdbd) and then kept. Jobs ``sacct`` does not list yet (it lags
``sbatch`` by up to a few seconds) and every job on clusters without accounting are asked of
``squeue --states=all``, which lists finished jobs for ``MinJobAge`` seconds. ``status_source``
forces one or the other.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
from collections.abc import Iterable, Sequence
from typing import Literal

from htex_ref.errors import ConfigurationError
from htex_ref.launchers import Launcher, SrunLauncher
from htex_ref.providers.base import JobState, JobStatus
from htex_ref.providers.cluster import (
    JOB_START_EXPORT,
    ClusterProvider,
    CommandResult,
    check_directive_lines,
    check_optional_word,
)

logger = logging.getLogger(__name__)

StatusSource = Literal["auto", "sacct", "squeue"]

#: Slurm job states (squeue's compact codes and the long names squeue %T and sacct print) -> JobState.
#: COMPLETING, SIGNALING, STAGE_OUT: the job's processes are still being ended or its data staged, so
#: the block is not over yet. PREEMPTED and DEADLINE: the scheduler ended a job that did nothing wrong,
#: so they count as TIMEOUT (not as a failed block). REQUEUED/REQUEUE_FED: the job will run again.
#: SUSPENDED/STOPPED and the held requeue states hold the allocation (or wait for a release): HELD.
_STATES: list[tuple[str, str, JobState]] = [
    ("PD", "PENDING", JobState.PENDING),
    ("CF", "CONFIGURING", JobState.PENDING),
    ("R", "RUNNING", JobState.RUNNING),
    ("CG", "COMPLETING", JobState.RUNNING),
    ("SI", "SIGNALING", JobState.RUNNING),
    ("SO", "STAGE_OUT", JobState.RUNNING),
    ("RS", "RESIZING", JobState.RUNNING),
    ("CD", "COMPLETED", JobState.COMPLETED),
    ("CA", "CANCELLED", JobState.CANCELLED),
    ("F", "FAILED", JobState.FAILED),
    ("NF", "NODE_FAIL", JobState.FAILED),
    ("OOM", "OUT_OF_MEMORY", JobState.FAILED),
    ("BF", "BOOT_FAIL", JobState.FAILED),
    ("RV", "REVOKED", JobState.FAILED),
    ("TO", "TIMEOUT", JobState.TIMEOUT),
    ("DL", "DEADLINE", JobState.TIMEOUT),
    ("PR", "PREEMPTED", JobState.TIMEOUT),
    ("RQ", "REQUEUED", JobState.PENDING),
    ("RF", "REQUEUE_FED", JobState.PENDING),
    ("RH", "REQUEUE_HOLD", JobState.HELD),
    ("SE", "SPECIAL_EXIT", JobState.HELD),
    ("RD", "RESV_DEL_HOLD", JobState.HELD),
    ("S", "SUSPENDED", JobState.HELD),
    ("ST", "STOPPED", JobState.HELD),
]
SLURM_STATES: dict[str, JobState] = {**{s: st for s, _, st in _STATES}, **{lg: st for _, lg, st in _STATES}}
#: Long name of each compact code, for messages.
LONG_NAMES: dict[str, str] = {**{s: lg for s, lg, _ in _STATES}, **{lg: lg for _, lg, _ in _STATES}}

_MESSAGES: dict[str, str] = {
    "COMPLETING": "completing: Slurm is ending the job's processes",
    "NODE_FAIL": "a node of the job failed",
    "OUT_OF_MEMORY": "the job ran out of memory",
    "BOOT_FAIL": "a node of the job failed to boot",
    "REVOKED": "the job was revoked on this cluster (a federation sibling took it)",
    "TIMEOUT": "the job reached its walltime",
    "DEADLINE": "the job reached its deadline",
    "PREEMPTED": "the job was preempted",
    "SPECIAL_EXIT": "the job was requeued in the held SPECIAL_EXIT state; release it with scontrol",
    "REQUEUE_HOLD": "the job was requeued held; release it with scontrol",
    "RESV_DEL_HOLD": "the job is held because its reservation was deleted",
    "SUSPENDED": "the job is suspended",
    "STOPPED": "the job is stopped (SIGSTOP)",
}

_SBATCH_ID = re.compile(r"^\s*(?:Submitted batch job\s+)?(\d+(?:_\d+)?)(?:;(\S+)|\s+on cluster\s+(\S+))?\s*$")
_ACCOUNTING_DISABLED = "accounting storage is disabled"
_INVALID_JOB_ID = "invalid job id specified"
#: Directives of other schedulers that sbatch reads too, by translating them into its own options.
_FOREIGN_DIRECTIVES = {
    prefix: f"sbatch reads {prefix} lines as {kind} options and translates only some of them; write it as an "
            "'#SBATCH' option"
    for prefix, kind in (("#PBS", "PBS"), ("#BSUB", "LSF"))
}
#: How many job ids one squeue/sacct call asks about (long lists made sacct hang: Parsl #3814).
STATUS_BATCH_SIZE = 100
#: Seconds a job that squeue already shows ended keeps its last state while sacct, which lags squeue by
#: a few seconds, has no record of it yet: sacct's record carries the exit code.
SACCT_LAG_GRACE = 10.0


# ---------------------------------------------------------------------------------------- pure parts


def slurm_status(raw_state: str, exit_code: str | None = None) -> JobStatus:
    """The JobStatus for one Slurm state as squeue or sacct prints it ("R", "RUNNING", "CANCELLED by 0",
    "OUT_OF_ME+"...) and sacct's ``ExitCode`` field ("rc:signal"). Unknown states give UNKNOWN, never an error."""
    text = raw_state.strip()
    word = text.split()[0] if text else ""
    state = SLURM_STATES.get(word.upper())
    if state is None:
        return JobStatus(JobState.UNKNOWN, f"unknown Slurm job state {text!r}")
    long_name = LONG_NAMES[word.upper()]
    message = _MESSAGES.get(long_name)
    if text != word:  # e.g. "CANCELLED by 1000": keep who did it
        message = f"{text}" if message is None else f"{message} ({text})"
    code: int | None = None
    if exit_code:
        rc, _, sig = exit_code.strip().partition(":")
        if rc.isdigit() and (not sig or sig.isdigit()):
            code = -int(sig) if sig and int(sig) else int(rc)
            if state in (JobState.FAILED, JobState.COMPLETED) and code != 0:
                what = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                message = f"{message}; {what}" if message else f"job {what}"
    return JobStatus(state, message, code)


def parse_squeue(stdout: str) -> dict[str, JobStatus]:
    """``squeue --noheader --format='%i %t'`` (or ``%T``) lines -> status by job id.

    Lines that are not "id state" (blank lines, "CLUSTER: name" headers of ``--clusters``) are skipped.
    """
    found: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) != 2 or parts[0].endswith(":") or not parts[0][:1].isdigit():
            continue
        found[parts[0]] = slurm_status(parts[1])
    return found


def parse_sacct(stdout: str) -> dict[str, JobStatus]:
    """``sacct -X -n -P -o JobID,State,ExitCode`` lines -> status by job id.

    Job steps ("12.batch") are skipped; when a job appears more than once (requeued), the last line wins.
    """
    found: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 2 or not fields[0][:1].isdigit() or "." in fields[0]:
            continue
        found[fields[0]] = slurm_status(fields[1], fields[2] if len(fields) > 2 else None)
    return found


def _check_regex_job_id(value: object) -> re.Pattern[str] | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"SlurmProvider.regex_job_id must be a regular expression string, got {value!r}")
    try:
        pattern = re.compile(value)
    except re.error as e:
        raise ConfigurationError(f"SlurmProvider.regex_job_id is not a regular expression: {e}") from None
    if "id" not in pattern.groupindex:
        raise ConfigurationError(f"SlurmProvider.regex_job_id must have a group named id, as (?P<id>\\d+); "
                                 f"got {value!r}")
    return pattern


def parse_sbatch(stdout: str) -> str | None:
    """The job id in ``sbatch --parsable`` output ("123" or "123;cluster") or in the classic
    "Submitted batch job 123 [on cluster X]" line; None when there is none."""
    for line in stdout.splitlines():
        m = _SBATCH_ID.match(line)
        if m:
            return m.group(1)
    return None


def squeue_command(job_ids: Sequence[str], clusters: str | None) -> list[str]:
    return ["squeue", "--noheader", "--format=%i %t", "--states=all", f"--jobs={','.join(job_ids)}",
            *([f"--clusters={clusters}"] if clusters else [])]


def sacct_command(job_ids: Sequence[str], clusters: str | None) -> list[str]:
    return ["sacct", "-X", "--noheader", "--parsable2", "--format=JobID,State,ExitCode",
            f"--jobs={','.join(job_ids)}", *([f"--clusters={clusters}"] if clusters else [])]


def render_slurm_script(
    *,
    job_name: str,
    stdout_path: str,
    stderr_path: str,
    nodes: int,
    tasks_per_node: int,
    walltime: str,
    launcher_text: str,
    partition: str | None = None,
    account: str | None = None,
    qos: str | None = None,
    constraint: str | None = None,
    exclusive: bool = True,
    cores_per_node: int | None = None,
    mem_per_node: float | None = None,
    gpus_per_node: int | str | None = None,
    gres: str | None = None,
    scheduler_options: str = "",
    worker_init: str = "",
    environment: str = "",
) -> str:
    """The batch script of one block. The user's ``scheduler_options`` come after every generated
    ``#SBATCH`` line, so an option given there overrides the generated one (sbatch keeps the last)."""
    d = [
        f"--job-name={job_name}",
        f"--output={stdout_path}",
        f"--error={stderr_path}",
        f"--nodes={nodes}",
        f"--ntasks-per-node={tasks_per_node}",
        f"--time={walltime}",
    ]
    if exclusive:
        d.append("--exclusive")
    for opt, value in (("partition", partition), ("account", account), ("qos", qos), ("constraint", constraint),
                       ("gpus-per-node", gpus_per_node), ("gres", gres)):
        if value is not None:
            d.append(f"--{opt}={value}")
    exports = []
    if mem_per_node is not None:
        mem_mb = math.ceil(mem_per_node * 1024)
        d.append(f"--mem={mem_mb}M")
        exports.append(f"export PARSL_MEMORY_GB={mem_per_node:g}")
    if cores_per_node is not None:
        cpus_per_task = max(1, cores_per_node // tasks_per_node)
        d.append(f"--cpus-per-task={cpus_per_task}")
        exports.append(f"export PARSL_CORES={cpus_per_task}")
    lines = ["#!/bin/bash", *(f"#SBATCH {x}" for x in d)]
    user = scheduler_options.strip("\n")
    if user:
        lines.append(user)
    # First, before worker_init: a pool that drains before the walltime counts it from here.
    lines += ["", JOB_START_EXPORT]
    if worker_init.strip():
        lines += [worker_init.rstrip("\n"), ""]
    lines += exports
    if environment:
        lines.append(environment.rstrip("\n"))
    lines += [launcher_text.rstrip("\n"), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- validation


def _check_gpus(value: object) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and value and not any(c.isspace() for c in value):
        return value
    raise ConfigurationError("SlurmProvider.gpus_per_node must be None, a count >= 1 or a 'type:count' string "
                             f"without spaces such as 'a100:2', got {value!r}")


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ------------------------------------------------------------------------------------------ provider


class SlurmProvider(ClusterProvider):
    """Blocks as Slurm batch jobs (see the module docstring for where job states come from).

    Parameters keep the names and meanings of Parsl's SlurmProvider; ``status_source``, ``absent_grace``
    and ``query_failure_limit`` are additions. Bad values raise ``ConfigurationError`` (a ``ValueError``) or
    ``TypeError`` here, naming the parameter.

    Parameters
    ----------
    partition : str | None
        Partition the jobs go to (``--partition``); ``None``: the cluster's default partition. Like the
        other names below, one word without whitespace: it is written into an ``#SBATCH`` line.
    account : str | None
        Account the jobs are charged to (``--account``); ``None``: your default account.
    qos : str | None
        Quality of service of the jobs (``--qos``); ``None``: the default one.
    constraint : str | None
        Node features the jobs need (``--constraint``, e.g. ``"haswell"``); ``None``: any node.
    clusters : str | None
        One cluster of a multi-cluster Slurm, passed as ``--clusters`` to sbatch, squeue, sacct and
        scancel; ``None``: the local cluster. A comma-separated list is refused: job ids are per cluster.
    nodes_per_block : int
        Nodes in each job (``--nodes``); the default launcher starts one worker pool on each.
    cores_per_node : int | None
        Cores the job may use on each node: ``--cpus-per-task`` (one task per node) and ``PARSL_CORES``,
        which the worker pool sizes itself by; also used in the scaling arithmetic. ``None``: no request,
        and the pool counts the cores it may run on.
    mem_per_node : float | None
        GB of memory per node (a finite number > 0): ``--mem`` (rounded up to whole MB) and
        ``PARSL_MEMORY_GB`` for the worker pool; also used in the scaling arithmetic. ``None``: Slurm's
        default, and the pool measures what is available.
    gpus_per_node : int | str | None
        ``--gpus-per-node``: a count, or ``"type:count"`` such as ``"a100:2"`` (no spaces); ``None``: no GPUs
        requested. Which GPU a worker uses is set by the executor's ``available_accelerators``.
    gres : str | None
        Generic resources (``--gres``, e.g. ``"gpu:2"``); ``None``: none requested.
    init_blocks : int
        Blocks (jobs) submitted when the executor starts; not more than ``max_blocks``.
    min_blocks : int
        Fewest blocks the scaling strategy keeps; not more than ``max_blocks``.
    max_blocks : int
        Most blocks at a time, pending jobs included.
    parallelism : float
        Share (0 to 1) of waiting tasks that the scaling strategy finds worker slots for: 1 asks for
        enough blocks for every waiting task, smaller values ask for fewer.
    walltime : str
        Time limit of each job, ``HH:MM:SS`` or ``D-HH:MM:SS`` (``--time``, written without surrounding
        spaces). Slurm counts whole minutes (seconds are rounded up) and then ends the job: the block is
        TIMEOUT and its running tasks fail.
    scheduler_options : str
        Extra ``#SBATCH`` lines, placed after the generated ones so that they override them. Every line
        must be blank or start with ``#SBATCH`` in its first column: sbatch ignores other comments (and
        ``#SBATCH`` after a space), and any other line would end its directives and run as a command.
    worker_init : str
        Shell lines run in the job before the worker pools start (load modules, activate an environment).
    cmd_timeout : float
        Seconds an ``sbatch``, ``squeue``, ``sacct`` or ``scancel`` call may take before it is killed. A
        submit that times out raises ``SubmitException``; a status query that times out changes nothing.
    exclusive : bool
        Ask for whole nodes (``--exclusive``), so that no other job shares them.
    launcher : Launcher | None
        How the job starts a worker pool on each node; ``None`` gives ``SrunLauncher()``.
    label : str
        Name of the provider in logs.
    status_source : str
        Where job states come from: ``"auto"`` (``sacct`` when Slurm accounting works, else ``squeue``),
        ``"sacct"`` or ``"squeue"``.
    status_polling_interval : float
        Seconds between the executor's status queries (Parsl: 60); shorter notices ended jobs sooner
        and adds load on the Slurm controller.
    absent_grace : float
        Seconds after submission during which a job that Slurm does not list yet counts as pending
        (accounting lags sbatch); a job still not listed after that is MISSING.
    query_failure_limit : float
        Seconds of status queries (sacct and squeue) failing without a break after which live jobs are
        reported UNKNOWN (until a query works again); until then they keep their last known states.
    regex_job_id : str | None
        As in Parsl: a regular expression with a group named ``id`` that finds the job id in a line of
        sbatch's output (for a site whose sbatch wrapper prints something else). With it, sbatch runs
        without ``--parsable`` and each line is matched from its start. ``None``: htex_ref reads
        ``sbatch --parsable`` itself.
    status_batch_size : int
        Job ids per ``sacct`` or ``squeue`` call (Parsl: 50).
    """

    _repr_params = (
        *ClusterProvider._repr_params, "partition", "account", "qos", "constraint", "clusters", "cores_per_node",
        "mem_per_node", "gpus_per_node", "gres", "exclusive", "scheduler_options", "worker_init", "status_source",
    )

    def __init__(
        self,
        partition: str | None = None,
        account: str | None = None,
        qos: str | None = None,
        constraint: str | None = None,
        clusters: str | None = None,
        nodes_per_block: int = 1,
        cores_per_node: int | None = None,
        mem_per_node: float | None = None,
        gpus_per_node: int | str | None = None,
        gres: str | None = None,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1,
        walltime: str = "00:10:00",
        scheduler_options: str = "",
        worker_init: str = "",
        cmd_timeout: float = 10,
        exclusive: bool = True,
        launcher: Launcher | None = None,
        label: str = "slurm",
        status_source: StatusSource = "auto",
        status_polling_interval: float = 10,
        absent_grace: float = 30,
        query_failure_limit: float = 600,
        regex_job_id: str | None = None,
        status_batch_size: int = STATUS_BATCH_SIZE,
    ) -> None:
        owner = type(self).__name__
        self._job_id_pattern = _check_regex_job_id(regex_job_id)
        self.regex_job_id = regex_job_id
        if not isinstance(status_batch_size, int) or isinstance(status_batch_size, bool) or status_batch_size < 1:
            raise ConfigurationError(f"SlurmProvider.status_batch_size must be an int >= 1, got {status_batch_size!r}")
        self.status_batch_size = status_batch_size
        self.partition = check_optional_word(owner, "partition", partition)
        self.account = check_optional_word(owner, "account", account)
        self.qos = check_optional_word(owner, "qos", qos)
        self.constraint = check_optional_word(owner, "constraint", constraint)
        self.clusters = check_optional_word(owner, "clusters", clusters)
        if self.clusters is not None and "," in self.clusters:
            # Job ids are per cluster; with several clusters an id alone does not name one job.
            raise ConfigurationError(f"SlurmProvider.clusters must name one cluster, got {clusters!r}")
        self.gres = check_optional_word(owner, "gres", gres)
        self.gpus_per_node = _check_gpus(gpus_per_node)
        if not isinstance(exclusive, bool):
            raise ConfigurationError(f"SlurmProvider.exclusive must be a bool, got {exclusive!r}")
        self.exclusive = exclusive
        # sbatch reads '#SBATCH' only in the first column (a leading space makes it a plain comment).
        self.scheduler_options = check_directive_lines(owner, "scheduler_options", scheduler_options, "#SBATCH",
                                                       "sbatch", indent_ok=False, foreign=_FOREIGN_DIRECTIVES)
        if status_source not in ("auto", "sacct", "squeue"):
            raise ConfigurationError(f"SlurmProvider.status_source must be 'auto', 'sacct' or 'squeue', "
                                     f"got {status_source!r}")
        self.status_source: StatusSource = status_source
        #: Whether sacct answers; None until the first status query finds out (status_source="auto").
        self.accounting: bool | None = {"auto": None, "sacct": True, "squeue": False}[status_source]
        #: Jobs squeue showed ended before sacct listed them: when it first did (``clock()``).
        self._ended_before_sacct: dict[str, float] = {}
        super().__init__(
            label=label,
            nodes_per_block=nodes_per_block,
            init_blocks=init_blocks,
            min_blocks=min_blocks,
            max_blocks=max_blocks,
            parallelism=parallelism,
            walltime=walltime,
            launcher=launcher if launcher is not None else SrunLauncher(),
            worker_init=worker_init,
            cmd_timeout=cmd_timeout,
            status_polling_interval=status_polling_interval,
            absent_grace=absent_grace,
            query_failure_limit=query_failure_limit,
            cores_per_node=cores_per_node,
            mem_per_node=mem_per_node,
        )

    # --------------------------------------------------------------------------------- pure parts

    def render_script(
        self, *, job_name: str, launcher_text: str, stdout_path: str, stderr_path: str, tasks_per_node: int,
    ) -> str:
        return render_slurm_script(
            job_name=job_name, stdout_path=stdout_path, stderr_path=stderr_path, nodes=self.nodes_per_block,
            tasks_per_node=tasks_per_node, walltime=self.walltime, launcher_text=launcher_text,
            partition=self.partition, account=self.account, qos=self.qos, constraint=self.constraint,
            exclusive=self.exclusive, cores_per_node=self.cores_per_node, mem_per_node=self.mem_per_node,
            gpus_per_node=self.gpus_per_node, gres=self.gres, scheduler_options=self.scheduler_options,
            worker_init=self.worker_init, environment=self.job_environment(job_name),
        )

    def _cluster_args(self) -> list[str]:
        return [f"--clusters={self.clusters}"] if self.clusters else []

    def submit_command(self, script_path: str) -> list[str]:
        parsable = [] if self._job_id_pattern is not None else ["--parsable"]
        return ["sbatch", *parsable, *self._cluster_args(), script_path]

    def parse_submit_output(self, stdout: str) -> str | None:
        if self._job_id_pattern is None:
            return parse_sbatch(stdout)
        for line in stdout.splitlines():
            m = self._job_id_pattern.match(line)
            if m and m.group("id"):
                return m.group("id")
        return None

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        return ["scancel", *self._cluster_args(), *job_ids]

    # ----------------------------------------------------------------------------------- queries

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        found: dict[str, JobStatus] = {}
        rest = list(job_ids)
        sacct_answered = False
        if self.accounting is not False:
            sacct_failure = None
            for batch in _chunks(rest, self.status_batch_size):
                result = self._run(sacct_command(batch, self.clusters))
                if result.ok:
                    if self.accounting is None:
                        logger.info("%s: Slurm accounting works: job states come from sacct", self.label)
                    self.accounting = True
                    found.update(parse_sacct(result.stdout))
                elif _ACCOUNTING_DISABLED in result.stderr.lower() and self.status_source == "auto":
                    logger.info("%s: Slurm accounting is disabled (%s): job states come from squeue",
                                self.label, result.stderr.strip())
                    self.accounting = False
                    break
                else:
                    sacct_failure = result
                    break
            if sacct_failure is not None:
                # slurmdbd may be down for a while: squeue still knows recent jobs.
                logger.warning("%s: %s; asking squeue instead", self.label, _describe_failure(sacct_failure))
            sacct_answered = bool(self.accounting) and sacct_failure is None
            # Jobs sacct does not list yet (it lags sbatch by seconds) are asked of squeue below.
            rest = [j for j in rest if j not in found]
        for batch in _chunks(rest, self.status_batch_size):
            result = self._run(squeue_command(batch, self.clusters))
            if result.ok:
                # Only what was asked: sacct's answer for the other jobs is the better one.
                asked = set(batch)
                listed = {j: st for j, st in parse_squeue(result.stdout).items() if j in asked}
                if sacct_answered:
                    self._wait_for_sacct(listed)
                found.update(listed)
            elif _INVALID_JOB_ID in result.stderr.lower():
                # squeue fails this way when it knows none of the ids (all purged after MinJobAge): the
                # jobs are not listed, which is an answer, not a failed query.
                continue
            else:
                raise RuntimeError(_describe_failure(result))
        for j in [j for j in self._ended_before_sacct if j in found and j not in rest]:
            del self._ended_before_sacct[j]  # sacct has listed it now
        return {j: s for j, s in found.items() if j in job_ids}

    def _wait_for_sacct(self, listed: dict[str, JobStatus]) -> None:
        """A job squeue shows ended but sacct does not list yet keeps its last state for up to
        ``SACCT_LAG_GRACE`` seconds, so that its end is reported once, with sacct's exit code (which the
        block error handler shows), rather than without it from squeue. After that squeue's word stands."""
        now = self.clock()
        for job_id, st in listed.items():
            job = self.jobs.get(job_id)
            if not st.terminal or job is None or job.cancel_requested or job.status.terminal:
                continue
            first = self._ended_before_sacct.setdefault(job_id, now)
            if now - first < SACCT_LAG_GRACE:
                listed[job_id] = job.status
            else:
                del self._ended_before_sacct[job_id]


def _describe_failure(result: CommandResult) -> str:
    return (f"`{shlex.join(result.argv)}` exited with code {result.returncode}: "
            f"{result.stderr.strip() or result.stdout.strip() or '(no output)'}")
