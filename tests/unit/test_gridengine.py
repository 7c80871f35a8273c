"""GridEngineProvider's pure parts on outputs recorded from a real Son of Grid Engine 8.1.9
(tests/data/providers/gridengine/README.md), its status rules through a fake runner, and fuzzing of
every parser: garbage gives ValueError (or None), never another exception."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from htex_ref.errors import ConfigurationError
from htex_ref.launchers import SimpleLauncher, SingleNodeLauncher
from htex_ref.providers import GridEngineProvider
from htex_ref.providers.base import JobState, JobStatus
from htex_ref.providers.cluster import JOB_START_EXPORT, ClusterJob, CommandResult
from htex_ref.providers.gridengine import (
    QstatError,
    gridengine_job_name,
    gridengine_state,
    parse_qacct,
    parse_qstat_xml,
    parse_qsub_output,
    qacct_status,
    status_from_qacct,
    statuses_from_qstat,
)

DATA = Path(__file__).parent.parent / "data" / "providers" / "gridengine"


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def result(argv: list[str], rc: int = 0, stdout: str = "", stderr: str = "") -> CommandResult:
    return CommandResult(tuple(argv), rc, stdout, stderr, 0.01)


# ------------------------------------------------------------------------------------- rendering


def render(p: GridEngineProvider, tmp_path: Path, command: str = "run-pool --block-id=0") -> str:
    p.script_dir = str(tmp_path)
    return p.render_script(job_name="htex_ref.ge.block-0", launcher_text=p.launcher(command, 1, p.nodes_per_block),
                           stdout_path=str(tmp_path / "b0.stdout"), stderr_path=str(tmp_path / "b0.stderr"),
                           tasks_per_node=1)


def directives(script: str) -> list[str]:
    found = []
    for line in script.splitlines()[1:]:
        if line.strip() and not line.startswith("#"):
            break
        if line.startswith("#$"):
            found.append(line)
    return found


def test_script_has_every_directive_before_the_first_command(tmp_path: Path) -> None:
    p = GridEngineProvider(queue="all.q", walltime="1-01:30:00", worker_init="module load python",
                           scheduler_options="#$ -pe smp 4\n#$ -l h_rt=00:05:00", launcher=SimpleLauncher())
    script = render(p, tmp_path)
    assert script.startswith("#!/bin/bash\n")
    assert directives(script) == [
        "#$ -S /bin/bash",
        "#$ -N htex_ref.ge.block-0",
        "#$ -cwd",
        f"#$ -o {tmp_path / 'b0.stdout'}",
        f"#$ -e {tmp_path / 'b0.stderr'}",
        "#$ -l h_rt=25:30:00",
        "#$ -q all.q",
        # The user's lines come last, so that theirs win (here: the walltime).
        "#$ -pe smp 4",
        "#$ -l h_rt=00:05:00",
    ]
    body = script.split("#$ -l h_rt=00:05:00\n", 1)[1]
    assert body.index(JOB_START_EXPORT) < body.index("module load python") < body.index(
        "export JOBNAME=htex_ref.ge.block-0")
    assert f"export HTEX_SCRIPT_DIR={tmp_path}" in body
    assert body.rstrip().endswith("run-pool --block-id=0")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_defaults_follow_parsl_and_no_queue_means_no_directive(tmp_path: Path) -> None:
    p = GridEngineProvider()
    assert (p.nodes_per_block, p.init_blocks, p.min_blocks, p.max_blocks, p.parallelism) == (1, 1, 0, 1, 1)
    assert (p.walltime, p.cmd_timeout, p.queue, p.label) == ("00:10:00", 60, None, "grid_engine")
    assert isinstance(p.launcher, SingleNodeLauncher)
    script = render(p, tmp_path)
    assert not any(d.startswith("#$ -q") for d in directives(script))
    assert "GridEngineProvider(" in repr(p) and "queue=None" in repr(p)
    assert p.submit_command("/x/s.submit") == ["qsub", "-terse", "/x/s.submit"]
    assert p.cancel_command(["4", "5"]) == ["qdel", "4", "5"]


@pytest.mark.parametrize("name, expected", [
    ("htex_ref.block-0", "htex_ref.block-0"),
    ("0-block", "j0-block"),
    ("a b/c:d@e*f?g\\h", "a_b_c_d_e_f_g_h"),
    ("", "j"),
])
def test_job_names_are_ones_qsub_accepts(name: str, expected: str) -> None:
    assert gridengine_job_name(name) == expected


@pytest.mark.parametrize("kwargs, named", [
    ({"queue": "all q"}, "GridEngineProvider.queue"),
    ({"queue": ""}, "GridEngineProvider.queue"),
    ({"scheduler_options": "#PBS -q x"}, "GridEngineProvider.scheduler_options"),
    ({"scheduler_options": " #$ -pe smp 2"}, "GridEngineProvider.scheduler_options"),
    ({"scheduler_options": "echo hi"}, "GridEngineProvider.scheduler_options"),
    ({"walltime": "10 minutes"}, "GridEngineProvider.walltime"),
    ({"walltime": "00:00:00"}, "GridEngineProvider.walltime"),
    ({"accounting_grace": -1}, "GridEngineProvider.accounting_grace"),
    ({"cmd_timeout": 0}, "cmd_timeout"),
    ({"max_blocks": 0, "init_blocks": 1}, "blocks"),
    ({"nodes_per_block": 0}, "nodes_per_block"),
    ({"status_polling_interval": float("nan")}, "GridEngineProvider.status_polling_interval"),
])
def test_bad_parameters_fail_at_construction_naming_them(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises((ConfigurationError, TypeError)) as info:
        GridEngineProvider(**kwargs)  # type: ignore[arg-type]
    assert named in str(info.value)


# ------------------------------------------------------------------------------------ qsub output


def test_qsub_output_recorded() -> None:
    assert parse_qsub_output(recorded("qsub-terse.txt")) == "2"
    assert parse_qsub_output(recorded("qsub.txt")) == "1"
    assert parse_qsub_output(recorded("qsub-terse-array.txt")) == "11"
    assert parse_qsub_output('Your job-array 12.1-3:1 ("slow") has been submitted\n') == "12"
    assert parse_qsub_output(recorded("qsub-missing.txt")) is None
    assert parse_qsub_output("") is None
    assert parse_qsub_output("warning: no suitable queues\n42\n") == "42"


# ----------------------------------------------------------------------------------- qstat output


def test_qstat_xml_recorded_running_and_pending() -> None:
    jobs = parse_qstat_xml(recorded("qstat-xml-2.xml"))
    assert {j: (q.state, q.queue) for j, q in jobs.items()} == {
        "3": ("r", "all.q@g1"), "4": ("r", "all.q@g2"), "5": ("r", "all.q@g1"), "6": ("r", "all.q@g2"),
        "7": ("qw", ""), "8": ("qw", ""),
    }
    assert jobs["8"].name == "wt.sh"
    assert parse_qstat_xml(recorded("qstat-xml-empty.xml")) == {}


def test_qstat_xml_recorded_deleting_held_and_error() -> None:
    assert parse_qstat_xml(recorded("qstat-xml-deleting.xml"))["3"].state == "dr"
    held = parse_qstat_xml(recorded("qstat-xml-held-error.xml"))
    assert {j: q.state for j, q in held.items()} == {"9": "hqw", "10": "Eqw", "11": "hqw"}


def test_an_array_job_is_kept_once_with_a_running_task() -> None:
    xml = """<?xml version='1.0'?><job_info><queue_info>
      <job_list state="running"><JB_job_number>11</JB_job_number><state>r</state>
        <queue_name>all.q@g1</queue_name><tasks>1</tasks></job_list>
    </queue_info><job_info>
      <job_list state="pending"><JB_job_number>11</JB_job_number><state>qw</state><tasks>2-3:1</tasks></job_list>
    </job_info></job_info>"""
    assert parse_qstat_xml(xml)["11"].state == "r"


@pytest.mark.parametrize("text", ["", "  \n", "error: commlib error: can't connect", "<job_info><job_list>",
                                  "<other/>", "<job_info><job_list><state>r</state></job_list></job_info>"])
def test_qstat_output_that_is_no_answer_raises(text: str) -> None:
    with pytest.raises(ValueError):
        parse_qstat_xml(text)


@pytest.mark.parametrize("letters, state", [
    ("qw", JobState.PENDING), ("w", JobState.PENDING), ("Rq", JobState.PENDING),
    ("r", JobState.RUNNING), ("t", JobState.RUNNING), ("Rr", JobState.RUNNING), ("Rt", JobState.RUNNING),
    ("hqw", JobState.HELD), ("hRwq", JobState.HELD),
    ("s", JobState.HELD), ("S", JobState.HELD), ("T", JobState.HELD), ("ts", JobState.HELD), ("Rs", JobState.HELD),
    ("dr", JobState.RUNNING), ("dt", JobState.RUNNING), ("drs", JobState.RUNNING), ("dqw", JobState.PENDING),
    ("Eqw", JobState.FAILED), ("Ehqw", JobState.FAILED), ("EhRqw", JobState.FAILED),
    ("", JobState.UNKNOWN), ("x", JobState.UNKNOWN), ("R", JobState.UNKNOWN), ("running", JobState.UNKNOWN),
])
def test_state_table(letters: str, state: JobState) -> None:
    assert gridengine_state(letters).state is state


# ----------------------------------------------------------------------------------- qacct output


@pytest.mark.parametrize("name, state, code, words", [
    ("qacct-1.txt", JobState.COMPLETED, 0, None),
    ("qacct-2.txt", JobState.FAILED, 3, "exited with code 3"),
    ("qacct-3.txt", JobState.CANCELLED, 137, "SIGKILL"),          # qdel of a running job
    ("qacct-8.txt", JobState.TIMEOUT, 137, "h_rt"),               # -l h_rt=5, sleep 300
    ("qacct-eqw.txt", JobState.FAILED, None, "opening input/output file"),  # Eqw, then qdel
])
def test_qacct_recorded(name: str, state: JobState, code: int | None, words: str | None) -> None:
    st = status_from_qacct(result(["qacct", "-j", "1"], stdout=recorded(name).rsplit("rc=", 1)[0]))
    assert st is not None and st.state is state and st.exit_code == code
    if words:
        assert st.message and words in st.message


def test_qacct_without_a_record_is_an_answer_and_other_errors_are_not() -> None:
    # Deleted while pending (job 7) and never submitted (99): "error: job id N not found" on stderr, rc 1.
    for name in ("qacct-7.txt", "qacct-99.txt"):
        assert status_from_qacct(result(["qacct", "-j", "7"], 1, stderr=recorded(name).rsplit("rc=", 1)[0])) is None
    with pytest.raises(QstatError, match="accounting"):
        status_from_qacct(result(["qacct", "-j", "7"], 1, stderr="error: can't open accounting file"))
    with pytest.raises(QstatError):
        status_from_qacct(result(["qacct", "-j", "7"], 0, stdout="Total System Usage\n"))


def test_qacct_last_record_wins_and_signals_are_read() -> None:
    twice = ("==============\nfailed 100 : assumedly after job\nexit_status 137\n"
             "==============\nfailed 0\nexit_status 0\n")
    assert [r["failed"] for r in parse_qacct(twice)] == ["100 : assumedly after job", "0"]
    assert qacct_status(parse_qacct(twice)[-1]).state is JobState.COMPLETED
    segv = qacct_status({"failed": "100 : assumedly after job", "exit_status": "139"})
    assert segv.state is JobState.FAILED and segv.message and "SIGSEGV" in segv.message
    term = qacct_status({"failed": "100 : assumedly after job", "exit_status": "143"})
    assert term.state is JobState.CANCELLED
    assert qacct_status({"failed": "0", "exit_status": "137"}).state is JobState.FAILED
    assert qacct_status({"failed": "27 : searching requested shell", "exit_status": "0"}).state is JobState.FAILED
    assert qacct_status({"exit_status": "0"}).state is JobState.FAILED


# -------------------------------------------------------------------------------- status, fake runner


class FakeScheduler:
    """Answers the provider's commands from a table: qstat's XML, qacct's records by job id."""

    def __init__(self) -> None:
        self.qstat = recorded("qstat-xml-empty.xml")
        self.qacct: dict[str, str] = {}
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], **_: object) -> CommandResult:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "qstat":
            return result(argv, stdout=self.qstat)
        if argv[0] == "qacct":
            text = self.qacct.get(argv[2])
            if text is None:
                return result(argv, 1, stderr=f"error: job id {argv[2]} not found\n")
            return result(argv, stdout=text)
        if argv[0] == "qdel":
            return result(argv, stdout="".join(f"root has deleted job {j}\n" for j in argv[1:]))
        raise AssertionError(argv)


