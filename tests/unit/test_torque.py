"""TorqueProvider: the submit script, qstat -f on recorded outputs (tests/data/providers/torque/README.md),
submit/status/cancel through fake qsub/qstat/qdel, and fuzzing of the qstat parser."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from htex_ref.errors import ConfigurationError, SubmitException
from htex_ref.launchers import AprunLauncher, MpiExecLauncher, SimpleLauncher, SingleNodeLauncher
from htex_ref.providers.base import JobState
from htex_ref.providers.cluster import JOB_START_EXPORT, CommandResult
from htex_ref.providers.torque import (
    TorqueProvider,
    TorqueQstatError,
    duration_seconds,
    parse_qstat_full,
    statuses_from_qstat_full,
    torque_job_status,
)
from tests.stubs.fake_commands import FakeCommands, install

DATA = Path(__file__).parent.parent / "data" / "providers" / "torque"
SERVER = "torque01.example.org"


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def directives(script: str) -> list[str]:
    found = []
    for line in script.splitlines()[1:]:
        if line.strip() and not line.startswith("#"):
            break
        if line.startswith("#PBS"):
            found.append(line)
    return found


def render(p: TorqueProvider, tmp_path: Path, tasks_per_node: int = 1) -> str:
    p.script_dir = str(tmp_path)
    return p.render_script(job_name="htex_ref.torque.block-0",
                           launcher_text=p.launcher("run-pool --block-id=0", tasks_per_node, p.nodes_per_block),
                           stdout_path=str(tmp_path / "b0.stdout"), stderr_path=str(tmp_path / "b0.stderr"),
                           tasks_per_node=tasks_per_node)


# ------------------------------------------------------------------------------------ rendering


def test_script_directives_in_order_and_the_user_wins(tmp_path: Path) -> None:
    p = TorqueProvider(account="proj42", queue="batch", nodes_per_block=2, cpus_per_node=16, walltime="1-01:30:00",
                       worker_init="module load python", scheduler_options="#PBS -l pmem=2gb\n#PBS -q long",
                       launcher=SimpleLauncher())
    script = render(p, tmp_path)
    assert directives(script) == [
        "#PBS -S /bin/bash",
        "#PBS -N htex_ref.torque.block-0",
        "#PBS -m n",
        "#PBS -l walltime=25:30:00",
        "#PBS -l nodes=2:ppn=16",
        f"#PBS -o {tmp_path / 'b0.stdout'}",
        f"#PBS -e {tmp_path / 'b0.stderr'}",
        "#PBS -A proj42",
        "#PBS -q batch",
        "#PBS -l pmem=2gb",
        "#PBS -q long",
    ]
    body = script.split("#PBS -q long\n", 1)[1]
    assert body.index(JOB_START_EXPORT) < body.index("module load python") < body.index("export JOBNAME=")
    assert body.rstrip().endswith("run-pool --block-id=0")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_ppn_is_the_tasks_per_node_unless_cpus_per_node_is_given(tmp_path: Path) -> None:
    # As Parsl: ppn=tasks_per_node; cpus_per_node asks for the node's cores instead.
    assert "#PBS -l nodes=1:ppn=3" in directives(render(TorqueProvider(), tmp_path, tasks_per_node=3))
    assert "#PBS -l nodes=1:ppn=8" in directives(render(TorqueProvider(cpus_per_node=8), tmp_path, tasks_per_node=3))
    plain = directives(render(TorqueProvider(), tmp_path))
    assert not [d for d in plain if d.startswith(("#PBS -A", "#PBS -q"))]


@pytest.mark.parametrize("launcher", [AprunLauncher(), SingleNodeLauncher(), MpiExecLauncher()], ids=repr)
def test_scripts_with_each_launcher_are_valid_bash(tmp_path: Path, launcher: object) -> None:
    script = render(TorqueProvider(launcher=launcher, nodes_per_block=2), tmp_path)  # type: ignore[arg-type]
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_defaults_and_repr() -> None:
    p = TorqueProvider()
    assert (p.label, p.walltime, p.cmd_timeout, p.status_polling_interval, p.cpus_per_node) == (
        "torque", "00:20:00", 120.0, 60.0, None)
    assert isinstance(p.launcher, AprunLauncher)  # Parsl's default for Torque
    assert repr(p).startswith("TorqueProvider(label='torque', account=None, queue=None")
    assert p.submit_command("/s/j.submit") == ["qsub", "/s/j.submit"]
    assert p.cancel_command(["1.a", "2.a"]) == ["qdel", "1.a", "2.a"]


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"account": "two words"}, "account"),
    ({"queue": ""}, "queue"),
    ({"cpus_per_node": 0}, "cpus_per_node"),
    ({"cpus_per_node": True}, "cpus_per_node"),
    ({"walltime": "20 minutes"}, "walltime"),
    ({"cmd_timeout": 0}, "cmd_timeout"),
    ({"scheduler_options": "module load gcc"}, "scheduler_options"),
    ({"scheduler_options": "#SBATCH --mem=1G"}, "scheduler_options"),
    ({"nodes_per_block": 0}, "nodes_per_block"),
    ({"init_blocks": 3, "max_blocks": 2}, "init_blocks"),
    ({"parallelism": 2}, "parallelism"),
    ({"launcher": "aprun"}, "launcher"),
    ({"absent_grace": -1}, "absent_grace"),
])
def test_bad_settings_are_named(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises((ValueError, TypeError), match=name):
        TorqueProvider(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- qstat -f


LIVE = [
    ("1001", JobState.RUNNING, None),
    ("1002", JobState.PENDING, "insufficient nodes"),
    ("1003", JobState.HELD, "held"),
    ("1004", JobState.PENDING, "start time"),
    ("1005", JobState.PENDING, "being moved"),
    ("1006", JobState.HELD, "suspended"),
    ("1007", JobState.RUNNING, "exiting"),
]
COMPLETED = [
    ("1010", JobState.COMPLETED, 0, None),
    ("1011", JobState.FAILED, 1, "exited with code 1"),
    ("1012", JobState.CANCELLED, 271, "qdel"),
    ("1013", JobState.TIMEOUT, -11, "walltime"),
    ("1014", JobState.TIMEOUT, 271, "walltime"),
    ("1015", JobState.FAILED, -10, "memory limit"),
    ("1016", JobState.FAILED, -1, "JOB_EXEC_FAIL1"),
    ("1017", JobState.CANCELLED, None, "deleted before it ran"),
    ("1018", JobState.FAILED, 265, "signal 9"),
]


def test_recorded_live_jobs() -> None:
    ids = [f"{seq}.torque01" for seq, _, _ in LIVE]  # qsub may print a shorter server name than qstat
    got = statuses_from_qstat_full(CommandResult(("qstat", "-f"), 0, recorded("qstat_f_live.txt"), "", 0.1), ids)
    for (seq, state, words), job_id in zip(LIVE, ids, strict=True):
        assert got[job_id].state is state, seq
        if words:
            assert words in (got[job_id].message or ""), (seq, got[job_id].message)


def test_recorded_completed_jobs() -> None:
    ids = [f"{seq}.{SERVER}" for seq, *_ in COMPLETED]
    got = statuses_from_qstat_full(CommandResult(("qstat", "-f"), 0, recorded("qstat_f_completed.txt"), "", 0.1), ids)
    for seq, state, code, words in COMPLETED:
        st = got[f"{seq}.{SERVER}"]
        assert (seq, st.state, st.exit_code) == (seq, state, code)
        if words:
            assert words in (st.message or ""), (seq, st.message)


def test_folded_values_are_joined_and_every_letter_is_mapped() -> None:
    jobs = parse_qstat_full(recorded("qstat_f_live.txt"))
    env = jobs[f"1001.{SERVER}"]["Variable_List"]
    assert "PBS_O_LANG=en_US.UTF-8" in env and env.endswith("PBS_O_WORKDIR=/home/alice/run/submit_scripts")
    letters = {a["job_state"] for a in [*jobs.values(), *parse_qstat_full(recorded("qstat_f_completed.txt")).values()]}
    assert letters == set("CEHQRSTW")
    odd = torque_job_status({"job_state": "X", "comment": "new"})
    assert odd.state is JobState.UNKNOWN and "'X'" in (odd.message or "")


def test_unknown_ids_are_not_listed_and_a_dead_server_is_an_error() -> None:
    gone = CommandResult(("qstat", "-f", "999"), 153, "", recorded("qstat_unknown.stderr"), 0.1)
    assert statuses_from_qstat_full(gone, ["999.torque01"]) == {}
    down = CommandResult(("qstat", "-f", "1"), 1, "", "Cannot connect to server torque01 (errno=111)\n", 0.1)
    with pytest.raises(TorqueQstatError, match="Cannot connect"):
        statuses_from_qstat_full(down, ["1"])


@pytest.mark.parametrize(("text", "seconds"), [("00:20:00", 1200), ("90", 90), ("1:30", 90), ("x", None),
                                               ("", None), ("1:2:3:4", None), ("-5", None)])
def test_durations(text: str, seconds: int | None) -> None:
    assert duration_seconds(text) == seconds


# ---------------------------------------------------------------------------- fake commands


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCommands:
    f = install(tmp_path, monkeypatch)
    f.prints("qsub", recorded("qsub.txt"))
    f.prints("qdel")
    return f


def provider(tmp_path: Path, **kwargs: object) -> TorqueProvider:
    kwargs.setdefault("launcher", SimpleLauncher())
    p = TorqueProvider(**kwargs)  # type: ignore[arg-type]
    p.script_dir = str(tmp_path / "scripts")
    return p


def test_submit_status_and_cancel_through_the_commands(tmp_path: Path, fake: FakeCommands) -> None:
    p = provider(tmp_path, queue="batch")
    job = p.submit("my-pool", 1, "htex_ref.torque.block-0")
    assert job == f"1234.{SERVER}"
    (call,) = fake.calls("qsub")
    assert call == f"qsub {p.jobs[job].script_path}"
    assert "#PBS -q batch" in directives(Path(p.jobs[job].script_path).read_text())
    live = recorded("qstat_f_live.txt").replace("1001.", "1234.")
    fake.prints("qstat", live)
    assert p.status([job])[0].state is JobState.RUNNING
    assert fake.calls("qstat")[-1] == f"qstat -f {job}"
    assert p.cancel([job]) == [True]
    assert fake.calls("qdel") == [f"qdel {job}"]
    # Once cancelled, whatever Torque says after (C with 271) it stays CANCELLED, and is not asked again.
    fake.prints("qstat", recorded("qstat_f_completed.txt").replace("1012.", "1234."))
    assert p.status([job])[0].state is JobState.CANCELLED
    assert len(fake.calls("qstat")) == 1


def test_a_completed_job_is_read_with_its_exit_status(tmp_path: Path, fake: FakeCommands) -> None:
    p = provider(tmp_path)
    job = p.submit("x", 1, "b")
    fake.prints("qstat", recorded("qstat_f_completed.txt").replace("1013.", "1234."))
    st = p.status([job])[0]
    assert (st.state, st.exit_code) == (JobState.TIMEOUT, -11)
    assert st.stdout_path == p.jobs[job].stdout_path


def test_a_job_torque_forgot_is_missing_after_the_grace(tmp_path: Path, fake: FakeCommands) -> None:
    fake.prints("qstat", "", recorded("qstat_unknown.stderr").replace("999", "1234"), 153)
    p = provider(tmp_path, absent_grace=30)
    now = [100.0]
    p.clock = lambda: now[0]
    job = p.submit("x", 1, "b")
    assert p.status([job])[0].state is JobState.PENDING
    now[0] += 31
    assert p.status([job])[0].state is JobState.MISSING


def test_a_refused_submit_names_torques_error(tmp_path: Path, fake: FakeCommands) -> None:
    fake.prints("qsub", "", recorded("qsub_acl.stderr"), 1)
    with pytest.raises(SubmitException, match="group ACL is not satisfied") as info:
        provider(tmp_path, queue="gpu").submit("x", 1, "blk")
    assert "blk.submit" in str(info.value)


def test_a_failing_qstat_keeps_the_state(tmp_path: Path, fake: FakeCommands) -> None:
    p = provider(tmp_path)
    job = p.submit("x", 1, "b")
    fake.prints("qstat", recorded("qstat_f_live.txt").replace("1001.", "1234."))
    assert p.status([job])[0].state is JobState.RUNNING
    fake.prints("qstat", "", "Cannot connect to server torque01 (errno=111)\n", 1)
    assert p.status([job])[0].state is JobState.RUNNING


# ----------------------------------------------------------------------------------- fuzzing

_VALUE = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=40).map(str.strip)
_ATTRS = st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}(\.[a-z]{1,6})?", fullmatch=True),
                         _VALUE, max_size=8)


def _qstat_text(jobs: dict[str, dict[str, str]]) -> str:
    out = []
    for job_id, attrs in jobs.items():
        out.append(f"Job Id: {job_id}")
        for key, value in attrs.items():
            # As Torque folds long values: the first 20 characters, the rest on tab-started lines.
            head, rest = value[:20], value[20:]
            out.append(f"    {key} = {head}")
            out.extend(f"\t{rest[i:i + 20]}" for i in range(0, len(rest), 20))
        out.append("")
    return "\n".join(out)


@given(st.dictionaries(st.from_regex(r"[0-9]{1,6}\.[a-z]{1,8}", fullmatch=True), _ATTRS, min_size=1, max_size=4))
def test_qstat_text_round_trips(jobs: dict[str, dict[str, str]]) -> None:
    # Values come back stripped of surrounding whitespace, so the generator strips them.
    assert parse_qstat_full(_qstat_text(jobs)) == jobs


@given(st.text(max_size=400))
def test_garbled_qstat_output_raises_only_the_documented_errors(text: str) -> None:
    try:
        jobs = parse_qstat_full(text)
    except ValueError:
        jobs = {}
    for attrs in jobs.values():
        assert isinstance(torque_job_status(attrs).state, JobState)
    result = CommandResult(("qstat", "-f"), 0, text, "", 0.0)
    try:
        statuses_from_qstat_full(result, list(jobs)[:3] or ["1.x"])
    except TorqueQstatError:
        pass


@given(st.dictionaries(st.sampled_from(["job_state", "exit_status", "resources_used.walltime",
                                        "Resource_List.walltime", "comment"]), _VALUE))
def test_any_attributes_give_a_status(attrs: dict[str, str]) -> None:
    assert isinstance(torque_job_status(attrs).state, JobState)


def test_configuration_error_is_a_value_error() -> None:
    assert issubclass(ConfigurationError, ValueError)
