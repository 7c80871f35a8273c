"""SlurmProvider: script rendering, the state tables and parsers (on output recorded from a real Slurm, see
tests/data/slurm/README.md), and the provider's commands against fake Slurm commands on PATH."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from htex_ref.errors import ConfigurationError, SubmitException
from htex_ref.launchers import SimpleLauncher, SingleNodeLauncher, SrunLauncher
from htex_ref.providers.base import TERMINAL_STATES, JobState
from htex_ref.providers.cluster import JOB_START_EXPORT
from htex_ref.providers.slurm import (
    SACCT_LAG_GRACE,
    SLURM_STATES,
    SlurmProvider,
    parse_sacct,
    parse_sbatch,
    parse_squeue,
    render_slurm_script,
    sacct_command,
    slurm_status,
    squeue_command,
)

DATA = Path(__file__).parent.parent / "data" / "slurm"

P, R, CA, CD, F, TO, H, U = (JobState.PENDING, JobState.RUNNING, JobState.CANCELLED, JobState.COMPLETED,
                             JobState.FAILED, JobState.TIMEOUT, JobState.HELD, JobState.UNKNOWN)


def data(name: str) -> str:
    return (DATA / name).read_text()


# ------------------------------------------------------------------------------------- state tables

#: What each job of the recording is (README.md in tests/data/slurm), as squeue shows it.
RECORDED_SQUEUE = {
    "1": CD, "3": CD, "5": CD, "6": CD, "7": CD, "8": CD, "19": CD,
    "2": CA, "11": CA, "17": CA, "18": CA, "20": CA,
    "4": F, "16": F,
    "9": TO, "10": TO,  # TIMEOUT, DEADLINE
    "12": H,  # SUSPENDED
    "13": P, "15": P,
    "14": H,  # SPECIAL_EXIT: requeued held
    "21": R,
    "22": R,  # COMPLETING
}


@pytest.mark.parametrize("name", ["squeue_compact.txt", "squeue_long.txt"])
def test_recorded_squeue(name: str) -> None:
    got = parse_squeue(data(name))
    assert {j: s.state for j, s in got.items()} == RECORDED_SQUEUE
    assert got["22"].message is not None and "completing" in got["22"].message.lower()
    assert all(s.exit_code is None for s in got.values())


def test_recorded_sacct() -> None:
    got = parse_sacct(data("sacct.txt"))
    # sacct shows requeued (13, 14) as PENDING and a job whose processes are being killed as CANCELLED.
    expected = {**RECORDED_SQUEUE, "14": P, "22": CA}
    assert {j: s.state for j, s in got.items()} == expected
    assert got["4"].exit_code == 3 and "exit code 3" in (got["4"].message or "")
    assert got["1"].exit_code == 0
    assert got["2"].message == "CANCELLED by 0"


def test_recorded_with_clusters() -> None:
    for text in (data("squeue_clusters.txt"), data("squeue_clusters_header.txt")):
        assert {j: s.state for j, s in parse_squeue(text).items()} == {"21": R, "22": R}
    assert {j: s.state for j, s in parse_sacct(data("sacct_clusters.txt")).items()} == {"21": R, "22": CA}


def test_handwritten_squeue_states() -> None:
    got = {j: s.state for j, s in parse_squeue(data("squeue_handwritten.txt")).items()}
    compact = {"101": P, "102": R, "103": R, "104": R, "105": F, "106": F, "107": F, "108": F, "109": TO,
               "110": P, "111": P, "112": H, "113": H, "114": H, "115": U}
    long = {str(int(j) + 15): s for j, s in compact.items()}
    assert got == {**compact, **long}


def test_handwritten_sacct_lines() -> None:
    got = parse_sacct(data("sacct_handwritten.txt"))
    assert {j: s.state for j, s in got.items()} == {
        "201": F, "202": F, "203": F, "204": F, "205": TO, "206": P, "207": R, "208": CA, "209": F, "210": H,
        "211": U, "212": CD, "213": R}
    assert got["208"].message == "CANCELLED by 1000"
    assert got["209"].exit_code == -9 and "signal 9" in (got["209"].message or "")
    assert got["211"].message == "unknown Slurm job state 'SOMETHING_NEW'"
    assert got["212"].exit_code is None and got["213"].exit_code is None


def test_every_state_has_a_short_and_a_long_name_that_agree() -> None:
    short = {k: v for k, v in SLURM_STATES.items() if len(k) <= 3}
    long = {k: v for k, v in SLURM_STATES.items() if len(k) > 3}
    assert len(short) == len(long) == 24
    for code in short:
        assert slurm_status(code).state == slurm_status(code.lower()).state
    # Terminal for the executor only when the job's processes are surely gone or never run.
    terminal = {k for k, v in SLURM_STATES.items() if v in TERMINAL_STATES}
    assert "CG" not in terminal and "COMPLETING" not in terminal and "SE" not in terminal


@pytest.mark.parametrize("raw", ["", "   ", "??", "CANCELLED+", "R R", "\t"])
def test_odd_states_never_raise(raw: str) -> None:
    status = slurm_status(raw, "x:y")
    assert isinstance(status.state, JobState)


def test_parsers_skip_junk() -> None:
    junk = "JOBID ST\n\nCLUSTER: a\nslurm_load_jobs error: Socket timed out\n  \n7 R\n"
    assert {j: s.state for j, s in parse_squeue(junk).items()} == {"7": R}
    assert parse_sacct("JobID|State|ExitCode\n|||\n7.0|FAILED|1:0\n7|RUNNING|0:0\n") == {"7": slurm_status("R", "0:0")}


# ------------------------------------------------------------------------------------------ sbatch


@pytest.mark.parametrize(("name", "job_id"), [
    ("sbatch_parsable.txt", "23"), ("sbatch_parsable_clusters.txt", "24"),
    ("sbatch_classic.txt", "25"), ("sbatch_classic_clusters.txt", "26"),
])
def test_recorded_sbatch_output(name: str, job_id: str) -> None:
    assert parse_sbatch(data(name)) == job_id


@pytest.mark.parametrize("text", ["", "\n", "sbatch: error: Batch job submission failed", "Submitted batch job",
                                  "12a", "job 12"])
def test_sbatch_output_without_an_id(text: str) -> None:
    assert parse_sbatch(text) is None


def test_sbatch_id_after_warnings() -> None:
    assert parse_sbatch("sbatch: warning: something\n77;c2\n") == "77"


# ------------------------------------------------------------------------------------------ script


def directives(script: str) -> list[str]:
    """The #SBATCH options sbatch reads: those before the first line that is neither blank nor a comment."""
    found = []
    for line in script.splitlines()[1:]:
        if line.strip() and not line.startswith("#"):
            break
        if line.startswith("#SBATCH"):
            found.append(line.split(None, 1)[1])
    return found