def provider_with(fake: FakeScheduler, tmp_path: Path, **kwargs: object) -> tuple[GridEngineProvider, list[float]]:
    p = GridEngineProvider(**kwargs)  # type: ignore[arg-type]
    p.script_dir = str(tmp_path)
    now = [1000.0]
    p.clock = lambda: now[0]
    p._run = fake  # type: ignore[method-assign]
    return p, now


def add_job(p: GridEngineProvider, job_id: str) -> None:
    st = JobStatus(JobState.PENDING, "submitted", None, "/o", "/e")
    p.jobs[job_id] = ClusterJob(job_id, f"b{job_id}", p.clock(), "/s", "/o", "/e", "/l", st)


def test_a_job_leaving_qstat_waits_for_the_accounting_then_ends_as_qacct_says(tmp_path: Path) -> None:
    fake = FakeScheduler()
    p, now = provider_with(fake, tmp_path, accounting_grace=30)
    add_job(p, "3")
    fake.qstat = recorded("qstat-xml-2.xml")
    assert p.status(["3"])[0].state is JobState.RUNNING
    fake.qstat = recorded("qstat-xml-empty.xml")
    now[0] += 100
    # Gone from qstat, not in the accounting yet: still RUNNING, for accounting_grace seconds.
    assert p.status(["3"])[0].state is JobState.RUNNING
    now[0] += 20
    assert p.status(["3"])[0].state is JobState.RUNNING
    fake.qacct["3"] = recorded("qacct-8.txt")
    st = p.status(["3"])[0]
    assert st.state is JobState.TIMEOUT and st.exit_code == 137 and st.stdout_path == "/o"


