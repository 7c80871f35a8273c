"""PBSProProvider's pure parts: the submit script, qsub's job id, and qstat JSON on recorded outputs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from htex_ref.errors import ConfigurationError
from htex_ref.launchers import MpiExecLauncher, SimpleLauncher, SingleNodeLauncher
from htex_ref.providers.base import JobState
from htex_ref.providers.cluster import JOB_START_EXPORT, CommandResult
from htex_ref.providers.pbspro import (
    PBSProProvider,
    QstatError,
    match_job_ids,
    parse_qstat_json,
    parse_qsub_output,
    pbs_job_name,
    pbs_job_status,
    statuses_from_qstat,
)

DATA = Path(__file__).parent.parent / "data" / "pbs"
FQDN = "pbs01.example.org"


def recorded(name: str) -> str:
    return (DATA / name).read_text()


# ------------------------------------------------------------------------------------- rendering


def render(p: PBSProProvider, tmp_path: Path, command: str = "run-pool --block-id=0") -> str:
    p.script_dir = str(tmp_path)
    return p.render_script(job_name="htex_ref.pbspro.block-0", launcher_text=p.launcher(command, 1, p.nodes_per_block),
                           stdout_path=str(tmp_path / "b0.stdout"), stderr_path=str(tmp_path / "b0.stderr"),
                           tasks_per_node=1)


def directives(script: str) -> list[str]:
    """The #PBS lines qsub reads: those before the first command."""
    found = []
    for line in script.splitlines()[1:]:
        if line.strip() and not line.startswith("#"):
            break
        if line.startswith("#PBS"):
            found.append(line)
    return found


def test_script_has_every_directive_before_the_first_command(tmp_path: Path) -> None:
    p = PBSProProvider(account="proj42", queue="debug", nodes_per_block=2, cpus_per_node=64,
                       select_options="ngpus=4", walltime="01:30:00", worker_init="module load python",
                       scheduler_options="#PBS -l filesystems=home:eagle\n#PBS -q prod", launcher=SimpleLauncher())
    script = render(p, tmp_path)
    assert script.startswith("#!/bin/bash\n")
    assert directives(script) == [
        "#PBS -S /bin/bash",
        "#PBS -N htex_ref.pbspro.block-0",
        "#PBS -m n",
        "#PBS -l walltime=01:30:00",
        "#PBS -l select=2:ncpus=64:ngpus=4",
        f"#PBS -o {tmp_path / 'b0.stdout'}",
        f"#PBS -e {tmp_path / 'b0.stderr'}",
        "#PBS -A proj42",
        "#PBS -q debug",
        # The user's options come last, so that theirs win (here: the queue).
        "#PBS -l filesystems=home:eagle",
        "#PBS -q prod",
    ]
    body = script.split("#PBS -q prod\n", 1)[1]
    # The job's start is recorded first, before worker_init can take its time.
    assert body.index(JOB_START_EXPORT) < body.index("module load python") < body.index(
        "export JOBNAME=htex_ref.pbspro.block-0")
    assert f"export HTEX_SCRIPT_DIR={tmp_path}" in body
    assert body.rstrip().endswith("run-pool --block-id=0")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_optional_directives_are_left_out_and_select_gets_its_colon(tmp_path: Path) -> None:
    plain = render(PBSProProvider(), tmp_path)
    assert not [d for d in directives(plain) if d.startswith(("#PBS -A", "#PBS -q"))]
    assert "#PBS -l select=1:ncpus=1" in directives(plain)
    assert "#PBS -l walltime=00:20:00" in directives(plain)
    with_colon = render(PBSProProvider(select_options=":mem=100gb"), tmp_path)
    assert "#PBS -l select=1:ncpus=1:mem=100gb" in directives(with_colon)
    # Day-form walltimes are written as hours, which every PBS accepts.
    assert "#PBS -l walltime=36:00:00" in directives(render(PBSProProvider(walltime="1-12:00:00"), tmp_path))


@pytest.mark.parametrize("launcher", [SingleNodeLauncher(), SimpleLauncher(), MpiExecLauncher()], ids=repr)
def test_scripts_with_each_launcher_are_valid_bash(tmp_path: Path, launcher: object) -> None:
    script = render(PBSProProvider(launcher=launcher, nodes_per_block=3), tmp_path)  # type: ignore[arg-type]
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