def test_script_directives_and_the_user_wins() -> None:
    script = render_slurm_script(
        job_name="htex.block-0", stdout_path="/s/o", stderr_path="/s/e", nodes=2, tasks_per_node=1,
        walltime="01:30:00", launcher_text="srun true", partition="debug", account="proj", qos="high",
        constraint="knl", exclusive=True, cores_per_node=8, mem_per_node=1.5, gpus_per_node=2, gres="tmp:1",
        scheduler_options="#SBATCH --time=00:05:00\n#SBATCH --partition=other\n", worker_init="module load x",
        environment="export JOBNAME=x\n",
    )
    d = directives(script)
    assert d[:6] == ["--job-name=htex.block-0", "--output=/s/o", "--error=/s/e", "--nodes=2",
                     "--ntasks-per-node=1", "--time=01:30:00"]
    for opt in ("--exclusive", "--partition=debug", "--account=proj", "--qos=high", "--constraint=knl",
                "--gpus-per-node=2", "--gres=tmp:1", "--mem=1536M", "--cpus-per-task=8"):
        assert opt in d
    # sbatch keeps the last value of an option given twice: the user's options are last.
    assert d[-2:] == ["--time=00:05:00", "--partition=other"]
    body = script.split("\n\n", 1)[1]
    assert (body.index(JOB_START_EXPORT) < body.index("module load x") < body.index("export PARSL_CORES=8")
            < body.index("srun true"))
    assert "export PARSL_MEMORY_GB=1.5" in body
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_minimal_script_has_no_optional_directives() -> None:
    script = render_slurm_script(job_name="j", stdout_path="o", stderr_path="e", nodes=1, tasks_per_node=3,
                                 walltime="00:10:00", launcher_text="echo hi", exclusive=False)
    assert directives(script) == ["--job-name=j", "--output=o", "--error=e", "--nodes=1", "--ntasks-per-node=3",
                                  "--time=00:10:00"]
    assert "PARSL_" not in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_cpus_per_task_divides_cores_between_tasks() -> None:
    script = render_slurm_script(job_name="j", stdout_path="o", stderr_path="e", nodes=1, tasks_per_node=3,
                                 walltime="00:10:00", launcher_text="x", cores_per_node=8)
    assert "--cpus-per-task=2" in directives(script)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"partition": "a\nb"}, "partition"),
    ({"account": ""}, "account"),
    ({"qos": 3}, "qos"),
    ({"constraint": " x"}, "constraint"),
    ({"clusters": "a,b"}, "clusters"),
    ({"cores_per_node": 0}, "cores_per_node"),
    ({"mem_per_node": -1}, "mem_per_node"),
    ({"gpus_per_node": 0}, "gpus_per_node"),
    ({"gres": "a\n"}, "gres"),
    ({"exclusive": "yes"}, "exclusive"),
    ({"scheduler_options": "--exclusive"}, "scheduler_options"),
    ({"status_source": "qstat"}, "status_source"),
    ({"walltime": "10"}, "walltime"),
    ({"cmd_timeout": 0}, "cmd_timeout"),
    ({"nodes_per_block": 0}, "nodes_per_block"),
    # Whitespace inside a value would split it in two on its #SBATCH line.
    ({"partition": "debug queue"}, "partition"),
    ({"account": "my account"}, "account"),
    ({"qos": "high\tprio"}, "qos"),
    ({"constraint": "knl quad"}, "constraint"),
    ({"clusters": "c 1"}, "clusters"),
    ({"gres": "gpu:1 tmp:1"}, "gres"),
    ({"gpus_per_node": "a100:2 x"}, "gpus_per_node"),
    ({"gpus_per_node": True}, "gpus_per_node"),
    ({"mem_per_node": float("inf")}, "mem_per_node"),
    ({"mem_per_node": float("nan")}, "mem_per_node"),
    ({"cmd_timeout": float("inf")}, "cmd_timeout"),
    ({"cmd_timeout": float("nan")}, "cmd_timeout"),
    ({"absent_grace": float("nan")}, "absent_grace"),
    ({"query_failure_limit": float("nan")}, "query_failure_limit"),
    ({"query_failure_limit": float("inf")}, "query_failure_limit"),
    ({"query_failure_limit": -1}, "query_failure_limit"),
    ({"parallelism": True}, "parallelism"),
    ({"init_blocks": 2}, "init_blocks"),
])
def test_bad_settings_are_named(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises((ConfigurationError, ValueError, TypeError), match=name):
        SlurmProvider(**kwargs)  # type: ignore[arg-type]


def test_empty_and_spaced_names_are_refused_for_what_is_wrong_with_them() -> None:
    with pytest.raises(ConfigurationError, match=r"partition must be None \(the scheduler's default\) or a "
                                                 r"non-empty string, got ''"):
        SlurmProvider(partition="")
    with pytest.raises(ConfigurationError, match=r"partition must be one word, without spaces.*'debug queue'"):
        SlurmProvider(partition="debug queue")
    with pytest.raises(ConfigurationError, match=r"account must be None or a string, got int 3"):
        SlurmProvider(account=3)  # type: ignore[arg-type]


def test_init_blocks_above_max_blocks_names_both() -> None:
    with pytest.raises(ConfigurationError, match=r"init_blocks \(3\) is greater than max_blocks \(2\)"):
        SlurmProvider(init_blocks=3, max_blocks=2)


@pytest.mark.parametrize(("options", "line", "why"), [
    ("#PBS -l mem=4gb", "'#PBS -l mem=4gb'", "reads #PBS lines as PBS options"),
    ("#SBATCH --exclusive\n# SBATCH --mem=0", "line 2, '# SBATCH --mem=0'", "ignores comment lines"),
    ("#sbatch --mem=0", "'#sbatch --mem=0'", "ignores comment lines"),
    ("  #SBATCH --mem=0", "'  #SBATCH --mem=0'", "remove the leading whitespace"),
    ("\t#SBATCH --mem=0", "'\\t#SBATCH --mem=0'", "remove the leading whitespace"),
    ("#SBATCH --mem=0\nmodule load gcc", "line 2, 'module load gcc'", "run as a command"),
    ("#SBATCH --mem=0\r\n", "'#SBATCH --mem=0\\r\\n'", "carriage returns"),
])
def test_scheduler_options_lines_sbatch_would_not_read_are_refused(options: str, line: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match="scheduler_options") as info:
        SlurmProvider(scheduler_options=options)
    assert line in str(info.value) and why in str(info.value)


def test_directive_lines_with_blank_lines_and_trailing_spaces_are_kept() -> None:
    options = "\n#SBATCH --exclusive  \n\n   \n#SBATCH --mem=0\n"
    p = SlurmProvider(scheduler_options=options)
    assert p.scheduler_options == options
    script = p.render_script(job_name="j", launcher_text="true", stdout_path="o", stderr_path="e", tasks_per_node=1)
    assert [d.rstrip() for d in directives(script)[-2:]] == ["--exclusive", "--mem=0"]


def test_walltime_goes_into_the_script_without_surrounding_spaces() -> None:
    p = SlurmProvider(walltime=" 1:00:00\n")
    assert p.walltime == "1:00:00" and p.walltime_seconds == 3600
    script = p.render_script(job_name="j", launcher_text="true", stdout_path="o", stderr_path="e", tasks_per_node=1)
    assert "--time=1:00:00" in directives(script)


def test_query_failure_limit_turns_failing_queries_into_unknown(tmp_path: Path, fake: FakeSlurm) -> None:
    p = provider(tmp_path, status_source="squeue", query_failure_limit=50)
    now = [1000.0]
    p.clock = lambda: now[0]
    a = p.submit("x", 1, "a")
    fake.command("squeue", f'echo "{a} R"')
    assert p.status([a])[0].state is JobState.RUNNING
    fake.command("squeue", "echo 'Unable to contact slurm controller' >&2; exit 1")
    assert p.status([a])[0].state is JobState.RUNNING  # the first failure starts the clock
    now[0] += 49
    assert p.status([a])[0].state is JobState.RUNNING
    now[0] += 1
    unknown = p.status([a])[0]
    assert unknown.state is JobState.UNKNOWN and "last known: RUNNING" in (unknown.message or "")
    assert SlurmProvider().query_failure_limit == 600


def test_defaults_and_repr() -> None:
    p = SlurmProvider()
    assert isinstance(p.launcher, SrunLauncher) and p.label == "slurm" and p.exclusive
    assert p.walltime == "00:10:00" and p.cmd_timeout == 10 and p.accounting is None
    assert "SlurmProvider(" in repr(p) and "partition=None" in repr(p)
    assert squeue_command(["1", "2"], "c") == ["squeue", "--noheader", "--format=%i %t", "--states=all",
                                              "--jobs=1,2", "--clusters=c"]
    assert sacct_command(["1"], None)[-1] == "--jobs=1"


# --------------------------------------------------------------------------- fake Slurm commands


class FakeSlurm:
    """Executables named sbatch/squeue/sacct/scancel on PATH whose behaviour each test writes as shell;
    every call is appended to calls.log as one line ``name args...``."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.calls_log = root / "calls.log"
        self.calls_log.touch()

    def command(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text(f'#!/bin/bash\necho "{name} $*" >> "{self.calls_log}"\n{body}\n')
        path.chmod(0o755)

    def calls(self, name: str | None = None) -> list[str]:
        lines = self.calls_log.read_text().splitlines()
        return [x for x in lines if name is None or x.split()[0] == name]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSlurm]:
    f = FakeSlurm(tmp_path)
    monkeypatch.setenv("PATH", f"{f.bin}{os.pathsep}{os.environ['PATH']}")
    f.command("sbatch", 'echo "$(( $(wc -l < ' + str(f.calls_log) + ') + 100 ))"')
    f.command("scancel", "exit 0")
    yield f


def provider(tmp_path: Path, **kwargs: object) -> SlurmProvider:
    kwargs.setdefault("launcher", SimpleLauncher())
    p = SlurmProvider(**kwargs)  # type: ignore[arg-type]
    p.script_dir = str(tmp_path / "scripts")
    return p


def test_submit_writes_the_script_and_passes_clusters(tmp_path: Path, fake: FakeSlurm) -> None:
    fake.command("sbatch", 'echo "4242;other"')
    p = provider(tmp_path, clusters="other", partition="debug", worker_init="echo init",
                 launcher=SingleNodeLauncher())
    job_id = p.submit("my-pool --flag", 2, "htex_ref.slurm.block-0")
    assert job_id == "4242"
    job = p.jobs[job_id]
    (call,) = fake.calls("sbatch")
    assert call == f"sbatch --parsable --clusters=other {job.script_path}"
    script = Path(job.script_path).read_text()
    assert f"--output={job.stdout_path}" in directives(script) and "--partition=debug" in directives(script)
    assert "--ntasks-per-node=2" in directives(script)
    assert "echo init" in script and "my-pool --flag" in script and "export JOBNAME=" in script
    assert p.status([job_id])[0].state is JobState.PENDING


def test_submit_failure_names_the_script_and_slurms_error(tmp_path: Path, fake: FakeSlurm) -> None:
    err = data("sbatch_bad_partition.stderr")
    fake.command("sbatch", f"cat >&2 <<'EOF'\n{err}EOF\nexit 1")
    p = provider(tmp_path, partition="nosuch")
    with pytest.raises(SubmitException) as info:
        p.submit("x", 1, "blk")
    text = str(info.value)
    assert "Invalid partition name specified" in text and "blk.submit" in text and "exit" in text


def test_squeue_when_accounting_is_disabled_and_sacct_is_asked_once(tmp_path: Path, fake: FakeSlurm) -> None:
    fake.command("sacct", f"cat >&2 <<'EOF'\n{data('sacct_disabled.stderr')}EOF\nexit 1")
    fake.command("squeue", 'echo "${4#--jobs=} R"')
    p = provider(tmp_path)
    a = p.submit("x", 1, "a")
    assert p.status([a])[0].state is JobState.RUNNING
    assert p.accounting is False
    p.status([a])
    assert len(fake.calls("sacct")) == 1 and len(fake.calls("squeue")) == 2
    assert fake.calls("squeue")[0] == f"squeue --noheader --format=%i %t --states=all --jobs={a}"


def test_sacct_states_and_squeue_for_jobs_sacct_does_not_list_yet(tmp_path: Path, fake: FakeSlurm) -> None:
    p = provider(tmp_path)
    a, b = p.submit("x", 1, "a"), p.submit("x", 1, "b")
    # sacct knows a (finished, exit 3) but not yet b, which squeue shows running.
    fake.command("sacct", f'echo "{a}|FAILED|3:0"')
    fake.command("squeue", f'echo "{b} R"')
    sa, sb = p.status([a, b])
    assert (sa.state, sa.exit_code, sb.state) == (JobState.FAILED, 3, JobState.RUNNING)
    assert p.accounting is True
    assert fake.calls("squeue")[-1].endswith(f"--jobs={b}")
    assert sa.stdout_path == p.jobs[a].stdout_path


def test_an_end_squeue_sees_first_waits_for_saccts_exit_code(tmp_path: Path, fake: FakeSlurm) -> None:
    """sacct lags squeue by seconds. A job squeue already shows FAILED keeps its last state until sacct
    lists it, so that its end is reported once, with the exit code; after SACCT_LAG_GRACE squeue's word
    stands. (Seen on the real cluster: a FAILED block without its exit code.)"""
    p = provider(tmp_path)
    now = [1000.0]
    p.clock = lambda: now[0]
    a, b = p.submit("x", 1, "a"), p.submit("x", 1, "b")
    fake.command("sacct", "exit 0")
    fake.command("squeue", f'echo "{a} R"; echo "{b} R"')
    assert [s.state for s in p.status([a, b])] == [JobState.RUNNING, JobState.RUNNING]
    fake.command("squeue", f'echo "{a} F"; echo "{b} F"')
    now[0] += 1
    assert [s.state for s in p.status([a, b])] == [JobState.RUNNING, JobState.RUNNING]
    # sacct lists a: it ends with its exit code.
    fake.command("sacct", f'echo "{a}|FAILED|3:0"')
    now[0] += 2
    sa, sb = p.status([a, b])
    assert (sa.state, sa.exit_code, sb.state) == (JobState.FAILED, 3, JobState.RUNNING)
    # sacct never lists b: after the grace, squeue's FAILED stands.
    now[0] += SACCT_LAG_GRACE
    assert p.status([b])[0].state is JobState.FAILED
    assert p._ended_before_sacct == {}


def test_a_job_nobody_lists_is_pending_within_the_grace_then_missing(tmp_path: Path, fake: FakeSlurm) -> None:
    fake.command("sacct", "exit 0")
    fake.command("squeue", f"cat >&2 <<'EOF'\n{data('squeue_invalid_id.stderr')}EOF\nexit 1")
    p = provider(tmp_path, absent_grace=30)
    now = [1000.0]
    p.clock = lambda: now[0]
    a = p.submit("x", 1, "a")
    now[0] += 5
    assert p.status([a])[0].state is JobState.PENDING
    now[0] += 30
    missing = p.status([a])[0]
    assert missing.state is JobState.MISSING and "no longer lists" in (missing.message or "")


def test_squeue_forced_even_with_accounting(tmp_path: Path, fake: FakeSlurm) -> None:
    fake.command("sacct", "echo never; exit 0")
    p = provider(tmp_path, status_source="squeue")
    a = p.submit("x", 1, "a")
    fake.command("squeue", f'echo "{a} CG"')
    assert p.status([a])[0].state is JobState.RUNNING
    assert not fake.calls("sacct")


def test_sacct_failure_falls_back_to_squeue_for_that_query(tmp_path: Path, fake: FakeSlurm) -> None:
    p = provider(tmp_path, status_source="sacct")
    a = p.submit("x", 1, "a")
    fake.command("sacct", "echo 'sacct: error: slurmdbd: Connection refused' >&2; exit 1")
    fake.command("squeue", f'echo "{a} TO"')
    assert p.status([a])[0].state is JobState.TIMEOUT
    assert p.accounting is True  # a failing slurmdbd is not "accounting disabled"


def test_a_failing_squeue_keeps_states(tmp_path: Path, fake: FakeSlurm, caplog: pytest.LogCaptureFixture) -> None:
    p = provider(tmp_path, status_source="squeue")
    a = p.submit("x", 1, "a")
    fake.command("squeue", f'echo "{a} R"')
    assert p.status([a])[0].state is JobState.RUNNING
    fake.command("squeue", "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1")
    with caplog.at_level(logging.WARNING):
        assert p.status([a])[0].state is JobState.RUNNING
    assert "Unable to contact slurm controller" in caplog.text


def test_terminal_states_are_never_overwritten(tmp_path: Path, fake: FakeSlurm) -> None:
    p = provider(tmp_path, status_source="squeue")
    a = p.submit("x", 1, "a")
    fake.command("squeue", f'echo "{a} CD"')
    assert p.status([a])[0].state is JobState.COMPLETED
    fake.command("squeue", f'echo "{a} R"')
    assert p.status([a])[0].state is JobState.COMPLETED
    assert len(fake.calls("squeue")) == 1  # ended jobs are not asked about again


def test_cancel_stays_cancelled_and_failures_report_stderr(tmp_path: Path, fake: FakeSlurm,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    p = provider(tmp_path, status_source="squeue", clusters="nosuch")
    a, b = p.submit("x", 1, "a"), p.submit("x", 1, "b")
    assert p.cancel([a]) == [True]
    assert fake.calls("scancel") == [f"scancel --clusters=nosuch {a}"]
    fake.command("squeue", f'echo "{a} CD"; echo "{b} R"')
    assert [s.state for s in p.status([a, b])] == [JobState.CANCELLED, JobState.RUNNING]
    fake.command("scancel", f"cat >&2 <<'EOF'\n{data('scancel_bad_cluster.stderr')}EOF\nexit 1")
    with caplog.at_level(logging.ERROR):
        assert p.cancel([b]) == [False]
    assert "No cluster 'nosuch' known by database" in caplog.text


# ---------------------------------------------------------------------------------------- time-outs


def test_a_hanging_squeue_times_out_and_keeps_states(tmp_path: Path, fake: FakeSlurm,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    fake.command("squeue", "sleep 60")
    p = provider(tmp_path, status_source="squeue", cmd_timeout=0.5)
    a = p.submit("x", 1, "a")
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert p.status([a])[0].state is JobState.PENDING
    assert time.monotonic() - t0 < 10
    assert re.search(r"squeue .* did not finish within 0.5 s", caplog.text)


def test_a_hanging_sbatch_is_a_clear_submit_error(tmp_path: Path, fake: FakeSlurm) -> None:
    fake.command("sbatch", "sleep 60")
    p = provider(tmp_path, cmd_timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(SubmitException, match=r"did not finish within 0\.5 s"):
        p.submit("x", 1, "a")
    assert time.monotonic() - t0 < 10


def test_a_hanging_squeue_never_hangs_the_executor(tmp_path: Path, fake: FakeSlurm) -> None:
    """The executor with a SlurmProvider whose squeue never answers: submitting, scaling and shutdown
    go on, each status query ending after cmd_timeout."""
    from htex_ref import HighThroughputExecutor

    fake.command("squeue", "sleep 60")
    p = SlurmProvider(launcher=SimpleLauncher(), status_source="squeue", cmd_timeout=0.5,
                      status_polling_interval=0.2, init_blocks=1, max_blocks=1)
    ex = HighThroughputExecutor(provider=p, address="127.0.0.1", encrypted=False, run_dir=str(tmp_path / "run"),
                                heartbeat_period=1, heartbeat_threshold=5)
    ex.start()
    try:
        fut = ex.submit(int, "5")
        deadline = time.monotonic() + 20
        while len(fake.calls("squeue")) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(fake.calls("squeue")) >= 3, "the executor stopped polling after a timed-out squeue"
        assert not fut.done()
        assert [s.state for s in ex.status().values()] == [JobState.PENDING]
    finally:
        done = threading.Event()
        t = threading.Thread(target=lambda: (ex.shutdown(wait=False), done.set()), daemon=True)
        t0 = time.monotonic()
        t.start()
        assert done.wait(30), "shutdown hung on a hanging squeue"
    assert time.monotonic() - t0 < 30
    assert fut.done()
    assert fake.calls("scancel"), "shutdown did not cancel the block"


def test_regex_job_id_reads_a_site_specific_sbatch_line(tmp_path: Path, fake: FakeSlurm) -> None:
    # As Parsl: a regex with a group named id, for sites whose sbatch prints something else.
    fake.command("sbatch", 'echo "NOTICE: charged to project x"; echo "Job <7731> is queued in partition debug"')
    p = provider(tmp_path, regex_job_id=r"Job <(?P<id>\d+)> is queued")
    assert p.submit("my-pool", 1, "htex_ref.slurm.block-0") == "7731"
    (call,) = fake.calls("sbatch")
    assert "--parsable" not in call  # the site's own output, not sbatch --parsable
    assert p.regex_job_id == r"Job <(?P<id>\d+)> is queued"


@pytest.mark.parametrize(("value", "match"), [
    (r"Submitted batch job (\d+)", "group named id"), ("(?P<id>", "not a regular expression"), (42, "string")])
def test_a_bad_regex_job_id_is_refused(value: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=f"regex_job_id .*{match}"):
        SlurmProvider(regex_job_id=value)  # type: ignore[arg-type]


def test_status_batch_size_sets_the_job_ids_per_query(tmp_path: Path, fake: FakeSlurm) -> None:
    fake.command("sacct", "exit 1")  # no accounting: squeue answers
    fake.command("squeue", "exit 0")
    p = provider(tmp_path, status_batch_size=2, status_source="squeue")
    jobs = [p.submit("my-pool", 1, f"htex_ref.slurm.block-{i}") for i in range(5)]
    p.status(jobs)
    assert [c.split("--jobs=")[1].count(",") + 1 for c in fake.calls("squeue")] == [2, 2, 1]
    with pytest.raises(ConfigurationError, match="status_batch_size must be an int >= 1"):
        SlurmProvider(status_batch_size=0)