def test_a_job_never_in_the_accounting_is_missing_after_the_grace(tmp_path: Path) -> None:
    fake = FakeScheduler()
    p, now = provider_with(fake, tmp_path, accounting_grace=30, absent_grace=5)
    add_job(p, "7")
    now[0] += 10
    assert p.status(["7"])[0].state is JobState.PENDING
    now[0] += 31
    assert p.status(["7"])[0].state is JobState.MISSING


def test_a_job_in_the_error_state_fails_and_is_deleted(tmp_path: Path) -> None:
    fake = FakeScheduler()
    p, _ = provider_with(fake, tmp_path)
    add_job(p, "10")
    add_job(p, "9")
    fake.qstat = recorded("qstat-xml-held-error.xml")
    sts = p.status(["10", "9"])
    assert [s.state for s in sts] == [JobState.FAILED, JobState.HELD]
    assert ["qdel", "10"] in fake.calls
    assert sts[0].message and "qstat -j" in sts[0].message


def test_a_failed_qstat_changes_nothing(tmp_path: Path) -> None:
    fake = FakeScheduler()
    p, _ = provider_with(fake, tmp_path)
    add_job(p, "4")
    fake.qstat = "error: commlib error: got select error (Connection refused)\n"
    assert p.status(["4"])[0].state is JobState.PENDING
    assert not any(c[0] == "qacct" for c in fake.calls)


