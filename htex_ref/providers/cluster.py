"""The shared part of batch-scheduler providers: the one command runner, the job table and status merging.

``run_command`` is the only code in the cluster providers that starts a process: it runs an argv
list (no shell) in a new session with a time-out, kills the whole process group when the time-out
passes and raises ``SchedulerCommandTimeout``; any exit code is returned to the caller, who decides.

``ClusterProvider`` keeps a table of the jobs it submitted and does everything that does not depend
on the scheduler: it writes each submit script to ``{script_dir}/{job_name}.submit`` (the job's
output goes to ``.stdout`` / ``.stderr`` beside it, and the exact submit command with its output to
``.submit.log``), runs the submit command, queries only jobs that have not ended, and merges what the
scheduler says with what it knew through the pure ``merge_status``:

- an ended job (terminal state) never changes state again;
- a job this provider cancelled is CANCELLED, whatever the scheduler says about it afterwards;
- a job the scheduler does not list yet, within ``absent_grace`` seconds of its submission, keeps its
  state (accounting lags the submission by seconds); absent later, it is MISSING, with a message;
- a status query that fails or times out changes nothing: jobs keep their last known state (a
  failed ``qstat`` must not end a workflow). Once the query has failed without a break for
  ``query_failure_limit`` seconds, the live jobs are reported UNKNOWN, with the query's error and
  their last known state in the message, and every failed refresh logs an ERROR, until a query
  works again. UNKNOWN is not terminal: blocks are not given up for dead (their tasks go on; a pool
  that dies is still noticed by its missed heartbeats), they still count against ``max_blocks`` so
  no blocks are added blindly, and ``status()`` keeps answering, so that shutdown can still cancel
  every block (raising from ``status()`` would leave blocks running after shutdown).

The checks shared by the scheduler settings (one-word values such as a partition or a queue, and the
user's directive lines) are here too: ``check_optional_word`` and ``check_directive_lines``.

Subclasses supply the scheduler-specific parts as pure methods (``render_script``, ``submit_command``,
``parse_submit_output``, ``cancel_command``, and ``companion_files`` where the submit file names another
file, as HTCondor's names the job's shell script) plus ``_query``, which runs the status command(s) through
``_run`` and parses their output with pure functions.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from htex_ref.errors import ConfigurationError, SchedulerCommandTimeout, SubmitException
from htex_ref.launchers import Launcher
from htex_ref.providers.base import ExecutionProvider, JobState, JobStatus, check_number

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- runner


@dataclass(frozen=True)
class CommandResult:
    """What a scheduler command did: its argv, exit code, output and how long it took."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration: float

    @property
    def command_line(self) -> str:
        """The command as one shell-quoted line, as a user would type it."""
        return shlex.join(self.argv)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """Multi-line record of the command, for logs kept next to submit scripts."""
        return (f"$ {self.command_line}\nexit code: {self.returncode} ({self.duration:.2f} s)\n"
                f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}\n")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> CommandResult:
    """Run ``argv`` (no shell) and return its result; never waits longer than ``timeout`` seconds.

    The command runs in a session of its own. When the time-out passes, its whole process group gets
    SIGKILL and ``SchedulerCommandTimeout`` is raised. A command that cannot be started (not on PATH,
    not executable) gives exit code 127 with the reason in ``stderr``, like a shell would. ``env``
    adds to (and overrides) this process's environment.
    """
    args = tuple(str(a) for a in argv)
    if not args:
        raise ValueError("run_command needs a command, got an empty argv")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    full_env = None if env is None else {**os.environ, **env}
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            errors="replace",
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        where = f" (PATH={(full_env or os.environ).get('PATH', '')})" if isinstance(e, FileNotFoundError) else ""
        return CommandResult(args, 127, "", f"{args[0]}: cannot run: {e}{where}", time.monotonic() - start)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        try:
            # Collect what it wrote; bounded, in case something outside its group still holds the pipes.
            proc.communicate(timeout=1.0)
        except subprocess.TimeoutExpired:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.kill()
            proc.wait()
        raise SchedulerCommandTimeout(
            shlex.join(args), timeout,
            f"the scheduler may be overloaded or down: check it with `{args[0]}` by hand, "
            f"or raise cmd_timeout if it is only slow",
        ) from None
    return CommandResult(args, proc.returncode, out, err, time.monotonic() - start)