@pytest.mark.parametrize(("name", "expected"), [
    ("htex_ref.pbspro.block-3", "htex_ref.pbspro.block-3"),
    ("my job/with spaces", "my_job_with_spaces"),
    ("0-starts-with-digit", "j0-starts-with-digit"),
    ("x" * 300, "x" * 236),
])
def test_job_names_are_made_acceptable(name: str, expected: str) -> None:
    assert pbs_job_name(name) == expected


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"account": "two words"}, "account"),
    ({"queue": ""}, "queue"),
    ({"select_options": "ngpus=4 mem=1gb"}, "select_options"),
    ({"cpus_per_node": 0}, "cpus_per_node"),
    ({"walltime": "20 minutes"}, "walltime"),
    ({"cmd_timeout": -5}, "cmd_timeout"),
    ({"scheduler_options": ["#PBS -q x"]}, "scheduler_options"),
    ({"nodes_per_block": 0}, "nodes_per_block"),
    ({"init_blocks": 2, "max_blocks": 1}, "init_blocks"),
    ({"parallelism": True}, "parallelism"),
    ({"cmd_timeout": float("inf")}, "cmd_timeout"),
    ({"absent_grace": float("nan")}, "absent_grace"),
    ({"query_failure_limit": float("nan")}, "query_failure_limit"),
    ({"query_failure_limit": -600}, "query_failure_limit"),
])
def test_bad_settings_are_named(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        PBSProProvider(**kwargs)  # type: ignore[arg-type]
    assert issubclass(ConfigurationError, ValueError)


@pytest.mark.parametrize(("options", "why"), [
    ("module load gcc", "run as a command"),
    ("#PBS -l mem=4gb\ncd /scratch", "run as a command"),
    ("# PBS -l mem=4gb", "ignores comment lines"),
    ("#SBATCH --mem=4G", "ignores comment lines"),
    ("#PBS -q x\r\n", "carriage returns"),
])
def test_scheduler_options_that_are_not_pbs_directives_are_refused(options: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match=r"PBSProProvider\.scheduler_options") as info:
        PBSProProvider(scheduler_options=options)
    assert why in str(info.value)


def test_indented_directives_and_blank_lines_are_accepted_as_qsub_reads_them(tmp_path: Path) -> None:
    options = "\n  #PBS -l filesystems=home\n\n\t#PBS -q prod\n"
    p = PBSProProvider(scheduler_options=options, launcher=SimpleLauncher())
    assert p.scheduler_options == options
    script = render(p, tmp_path)
    before_commands = script.split("\nexport JOBNAME=")[0]
    assert "  #PBS -l filesystems=home" in before_commands and "\t#PBS -q prod" in before_commands
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_repr_and_defaults() -> None:
    p = PBSProProvider()
    assert (p.label, p.walltime, p.cmd_timeout, p.cpus_per_node, p.status_polling_interval) == (
        "pbspro", "00:20:00", 120.0, 1, 60.0)
    assert isinstance(p.launcher, SingleNodeLauncher)
    assert repr(p).startswith("PBSProProvider(label='pbspro', account=None, queue=None")
    assert "launcher=SingleNodeLauncher(fail_on_any=False)" in repr(p)
    assert p.submit_command("/s/x.submit") == ["qsub", "/s/x.submit"]
    assert p.cancel_command(["1.a", "2.a"]) == ["qdel", "1.a", "2.a"]


# ------------------------------------------------------------------------------------------- qsub


@pytest.mark.parametrize(("stdout", "job_id"), [
    ("1234.pbs01\n", "1234.pbs01"),
    ("8479.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n", "8479.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"),
    ("Job submitted to queue 'debug'; project charged.\n1235.pbs01\n\n", "1235.pbs01"),
    ("77[].pbs01\n", "77[].pbs01"),
    ("4321\n", "4321"),
    ("", None),
    ("qsub: would exceed queue generic's per-user limit\n", None),
])
def test_qsub_output(stdout: str, job_id: str | None) -> None:
    assert parse_qsub_output(stdout) == job_id


# ------------------------------------------------------------------------------------------ qstat


LIVE = [
    ("1001.pbs01", JobState.RUNNING, None, "Job run at"),
    ("1002.pbs01", JobState.PENDING, None, "Insufficient amount of resource"),
    ("1003.pbs01", JobState.HELD, None, "held"),
    ("1004.pbs01", JobState.PENDING, None, "waiting for its start time"),
    ("1005.pbs01", JobState.PENDING, None, "in transit"),
    ("1006.pbs01", JobState.HELD, None, "suspended"),
    ("1007.pbs01", JobState.HELD, None, "workstation is busy"),
    ("1008.pbs01", JobState.RUNNING, None, "exiting"),
    ("1009[].pbs01", JobState.RUNNING, None, "array job begun"),
]
HISTORY = [
    ("1010.pbs01", JobState.COMPLETED, 0, None),
    ("1011.pbs01", JobState.FAILED, 1, "exited with code 1"),
    ("1012.pbs01", JobState.CANCELLED, 271, "deleted with qdel"),
    ("1013.pbs01", JobState.TIMEOUT, -29, "walltime"),
    ("1014.pbs01", JobState.FAILED, -1, "JOB_EXEC_FAIL1"),
    ("1015.pbs01", JobState.CANCELLED, None, "deleted before it ran"),
    ("1016.pbs01", JobState.MISSING, None, "moved to another PBS server"),
    ("1009[0].pbs01", JobState.COMPLETED, 0, None),
    ("1017.pbs01", JobState.FAILED, 3, "exited with code 3"),
    ("1018.pbs01", JobState.FAILED, 265, "killed by signal 9"),
]


@pytest.mark.parametrize(("file", "cases"), [("qstat_f_live.json", LIVE), ("qstat_xf_history.json", HISTORY)])
def test_recorded_qstat_outputs(file: str, cases: list[tuple[str, JobState, int | None, str | None]]) -> None:
    result = CommandResult(("qstat", "-f", "-F", "json"), 0, recorded(file), "", 0.1)
    ids = [c[0] for c in cases]
    statuses = statuses_from_qstat(result, ids)
    assert sorted(statuses) == sorted(ids)
    for job_id, state, exit_code, message in cases:
        st = statuses[job_id]
        assert (job_id, st.state, st.exit_code) == (job_id, state, exit_code)
        if message is not None:
            assert st.message is not None and message in st.message, (job_id, st.message)


def test_every_pbs_state_letter_is_mapped() -> None:
    seen = {}
    for file in ("qstat_f_live.json", "qstat_xf_history.json"):
        for attrs in parse_qstat_json(recorded(file)).values():
            seen[attrs["job_state"]] = pbs_job_status(attrs).state
    assert set(seen) == set("BEFHMQRSTUWX")
    assert JobState.UNKNOWN not in seen.values()
    odd = pbs_job_status({"job_state": "Z", "comment": "new in PBS 2030"})
    assert odd.state is JobState.UNKNOWN and "'Z'" in (odd.message or "") and "2030" in (odd.message or "")


def test_walltime_in_the_comment_is_a_timeout() -> None:
    st = pbs_job_status({"job_state": "F", "Exit_status": 271,
                         "comment": "job killed: walltime 1250 exceeded limit 1200"})
    assert st.state is JobState.TIMEOUT and st.exit_code == 271


def test_no_jobs_and_unescaped_values() -> None:
    assert parse_qstat_json(recorded("qstat_f_none.json")) == {}
    jobs = parse_qstat_json(recorded("qstat_f_unescaped_env.json"))
    assert [a["job_state"] for a in jobs.values()] == ["R"]


@pytest.mark.parametrize("bad", ["", "Connection refused", "[1, 2]", '{"Jobs": [1]}', '{"Jobs": {"1.x": "R"}}'])
def test_output_that_is_not_qstat_json_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_qstat_json(bad)


def test_a_failed_qstat_is_an_error_naming_the_command() -> None:
    result = CommandResult(("qstat", "-f", "-F", "json", "1.pbs01"), 1, "",
                           "Connection refused\nqstat: cannot connect to server pbs01 (errno=15010)\n", 0.1)
    with pytest.raises(QstatError, match="cannot connect to server") as info:
        statuses_from_qstat(result, ["1.pbs01"])
    assert "qstat -f -F json 1.pbs01" in str(info.value) and "exited with code 1" in str(info.value)


def test_ids_qstat_does_not_list_are_left_out_not_errors() -> None:
    stderr = ("qstat: 1010.pbs01 Job has finished, use -x or -H to obtain historical job information\n"
              "qstat: Unknown Job Id 999.pbs01\n")
    # Some of the ids listed: their JSON is used, though qstat exits non-zero.
    some = CommandResult(("qstat",), 35, recorded("qstat_f_live.json"), stderr, 0.1)
    assert set(statuses_from_qstat(some, ["1001.pbs01", "1010.pbs01", "999.pbs01"])) == {"1001.pbs01"}
    # None listed, and qstat printed no JSON at all: an answer (none of them), not a failure.
    none = CommandResult(("qstat",), 153, "", stderr, 0.1)
    assert statuses_from_qstat(none, ["1010.pbs01", "999.pbs01"]) == {}


@pytest.mark.parametrize(("requested", "listed", "expected"), [
    (["1001.pbs01"], [f"1001.{FQDN}"], {"1001.pbs01": f"1001.{FQDN}"}),
    ([f"1001.{FQDN}"], ["1001.pbs01"], {f"1001.{FQDN}": "1001.pbs01"}),
    (["1001"], [f"1001.{FQDN}"], {"1001": f"1001.{FQDN}"}),
    (["1001.pbs01"], ["1001.pbs01"], {"1001.pbs01": "1001.pbs01"}),
    # A different server, or a longer sequence number that starts the same, is not the same job.
    (["1001.pbs01"], ["1001.pbs02.example.org", "10011.pbs01"], {}),
    (["100.pbs01"], ["1001.pbs01.example.org"], {}),
    (["1009[].pbs01"], [f"1009[].{FQDN}", f"1009[0].{FQDN}"], {"1009[].pbs01": f"1009[].{FQDN}"}),
])
def test_job_id_matching(requested: list[str], listed: list[str], expected: dict[str, str]) -> None:
    assert match_job_ids(requested, listed) == expected
