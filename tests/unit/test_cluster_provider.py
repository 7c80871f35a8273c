"""The shared cluster-provider parts: the command runner, walltimes, status merging and the job table."""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from pathlib import Path

import psutil
import pytest

from htex_ref.errors import (
    ConfigurationError,
    ExecutionProviderException,
    SchedulerCommandTimeout,
    SubmitException,
)
from htex_ref.launchers import SimpleLauncher, SrunLauncher
from htex_ref.providers.base import JobState, JobStatus
from htex_ref.providers.cluster import (
    ClusterProvider,
    format_walltime,
    merge_status,
    parse_walltime,
    run_command,
)
from tests.conftest import wait_until

# ------------------------------------------------------------------------------------ run_command


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_timeout_kills_the_whole_group_and_raises(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 100 & echo $! > {pids}; echo $$ >> {pids}; echo started; wait"
    t0 = time.monotonic()
    with pytest.raises(SchedulerCommandTimeout) as info:
        run_command(["sh", "-c", script], timeout=0.5)
    elapsed = time.monotonic() - t0
    assert elapsed < 5, f"run_command took {elapsed:.1f} s to give up on a 0.5 s time-out"
    err = info.value
    assert isinstance(err, ExecutionProviderException) and isinstance(err, TimeoutError)
    assert err.timeout == 0.5 and "sleep 100" in err.command_line
    assert "0.5 s" in str(err) and "cmd_timeout" in str(err)
    child, shell = (int(p) for p in pids.read_text().split())
    assert wait_until(lambda: not alive(child) and not alive(shell), 5), "processes of the timed-out command survived"


def test_plain_sleep_times_out_quickly() -> None:
    t0 = time.monotonic()
    with pytest.raises(SchedulerCommandTimeout):
        run_command(["sleep", "100"], timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert not [p for p in psutil.process_iter(["cmdline", "ppid"])
                if p.info["cmdline"] == ["sleep", "100"] and p.info["ppid"] == os.getpid()]


def test_results_are_returned_whatever_the_exit_code(tmp_path: Path) -> None:
    r = run_command(["sh", "-c", 'read x; echo "got $x in $(pwd) with $GREETING"; echo oops >&2; exit 4'],
                    timeout=10, input="data\n", env={"GREETING": "hi"}, cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (4, f"got data in {tmp_path} with hi\n", "oops\n")
    assert not r.ok and r.duration >= 0
    assert r.command_line == "sh -c " + shlex.quote(r.argv[2])
    assert "exit code: 4" in r.describe() and "oops" in r.describe()


def test_a_missing_command_is_exit_code_127() -> None:
    r = run_command(["htex-no-such-command", "x"], timeout=5)
    assert r.returncode == 127 and "htex-no-such-command" in r.stderr and "PATH=" in r.stderr


def test_runner_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="argv"):
        run_command([], timeout=1)
    with pytest.raises(ValueError, match="timeout"):
        run_command(["true"], timeout=0)


# -------------------------------------------------------------------------------------- walltime


@pytest.mark.parametrize(("text", "seconds"), [
    ("00:20:00", 1200), ("1:00:00", 3600), ("48:00:30", 48 * 3600 + 30), ("2-01:00:00", 49 * 3600), ("0:0:5", 5),
])
def test_walltime_parses(text: str, seconds: int) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("bad", ["20", "00:60:00", "00:00:61", "00:00:00", "1h", "", 1200, None, "-1:00:00"])
def test_bad_walltime_is_named(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="walltime"):
        parse_walltime(bad)


def test_walltime_formats() -> None:
    assert [format_walltime(s) for s in (5, 1200, 49 * 3600 + 61)] == ["00:00:05", "00:20:00", "49:01:01"]
    assert all(parse_walltime(format_walltime(s)) == s for s in (1, 59, 3600, 86400 * 3 + 7))


# ---------------------------------------------------------------------------------- merge_status

OUT, ERR = "/runs/job.stdout", "/runs/job.stderr"
PENDING = JobStatus(JobState.PENDING, "submitted", None, OUT, ERR)
RUNNING = JobStatus(JobState.RUNNING, None, None, OUT, ERR)
GRACE = 30.0


def polled(state: JobState, message: str | None = None, exit_code: int | None = None) -> JobStatus:
    # Parsers do not know where the job's output goes: merging fills the paths in.
    return JobStatus(state, message, exit_code)


@pytest.mark.parametrize(("previous", "new", "age", "cancel_requested", "expected_state"), [
    # The scheduler's answer is taken for a live job.
    (PENDING, polled(JobState.RUNNING), 5, False, JobState.RUNNING),
    (RUNNING, polled(JobState.COMPLETED, exit_code=0), 500, False, JobState.COMPLETED),
    (RUNNING, polled(JobState.FAILED, exit_code=2), 500, False, JobState.FAILED),
    (RUNNING, polled(JobState.HELD), 500, False, JobState.HELD),
    (RUNNING, polled(JobState.TIMEOUT), 500, False, JobState.TIMEOUT),
    # Terminal states are never overwritten, whatever comes later.
    (JobStatus(JobState.COMPLETED, None, 0, OUT, ERR), polled(JobState.RUNNING), 500, False, JobState.COMPLETED),
    (JobStatus(JobState.FAILED, None, 1, OUT, ERR), None, 500, False, JobState.FAILED),
    (JobStatus(JobState.MISSING, "gone", None, OUT, ERR), polled(JobState.RUNNING), 500, False, JobState.MISSING),
    # A job we cancelled stays CANCELLED even when the scheduler later says FAILED or COMPLETED.
    (JobStatus(JobState.CANCELLED, "by us", None, OUT, ERR), polled(JobState.FAILED, exit_code=271), 500, True,
     JobState.CANCELLED),
    (JobStatus(JobState.CANCELLED, "by us", None, OUT, ERR), polled(JobState.COMPLETED), 500, False,
     JobState.CANCELLED),
    # A cancel that was asked for but not confirmed: the job's end is reported as CANCELLED.
    (RUNNING, polled(JobState.FAILED, "killed by signal 15", 271), 500, True, JobState.CANCELLED),
    (RUNNING, polled(JobState.COMPLETED, exit_code=0), 500, True, JobState.CANCELLED),
    (RUNNING, None, 500, True, JobState.CANCELLED),
    (RUNNING, polled(JobState.RUNNING), 500, True, JobState.RUNNING),
    # Absent just after submission (accounting lags): still pending; absent later: MISSING.
    (PENDING, None, 0, False, JobState.PENDING),
    (PENDING, None, GRACE - 0.1, False, JobState.PENDING),
    (PENDING, None, GRACE, False, JobState.MISSING),
    (RUNNING, None, 3600, False, JobState.MISSING),
])
def test_merge_status(previous: JobStatus, new: JobStatus | None, age: float, cancel_requested: bool,
                      expected_state: JobState) -> None:
    submitted_at = 1000.0
    merged = merge_status(previous, new, submitted_at, submitted_at + age, GRACE, cancel_requested)
    assert merged.state is expected_state
    assert (merged.stdout_path, merged.stderr_path) == (OUT, ERR)
    if previous.terminal or (new is None and age < GRACE):
        assert merged is previous
    if expected_state is JobState.MISSING and not previous.terminal:
        assert merged.message is not None and "no longer lists" in merged.message and OUT in merged.message
    if expected_state is JobState.CANCELLED and not previous.terminal:
        assert merged.message is not None and "cancelled by htex_ref" in merged.message
        assert (new is None) or new.state.name in merged.message


def test_merge_keeps_the_schedulers_details() -> None:
    merged = merge_status(RUNNING, polled(JobState.FAILED, "exit 2", 2), 0, 100, GRACE)
    assert (merged.message, merged.exit_code, merged.stdout_path) == ("exit 2", 2, OUT)
    own_paths = JobStatus(JobState.RUNNING, None, None, "/elsewhere.out", "/elsewhere.err")
    assert merge_status(RUNNING, own_paths, 0, 100, GRACE).stdout_path == "/elsewhere.out"


# ----------------------------------------------------------------------------- ClusterProvider


class ToyProvider(ClusterProvider):
    """A scheduler whose commands are small shell snippets; its queue is a dict the test edits."""

    def __init__(self, **kwargs: object) -> None:
        defaults: dict[str, object] = dict(
            label="toy", nodes_per_block=1, init_blocks=1, min_blocks=0, max_blocks=2, parallelism=1,
            walltime="00:10:00", launcher=SimpleLauncher(), worker_init="", cmd_timeout=5,
            status_polling_interval=1, absent_grace=30.0, query_failure_limit=100.0)
        defaults.update(kwargs)
        super().__init__(**defaults)  # type: ignore[arg-type]
        self.submit_shell = "echo 'job 17 queued'"
        self.cancel_shell = "true"
        self.queue: dict[str, JobStatus] = {}
        self.query_error: Exception | None = None
        self.queries: list[list[str]] = []

    def render_script(self, *, job_name: str, launcher_text: str, stdout_path: str, stderr_path: str,
                      tasks_per_node: int) -> str:
        env = self.job_environment(job_name)
        return f"#!/bin/bash\n#TOY out={stdout_path} err={stderr_path}\n{env}{launcher_text}\n"

    def submit_command(self, script_path: str) -> list[str]:
        return ["sh", "-c", self.submit_shell, "toy-submit", script_path]

    def parse_submit_output(self, stdout: str) -> str | None:
        words = stdout.split()
        return words[1] if len(words) > 1 and words[0] == "job" else None

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        return ["sh", "-c", self.cancel_shell, "toy-cancel", *job_ids]

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        self.queries.append(list(job_ids))
        if self.query_error is not None:
            raise self.query_error
        return {j: self.queue[j] for j in job_ids if j in self.queue}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def toy(tmp_path: Path, **kwargs: object) -> tuple[ToyProvider, Clock]:
    p = ToyProvider(**kwargs)
    p.script_dir = str(tmp_path / "scripts")
    clock = Clock()
    p.clock = clock
    return p, clock


def test_submit_keeps_script_output_paths_and_command(tmp_path: Path) -> None:
    p, _ = toy(tmp_path)
    job = p.submit("echo hello", 1, "htex_ref.toy.block-0")
    assert job == "17"
    rec = p.jobs[job]
    script = Path(rec.script_path)
    assert script == tmp_path / "scripts" / "htex_ref.toy.block-0.submit"
    text = script.read_text()
    assert "echo hello" in text and f"out={rec.stdout_path}" in text
    assert f"export HTEX_SCRIPT_DIR={tmp_path / 'scripts'}" in text
    log = Path(rec.submit_log_path).read_text()
    assert f"toy-submit {script}" in log and "job 17 queued" in log and "exit code: 0" in log
    st = p.status([job])[0]
    assert (st.state, st.stdout_path, st.stderr_path) == (JobState.PENDING, rec.stdout_path, rec.stderr_path)
    # The same job name again does not overwrite the first script.
    p.submit_shell = "echo 'job 18'"
    assert p.submit("echo again", 1, "htex_ref.toy.block-0") == "18"
    assert Path(p.jobs["18"].script_path).name == "htex_ref.toy.block-0.1.submit"
    assert "echo hello" in script.read_text()


def test_submit_failure_names_script_command_code_and_stderr(tmp_path: Path) -> None:
    p, _ = toy(tmp_path)
    p.submit_shell = "echo 'error: queue closed' >&2; exit 3"
    with pytest.raises(SubmitException) as info:
        p.submit("echo hi", 1, "blk")
    e = info.value
    script = tmp_path / "scripts" / "blk.submit"
    assert (e.retcode, e.stderr) == (3, "error: queue closed\n")
    assert str(script) in str(e) and "toy-submit" in str(e) and "queue closed" in str(e)
    assert "exit code: 3" in (tmp_path / "scripts" / "blk.submit.log").read_text()
    assert p.jobs == {}


def test_submit_without_a_job_id_or_in_time_fails_clearly(tmp_path: Path) -> None:
    p, _ = toy(tmp_path, cmd_timeout=0.5)
    p.submit_shell = "echo accepted"
    with pytest.raises(SubmitException, match="no job id"):
        p.submit("echo hi", 1, "blk")
    p.submit_shell = "sleep 30"
    t0 = time.monotonic()
    with pytest.raises(SubmitException, match=r"did not finish within 0\.5 s") as info:
        p.submit("echo hi", 1, "slow")
    assert time.monotonic() - t0 < 5
    assert isinstance(info.value.__cause__, SchedulerCommandTimeout)
    assert "may have been submitted anyway" in str(info.value) and "slow.submit" in str(info.value)


def test_status_queries_only_live_jobs_and_applies_the_grace(tmp_path: Path) -> None:
    p, clock = toy(tmp_path)
    a = p.submit("a", 1, "a")
    p.submit_shell = "echo 'job 18'"
    b = p.submit("b", 1, "b")
    # Neither is listed yet, a second after submission: still pending.
    clock.now += 1
    assert [s.state for s in p.status([a, b])] == [JobState.PENDING, JobState.PENDING]
    p.queue = {a: JobStatus(JobState.COMPLETED, None, 0), b: JobStatus(JobState.RUNNING)}
    clock.now += 1
    assert [s.state for s in p.status([a, b])] == [JobState.COMPLETED, JobState.RUNNING]
    p.queue = {}
    clock.now += 10
    assert p.status([b])[0].state is JobState.RUNNING  # unlisted, but within the grace period
    assert p.queries[-1] == [b]  # the ended job is not asked about again
    clock.now += 30
    st = p.status([a, b])
    assert [s.state for s in st] == [JobState.COMPLETED, JobState.MISSING]
    assert st[1].stdout_path == p.jobs[b].stdout_path
    assert p.jobs[b].history == [JobState.PENDING, JobState.RUNNING, JobState.MISSING]
    n = len(p.queries)
    p.status([a, b])
    assert len(p.queries) == n, "ended jobs were queried again"
    assert p.status(["999"])[0].state is JobState.MISSING


def test_failed_queries_keep_states_until_the_limit_then_say_unknown(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    p, clock = toy(tmp_path, query_failure_limit=100.0)
    job = p.submit("a", 1, "a")
    p.queue = {job: JobStatus(JobState.RUNNING)}
    assert p.status([job])[0].state is JobState.RUNNING
    p.query_error = RuntimeError("`qstat` exited with code 1: cannot connect to server")
    with caplog.at_level(logging.WARNING):
        for _ in range(6):
            clock.now += 19  # the first failure, then 95 s of failures from it: under the limit
            assert p.status([job])[0].state is JobState.RUNNING
    assert "cannot connect to server" in caplog.text and "keep their last known states" in caplog.text
    caplog.clear()
    clock.now += 5
    with caplog.at_level(logging.ERROR):
        st = p.status([job])[0]
    assert st.state is JobState.UNKNOWN and not st.terminal
    assert st.message is not None and "last known: RUNNING" in st.message and "cannot connect to server" in st.message
    assert st.stdout_path == p.jobs[job].stdout_path
    assert "query_failure_limit=100" in caplog.text and caplog.records[-1].levelno == logging.ERROR
    # Cancelling still works while the scheduler cannot be asked about jobs.
    p.submit_shell = "echo 'job 18'"
    other = p.submit("b", 1, "b")
    assert p.cancel([other]) == [True]
    # The query works again: the jobs' states move on.
    p.query_error = None
    p.queue = {job: JobStatus(JobState.COMPLETED, None, 0)}
    clock.now += 1
    assert p.status([job])[0].state is JobState.COMPLETED


def test_a_timed_out_query_keeps_states(tmp_path: Path) -> None:
    p, clock = toy(tmp_path)
    job = p.submit("a", 1, "a")
    p.query_error = SchedulerCommandTimeout("qstat -f", 5)
    clock.now += 3600  # far beyond the absent grace: the job must not be taken for gone
    assert p.status([job])[0].state is JobState.PENDING


def test_cancel_sets_cancelled_and_failures_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p, clock = toy(tmp_path)
    a = p.submit("a", 1, "a")
    p.submit_shell = "echo 'job 18'"
    b = p.submit("b", 1, "b")
    p.submit_shell = "echo 'job 19'"
    c = p.submit("c", 1, "c")
    assert p.cancel([a]) == [True]
    st = p.status([a])[0]
    assert st.state is JobState.CANCELLED and st.stdout_path == p.jobs[a].stdout_path
    p.queue = {a: JobStatus(JobState.FAILED, None, 271)}
    assert p.status([a])[0].state is JobState.CANCELLED
    assert p.cancel([a]) == [True]  # already ended: nothing to do
    # The cancel command fails: False, with its stderr in the log; the job's state comes from the scheduler.
    p.cancel_shell = "echo 'qdel: Unauthorized Request' >&2; exit 159"
    p.queue = {b: JobStatus(JobState.RUNNING), c: JobStatus(JobState.COMPLETED, None, 0)}
    clock.now += 1
    with caplog.at_level(logging.ERROR):
        assert p.cancel([b, c, "nope"]) == [False, True, False]
    assert "Unauthorized Request" in caplog.text and "exited with code 159" in caplog.text
    assert p.status([b])[0].state is JobState.RUNNING
    # It ends later: we had asked for it to go, so it is reported CANCELLED.
    p.queue = {b: JobStatus(JobState.FAILED, "killed", 271)}
    assert p.status([b])[0].state is JobState.CANCELLED


def test_cancel_that_times_out_returns_false(tmp_path: Path) -> None:
    p, _ = toy(tmp_path, cmd_timeout=0.5)
    job = p.submit("a", 1, "a")
    p.cancel_shell = "sleep 30"
    p.queue = {job: JobStatus(JobState.RUNNING)}
    assert p.cancel([job]) == [False]


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"walltime": "forever"}, "walltime"),
    ({"cmd_timeout": 0}, "cmd_timeout"),
    ({"status_polling_interval": -1}, "status_polling_interval"),
    ({"absent_grace": -1}, "absent_grace"),
    ({"query_failure_limit": "1"}, "query_failure_limit"),
    ({"max_blocks": -1}, "max_blocks"),
    ({"worker_init": None}, "worker_init"),
    ({"label": ""}, "label"),
    ({"cmd_timeout": float("inf")}, "cmd_timeout"),
    ({"cmd_timeout": float("nan")}, "cmd_timeout"),
    ({"absent_grace": float("nan")}, "absent_grace"),
    ({"query_failure_limit": float("nan")}, "query_failure_limit"),
    ({"query_failure_limit": float("inf")}, "query_failure_limit"),
    ({"query_failure_limit": -1}, "query_failure_limit"),
    ({"status_polling_interval": float("inf")}, "status_polling_interval"),
    ({"parallelism": True}, "parallelism"),
    ({"parallelism": float("nan")}, "parallelism"),
    ({"init_blocks": 3, "max_blocks": 2}, "init_blocks"),
    ({"mem_per_node": float("inf")}, "mem_per_node"),
    ({"cores_per_node": 0}, "cores_per_node"),
])
def test_bad_settings_are_named(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ToyProvider(**kwargs)


def test_init_blocks_above_max_blocks_names_both_and_zero_grace_is_allowed() -> None:
    with pytest.raises(ConfigurationError, match=r"init_blocks \(3\) is greater than max_blocks \(2\)"):
        ToyProvider(init_blocks=3, max_blocks=2)
    p = ToyProvider(init_blocks=2, max_blocks=2, absent_grace=0, walltime="  00:10:00 ")
    assert (p.init_blocks, p.absent_grace, p.walltime) == (2, 0.0, "00:10:00")


def test_launcher_must_be_a_launcher_and_repr_shows_settings() -> None:
    with pytest.raises(TypeError, match="launcher"):
        ToyProvider(launcher="srun")
    text = repr(ToyProvider(launcher=SrunLauncher(overrides="-K")))
    assert text.startswith("ToyProvider(label='toy'") and "SrunLauncher(overrides='-K')" in text
    assert "walltime='00:10:00'" in text


def test_argv_is_never_a_shell_line() -> None:
    # The runner takes argv lists only: a command line with shell syntax is one (missing) program name.
    r = run_command([f"{sys.executable} -c 'print(1)'"], timeout=5)
    assert r.returncode == 127