# ------------------------------------------------------------------------------------------ walltime

#: The job script's first command: when the job started, in epoch seconds, for the worker pools.
JOB_START_EXPORT = 'export HTEX_REF_JOB_START="$(date +%s)"'

def job_script(directives: list[str], scheduler_options: str, worker_init: str, environment: str,
                launcher_text: str) -> str:
    """A batch job script: the shebang, the batch system's directive lines, the user's
    ``scheduler_options`` after them (so that they win), then the job start export, ``worker_init``, the
    environment and the launcher's command."""
    user = scheduler_options.strip("\n")
    return (
        "#!/bin/bash\n"
        + "".join(line + "\n" for line in directives)
        + (user + "\n\n" if user else ("\n" if directives else ""))
        # First, before worker_init: a pool that drains before the walltime counts it from here.
        + JOB_START_EXPORT + "\n"
        + (worker_init.rstrip("\n") + "\n" if worker_init.strip() else "")
        + environment
        + "\n"
        + launcher_text.rstrip("\n") + "\n"
    )


_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})$")


def parse_walltime(value: object, name: str = "walltime") -> int:
    """Seconds in a ``[D-]HH:MM:SS`` walltime (hours may exceed 24); ConfigurationError naming ``name``."""
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string 'HH:MM:SS', got {type(value).__name__} {value!r}")
    m = _WALLTIME.match(value.strip())
    if m is None:
        raise ConfigurationError(f"{name} must look like 'HH:MM:SS' (or 'D-HH:MM:SS'), got {value!r}")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    if minutes > 59 or seconds > 59:
        raise ConfigurationError(f"{name} has minutes or seconds above 59: {value!r}")
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ConfigurationError(f"{name} must be longer than zero, got {value!r}")
    return total


def format_walltime(seconds: int) -> str:
    """``HH:MM:SS`` for a number of seconds (hours may exceed 24, as PBS and Slurm accept)."""
    if seconds < 0:
        raise ValueError(f"walltime cannot be negative, got {seconds}")
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


# ------------------------------------------------------------------------------ settings checks