def test_statuses_from_qstat_picks_the_asked_jobs_and_names_a_failure() -> None:
    found = statuses_from_qstat(result(["qstat", "-xml"], stdout=recorded("qstat-xml-1.xml")), ["3", "8", "77"])
    assert set(found) <= {"3", "8"} and "77" not in found
    with pytest.raises(QstatError, match="qstat -xml"):
        statuses_from_qstat(result(["qstat", "-xml"], 1, stderr="error: unable to contact qmaster"), ["3"])


# -------------------------------------------------------------------------------------------- fuzz

_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
_XMLISH = st.lists(st.sampled_from(["<job_info>", "</job_info>", "<job_list>", "</job_list>", "<JB_job_number>",
                                    "</JB_job_number>", "<state>", "</state>", "12", "qw", "r", "Eqw", "&", "<",
                                    " ", "\n", "<?xml version='1.0'?>"]), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_TEXT, _XMLISH))
def test_fuzz_qstat_xml_parser_raises_only_value_error(text: str) -> None:
    try:
        jobs = parse_qstat_xml(text)
    except ValueError:
        return
    for job_id, job in jobs.items():
        assert job_id.isdigit() and job.job_id == job_id
        gridengine_state(job.state)


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_fuzz_state_letters_always_give_a_status(letters: str) -> None:
    assert isinstance(gridengine_state(letters).state, JobState)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_TEXT, st.lists(st.sampled_from(["=====\n", "failed ", "exit_status ", "0", "100", "37", " : x",
                                                  "137", "-3", "\n", "abc"]), max_size=30).map("".join)))
def test_fuzz_qacct_parser(text: str) -> None:
    try:
        records = parse_qacct(text)
    except ValueError:
        return
    assert records
    st_ = qacct_status(records[-1])
    assert isinstance(st_.state, JobState) and st_.terminal


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_fuzz_qsub_output(text: str) -> None:
    job_id = parse_qsub_output(text)
    assert job_id is None or (job_id.isdigit() and job_id in text)