def check_optional_word(owner: str, name: str, value: object) -> str | None:
    """None, or a non-empty string without whitespace: such values (a partition, an account, a queue) are
    written into a directive line of the job script, where a space would split them in two."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{owner}.{name} must be None or a string, got {type(value).__name__} {value!r}")
    if not value:
        raise ConfigurationError(f"{owner}.{name} must be None (the scheduler's default) or a non-empty string, "
                                 f"got ''")
    if any(c.isspace() for c in value):
        raise ConfigurationError(f"{owner}.{name} must be one word, without spaces, tabs or newlines (it goes into "
                                 f"a directive of the job script), got {value!r}")
    return value


def check_directive_lines(owner: str, name: str, value: object, prefix: str, tool: str, *,
                          indent_ok: bool, foreign: Mapping[str, str] | None = None) -> str:
    """``value`` if each of its lines is blank or a ``prefix`` directive; ConfigurationError naming the line.

    Only lines that ``tool`` reads as directives are let through: it ignores other comment lines (a
    ``# SBATCH`` typo would be lost without a word), and any other line would end its directives and run
    as a command in the job. ``indent_ok``: whether ``tool`` reads a directive after leading whitespace.
    ``foreign``: other comment prefixes that ``tool`` does read, each with why it is refused all the same.
    Lines are split on newlines only, as bash splits them.
    """
    if not isinstance(value, str):
        raise ConfigurationError(f"{owner}.{name} must be a string of '{prefix} ...' lines, got "
                                 f"{type(value).__name__} {value!r}")
    if "\r" in value:
        # sbatch refuses scripts with DOS line ends, and to qsub and bash a carriage return is part of a word.
        raise ConfigurationError(f"{owner}.{name} must not contain carriage returns (DOS line ends), got {value!r}")
    for number, line in enumerate(value.split("\n"), 1):
        read = line.lstrip(" \t") if indent_ok else line  # what the tool matches a directive prefix against
        if not line.strip(" \t") or read.startswith(prefix):
            continue
        text = line.lstrip()
        known = [why for other, why in (foreign or {}).items() if read.startswith(other)]
        if known:
            why = known[0]
        elif text.startswith(prefix):
            why = (f"{tool} reads a directive only where {prefix!r} starts the line, so it would ignore this one: "
                   f"remove the leading whitespace")
        elif text.startswith("#"):
            why = f"{tool} ignores comment lines other than {prefix!r} ones, so it would ignore this one"
        else:
            why = f"it is not a comment, so it would end {tool}'s directives and run as a command in the job"
        raise ConfigurationError(f"{owner}.{name} must be '{prefix} ...' lines (blank lines are allowed); "
                                 f"line {number}, {line!r}: {why}")
    return value


# ------------------------------------------------------------------------------------- status merge


def merge_status(
    previous: JobStatus,
    polled: JobStatus | None,
    submitted_at: float,
    now: float,
    absent_grace: float,
    cancel_requested: bool = False,
) -> JobStatus:
    """What a job's state is, given what we knew and what the scheduler just said (None: not listed).

    Pure. Terminal states are kept; a job we asked to cancel ends as CANCELLED; a job not listed is
    given ``absent_grace`` seconds from submission before it is MISSING. The job's stdout/stderr
    paths are carried over so that every status points at the job's output.
    """
    if previous.terminal:
        return previous
    out, err = previous.stdout_path, previous.stderr_path
    if polled is None:
        age = now - submitted_at
        if age < absent_grace:
            return previous
        new = JobStatus(
            JobState.MISSING,
            f"the scheduler no longer lists this job ({age:.0f} s after submission; absent_grace={absent_grace:g} s)"
            f", so how it ended is unknown; see {out} and {err}",
            None, out, err,
        )
    else:
        new = dataclasses.replace(polled, stdout_path=polled.stdout_path or out, stderr_path=polled.stderr_path or err)
    if cancel_requested and new.terminal and new.state is not JobState.CANCELLED:
        said = new.state.name + (f": {new.message}" if new.message else "")
        new = JobStatus(JobState.CANCELLED, f"cancelled by htex_ref (the scheduler then reported {said})",
                        new.exit_code, new.stdout_path, new.stderr_path)
    return new


# ---------------------------------------------------------------------------------------- the base


@dataclass
class ClusterJob:
    """One submitted job, as the provider knows it."""

    job_id: str
    job_name: str
    submitted_at: float
    script_path: str
    stdout_path: str
    stderr_path: str
    submit_log_path: str
    status: JobStatus
    cancel_requested: bool = False
    history: list[JobState] = field(default_factory=list)
    #: The last state the scheduler gave (``status`` may say UNKNOWN while the scheduler cannot be asked).
    last_known: JobState = JobState.PENDING


def _safe_filename(job_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", job_name) or "job"


class ClusterProvider(ExecutionProvider):
    """Base of the batch-scheduler providers (Slurm, PBS Pro); see the module docstring."""

    #: Constructor parameters shown by ``repr``.
    _repr_params: tuple[str, ...] = (
        "label", "nodes_per_block", "init_blocks", "min_blocks", "max_blocks", "parallelism", "walltime",
        "launcher", "cmd_timeout",
    )

    def __init__(
        self,
        *,
        label: str,
        nodes_per_block: int,
        init_blocks: int,
        min_blocks: int,
        max_blocks: int,
        parallelism: float,
        walltime: str,
        launcher: Launcher,
        worker_init: str,
        cmd_timeout: float,
        status_polling_interval: float,
        absent_grace: float = 30.0,
        query_failure_limit: float = 600.0,
        cores_per_node: int | None = None,
        mem_per_node: float | None = None,
    ) -> None:
        owner = type(self).__name__
        self._configure(
            label=label, launcher=launcher, worker_init=worker_init, cmd_timeout=cmd_timeout,
            nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks, max_blocks=max_blocks,
            parallelism=parallelism, cores_per_node=cores_per_node, mem_per_node=mem_per_node,
        )
        self.walltime_seconds: int = parse_walltime(walltime, f"{owner}.walltime")
        # What goes into the script: the value that was checked, not one with spaces around it.
        self.walltime = walltime.strip()
        self._status_polling_interval = check_number(owner, "status_polling_interval", status_polling_interval,
                                                      unit="seconds")
        self.absent_grace = check_number(owner, "absent_grace", absent_grace, zero_ok=True, unit="seconds")
        self.query_failure_limit = check_number(owner, "query_failure_limit", query_failure_limit, unit="seconds")
        self.script_dir: str | None = None
        self.jobs: dict[str, ClusterJob] = {}
        #: Monotonic clock; tests replace it to step through time-outs without waiting.
        self.clock: Callable[[], float] = time.monotonic
        self._query_failing_since: float | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._repr_params)
        return f"{type(self).__name__}({args})"

    @property
    def status_polling_interval(self) -> float:
        return self._status_polling_interval

    # ------------------------------------------------------------------ scheduler-specific, pure

    @abstractmethod
    def render_script(
        self, *, job_name: str, launcher_text: str, stdout_path: str, stderr_path: str, tasks_per_node: int,
    ) -> str:
        """The complete submit script for one block (pure: a function of the settings and arguments)."""

    def companion_files(
        self, *, job_name: str, launcher_text: str, stdout_path: str, stderr_path: str, tasks_per_node: int,
    ) -> dict[str, str]:
        """Files the submit script refers to, by the suffix that follows ``job_name`` in their names; each is
        written (executable) beside the script before the submit command runs. None by default; HTCondor's
        submit description names the job's shell script this way (pure, like ``render_script``)."""
        return {}

    @abstractmethod
    def submit_command(self, script_path: str) -> list[str]:
        """The argv that submits ``script_path``."""

    @abstractmethod
    def parse_submit_output(self, stdout: str) -> str | None:
        """The job id in the submit command's output, or None if there is none."""

    @abstractmethod
    def cancel_command(self, job_ids: list[str]) -> list[str]:
        """The argv that cancels ``job_ids``."""

    @abstractmethod
    def _query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        """Ask the scheduler about ``job_ids`` (through ``_run``); jobs it does not list are left out.

        Raise (any exception, with a message that names the command and its error) when the answer
        cannot be had: the provider then keeps the jobs' previous states.
        """

    # ------------------------------------------------------------------------------ shared parts

    def _run(self, argv: Sequence[str], *, timeout: float | None = None,
             cwd: str | os.PathLike[str] | None = None) -> CommandResult:
        """Every scheduler command goes through here (tests put fake commands on PATH)."""
        return run_command(argv, timeout=timeout or self.cmd_timeout, cwd=cwd)

    def job_environment(self, job_name: str) -> str:
        """Lines every job script runs before the launcher: its name and where launchers write files."""
        script_dir = self._script_dir()
        return f"export JOBNAME={shlex.quote(job_name)}\nexport HTEX_SCRIPT_DIR={shlex.quote(str(script_dir))}\n"

    def _script_dir(self) -> Path:
        return Path(self.script_dir or ".").absolute()

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex_ref.auto") -> str:
        if not isinstance(job_name, str) or not job_name:
            raise ConfigurationError(f"job_name must be a non-empty string, got {job_name!r}")
        script_dir = self._script_dir()
        script_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            base = _safe_filename(job_name)
            name, n = base, 0
            while (script_dir / f"{name}.submit").exists():
                n += 1
                name = f"{base}.{n}"
            script = script_dir / f"{name}.submit"
            stdout_path, stderr_path = str(script_dir / f"{name}.stdout"), str(script_dir / f"{name}.stderr")
            log = script_dir / f"{name}.submit.log"
            launcher_text = self.launcher(command, tasks_per_node, self.nodes_per_block)
            text = self.render_script(job_name=name, launcher_text=launcher_text, stdout_path=stdout_path,
                                      stderr_path=stderr_path, tasks_per_node=tasks_per_node)
            script.write_text(text)
            script.chmod(0o755)
            for suffix, body in self.companion_files(job_name=name, launcher_text=launcher_text,
                                                     stdout_path=stdout_path, stderr_path=stderr_path,
                                                     tasks_per_node=tasks_per_node).items():
                companion = script_dir / f"{name}{suffix}"
                companion.write_text(body)
                companion.chmod(0o755)
            argv = self.submit_command(str(script))
            try:
                result = self._run(argv, cwd=script_dir)
            except SchedulerCommandTimeout as e:
                log.write_text(f"$ {e.command_line}\ntimed out after {e.timeout:g} s and was killed\n")
                raise SubmitException(
                    name, f"{e}; the job may have been submitted anyway (look for job name {name!r}); "
                          f"script {script}, command log {log}") from e
            log.write_text(f"cwd: {script_dir}\n{result.describe()}")
            if not result.ok:
                raise SubmitException(
                    name, f"submit command `{result.command_line}` exited with code {result.returncode}; "
                          f"script {script}, command log {log}",
                    result.stdout, result.stderr, result.returncode)
            job_id = self.parse_submit_output(result.stdout)
            if not job_id:
                raise SubmitException(
                    name, f"no job id in the output of `{result.command_line}`; script {script}, command log {log}",
                    result.stdout, result.stderr, result.returncode)
            status = JobStatus(JobState.PENDING, "submitted", None, stdout_path, stderr_path)
            self.jobs[job_id] = ClusterJob(job_id, name, self.clock(), str(script), stdout_path, stderr_path,
                                           str(log), status, history=[JobState.PENDING])
            logger.info("%s: submitted job %s (%s) with `%s`", self.label, job_id, script, result.command_line)
            return job_id

    def status(self, job_ids: list[str]) -> list[JobStatus]:
        with self._lock:
            live = [j for j in dict.fromkeys(job_ids) if j in self.jobs and not self.jobs[j].status.terminal]
            if live:
                self._refresh(live)
            return [self.jobs[j].status if j in self.jobs
                    else JobStatus(JobState.MISSING, f"job {j} was not submitted by this provider")
                    for j in job_ids]

    def _refresh(self, job_ids: list[str]) -> None:
        now = self.clock()
        try:
            polled = self._query(job_ids)
        except Exception as e:
            if self._query_failing_since is None:
                self._query_failing_since = now
            failing_for = now - self._query_failing_since
            if failing_for < self.query_failure_limit:
                logger.warning("%s: the status query for jobs %s failed (failing for %.0f s; query_failure_limit=%g s);"
                               " they keep their last known states: %s",
                               self.label, job_ids, failing_for, self.query_failure_limit, e)
                return
            logger.error("%s: the scheduler's status query has failed for %.0f s (query_failure_limit=%g s); the "
                         "state of jobs %s is UNKNOWN until it works again: %s",
                         self.label, failing_for, self.query_failure_limit, job_ids, e)
            for job_id in job_ids:
                job = self.jobs[job_id]
                last = job.last_known.name
                job.status = JobStatus(
                    JobState.UNKNOWN,
                    f"state unknown (last known: {last}): the scheduler's status query has failed for "
                    f"{failing_for:.0f} s: {e}", None, job.stdout_path, job.stderr_path)
            return
        self._query_failing_since = None
        for job_id in job_ids:
            job = self.jobs[job_id]
            new = merge_status(job.status, polled.get(job_id), job.submitted_at, now, self.absent_grace,
                               job.cancel_requested)
            if new.state is not job.status.state:
                job.history.append(new.state)
                job.last_known = new.state
                log = logger.warning if new.state in (JobState.FAILED, JobState.MISSING, JobState.TIMEOUT) \
                    else logger.info
                log("%s: job %s is now %s%s", self.label, job_id, new.state.name,
                    f" ({new.message})" if new.message else "")
            job.status = new

    def cancel(self, job_ids: list[str]) -> list[bool]:
        with self._lock:
            results: dict[str, bool] = {}
            to_cancel: list[str] = []
            for job_id in dict.fromkeys(job_ids):
                job = self.jobs.get(job_id)
                if job is None:
                    logger.warning("%s: cannot cancel job %s: this provider did not submit it", self.label, job_id)
                    results[job_id] = False
                elif job.status.terminal:
                    results[job_id] = True
                else:
                    to_cancel.append(job_id)
            if to_cancel:
                for job_id in to_cancel:
                    self.jobs[job_id].cancel_requested = True
                argv = self.cancel_command(to_cancel)
                try:
                    result = self._run(argv)
                    failure = None if result.ok else (
                        f"`{result.command_line}` exited with code {result.returncode}: {result.stderr.strip()}")
                except SchedulerCommandTimeout as e:
                    failure = str(e)
                if failure is None:
                    for job_id in to_cancel:
                        job = self.jobs[job_id]
                        job.status = JobStatus(JobState.CANCELLED, "cancelled by htex_ref", None,
                                               job.stdout_path, job.stderr_path)
                        job.history.append(JobState.CANCELLED)
                        results[job_id] = True
                else:
                    logger.error("%s: cancelling jobs %s failed: %s; asking the scheduler whether they ended anyway",
                                 self.label, to_cancel, failure)
                    self._refresh(to_cancel)
                    for job_id in to_cancel:
                        results[job_id] = self.jobs[job_id].status.terminal
            return [results[j] for j in job_ids]
