"""CondorProvider: the submit description and job script, condor_submit / condor_q / condor_history on
recorded outputs (tests/data/providers/condor/README.md), submit/status/cancel through fake commands, and
fuzzing of the parsers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from htex_ref.errors import SubmitException
from htex_ref.launchers import SimpleLauncher, SingleNodeLauncher
from htex_ref.providers.base import JobState
from htex_ref.providers.cluster import JOB_START_EXPORT, CommandResult
from htex_ref.providers.condor import (
    CondorProvider,
    CondorQueryError,
    condor_environment,
    condor_job_status,
    parse_condor_json,
    parse_condor_submit,
    statuses_from_condor,
)
from tests.stubs.fake_commands import FakeCommands, install

DATA = Path(__file__).parent.parent / "data" / "providers" / "condor"


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def commands(description: str) -> dict[str, str]:
    """``name = value`` lines of a submit description (the last value of each name, as condor_submit keeps)."""
    found = {}
    for line in description.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def render(p: CondorProvider, tmp_path: Path) -> tuple[str, str]:
    p.script_dir = str(tmp_path)
    kw = {"job_name": "htex_ref.condor.block-0", "launcher_text": p.launcher("run-pool", 1, 1),
          "stdout_path": str(tmp_path / "b0.stdout"), "stderr_path": str(tmp_path / "b0.stderr"), "tasks_per_node": 1}
    return p.render_script(**kw), p.companion_files(**kw)[".sh"]  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ rendering


def test_submit_description_and_job_script(tmp_path: Path) -> None:
    p = CondorProvider(cores_per_slot=4, mem_per_slot=2.5, environment={"A": "it's \"x\" y", "B": "1"},
                       project="astro", requirements='(OpSys == "LINUX")', transfer_input_files=["in.csv", "lib/"],
                       walltime="01:00:00", worker_init="source env.sh", scheduler_options="+WantGPU = true\n",
                       launcher=SimpleLauncher())
    description, script = render(p, tmp_path)
    c = commands(description)
    assert c["universe"] == "vanilla"
    assert c["executable"] == str(tmp_path / "htex_ref.condor.block-0.sh")
    assert (c["output"], c["error"], c["log"]) == (str(tmp_path / "b0.stdout"), str(tmp_path / "b0.stderr"),
                                                   str(tmp_path / "htex_ref.condor.block-0.log"))
    assert (c["request_cpus"], c["request_memory"]) == ("4", "2560")
    assert c["environment"] == '"A=\'it\'\'s ""x"" y\' B=\'1\'"'
    assert c["+ProjectName"] == '"astro"' and c["requirements"] == '(OpSys == "LINUX")'
    assert c["transfer_input_files"] == "in.csv,lib/"
    assert c["periodic_remove"] == "(JobStatus == 2) && (time() - JobCurrentStartDate > 3600)"
    assert c["+WantGPU"] == "true"
    lines = description.splitlines()
    assert lines[-1] == "queue" and lines.index("+WantGPU = true") > lines.index("universe = vanilla")
    assert script.startswith("#!/bin/bash\n" + JOB_START_EXPORT + "\nsource env.sh\n")
    assert "export PARSL_CORES=4\n" in script and "export PARSL_MEMORY_GB=2.5\n" in script
    assert script.rstrip().endswith("run-pool")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_minimal_description_leaves_out_what_is_not_set(tmp_path: Path) -> None:
    description, _ = render(CondorProvider(), tmp_path)
    c = commands(description)
    for absent in ("request_cpus", "request_memory", "environment", "+ProjectName", "requirements",
                   "transfer_input_files"):
        assert absent not in c
    assert c["periodic_remove"].endswith("> 600)")


def test_environment_quoting() -> None:
    assert condor_environment({}) == '""'
    assert condor_environment({"X": "a b"}) == "\"X='a b'\""


def test_defaults_and_repr() -> None:
    p = CondorProvider()
    assert (p.label, p.walltime, p.cmd_timeout, p.max_blocks, p.nodes_per_block) == ("condor", "00:10:00", 60.0, 1, 1)
    assert isinstance(p.launcher, SingleNodeLauncher)
    assert repr(p).startswith("CondorProvider(label='condor', nodes_per_block=1")
    assert p.submit_command("/s/j.submit") == ["condor_submit", "/s/j.submit"]
    assert p.cancel_command(["42.0"]) == ["condor_rm", "42.0"]


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"nodes_per_block": 2}, "nodes_per_block"),
    ({"cores_per_slot": 0}, "cores_per_slot"),
    ({"mem_per_slot": -1}, "mem_per_slot"),
    ({"environment": {"A B": "x"}}, "environment"),
    ({"environment": {"A": "line\nbreak"}}, "environment"),
    ({"environment": ["A=1"]}, "environment"),
    ({"project": "a\nb"}, "project"),
    ({"requirements": "x\ny"}, "requirements"),
    ({"scheduler_options": "queue 5"}, "scheduler_options"),
    ({"scheduler_options": 3}, "scheduler_options"),
    ({"transfer_input_files": "a.txt"}, "transfer_input_files"),
    ({"transfer_input_files": ["a,b"]}, "transfer_input_files"),
    ({"walltime": "10m"}, "walltime"),
    ({"init_blocks": 2}, "init_blocks"),
    ({"cmd_timeout": -1}, "cmd_timeout"),
])
def test_bad_settings_are_named(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        CondorProvider(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- recorded output


def test_condor_submit_output() -> None:
    assert parse_condor_submit(recorded("condor_submit.txt")) == "42.0"
    assert parse_condor_submit(recorded("condor_submit_bad_requirements.stderr")) is None
    assert parse_condor_submit("0 job(s) submitted to cluster 5.\n") is None


QUEUE = [
    ("101.0", JobState.PENDING, None, "idle"),
    ("102.0", JobState.RUNNING, None, None),
    ("103.0", JobState.HELD, None, "condor_hold"),
    ("104.0", JobState.FAILED, None, "Transfer input files failure"),
    ("105.0", JobState.RUNNING, None, "transferring output"),
    ("106.0", JobState.HELD, None, "suspended"),
    ("107.0", JobState.FAILED, None, "Exec format error"),
    ("108.0", JobState.HELD, None, "submitted on hold"),
]
HISTORY = [
    ("110.0", JobState.COMPLETED, 0, None),
    ("111.0", JobState.FAILED, 3, "exited with code 3"),
    ("112.0", JobState.FAILED, -9, "signal 9"),
    ("113.0", JobState.CANCELLED, None, "condor_rm"),
    ("114.0", JobState.TIMEOUT, None, "walltime"),
]


@pytest.mark.parametrize(("file", "cases"), [("condor_q.json", QUEUE), ("condor_history.json", HISTORY)])
def test_recorded_job_ads(file: str, cases: list[tuple[str, JobState, int | None, str | None]]) -> None:
    got = statuses_from_condor(CommandResult(("condor_q",), 0, recorded(file), "", 0.1), [c[0] for c in cases])
    for job_id, state, code, words in cases:
        assert (job_id, got[job_id].state, got[job_id].exit_code) == (job_id, state, code)
        if words:
            assert words in (got[job_id].message or ""), (job_id, got[job_id].message)


def test_no_match_is_an_empty_answer_and_a_failure_is_an_error() -> None:
    assert statuses_from_condor(CommandResult(("condor_q",), 0, "", "", 0.1), ["1.0"]) == {}
    down = CommandResult(("condor_q", "-json", "1.0"), 1, "", recorded("condor_q_schedd_down.stderr"), 0.1)
    with pytest.raises(CondorQueryError, match="Failed to fetch ads"):
        statuses_from_condor(down, ["1.0"])
    with pytest.raises(CondorQueryError):
        statuses_from_condor(CommandResult(("condor_q",), 0, "-- Schedd: submit.example.org\n", "", 0.1), ["1.0"])


# ---------------------------------------------------------------------------- fake commands


def ads_json(*ads: dict[str, object]) -> str:
    return json.dumps(list(ads))


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCommands:
    f = install(tmp_path, monkeypatch)
    f.prints("condor_submit", recorded("condor_submit.txt"))
    f.prints("condor_q")
    f.prints("condor_history")
    f.prints("condor_rm", "All jobs matching constraint (ClusterId==42 && ProcId==0) have been marked for removal.")
    return f


def provider(tmp_path: Path, **kwargs: object) -> CondorProvider:
    kwargs.setdefault("launcher", SimpleLauncher())
    p = CondorProvider(**kwargs)  # type: ignore[arg-type]
    p.script_dir = str(tmp_path / "scripts")
    return p


def test_submit_writes_both_files_and_status_asks_queue_then_history(tmp_path: Path, fake: FakeCommands) -> None:
    p = provider(tmp_path, worker_init="echo init")
    job = p.submit("my-pool", 1, "htex_ref.condor.block-0")
    assert job == "42.0"
    record = p.jobs[job]
    assert fake.calls("condor_submit") == [f"condor_submit {record.script_path}"]
    script = Path(record.script_path).with_suffix(".sh")
    assert commands(Path(record.script_path).read_text())["executable"] == str(script)
    assert script.stat().st_mode & 0o111 and "my-pool" in script.read_text() and "echo init" in script.read_text()
    fake.prints("condor_q", ads_json({"ClusterId": 42, "ProcId": 0, "JobStatus": 2}))
    assert p.status([job])[0].state is JobState.RUNNING
    assert fake.calls("condor_q")[-1].endswith(" 42.0") and not fake.calls("condor_history")
    # It left the queue: the history says how it ended.
    fake.prints("condor_q")
    fake.prints("condor_history", ads_json({"ClusterId": 42, "ProcId": 0, "JobStatus": 4, "ExitCode": 0,
                                            "ExitBySignal": False}))
    st = p.status([job])[0]
    assert (st.state, st.exit_code, st.stdout_path) == (JobState.COMPLETED, 0, record.stdout_path)
    assert fake.calls("condor_history")[-1].startswith("condor_history -json -attributes ClusterId,ProcId,")


def test_cancel_removes_the_job_and_a_removal_that_fails_asks_again(tmp_path: Path, fake: FakeCommands) -> None:
    p = provider(tmp_path)
    job = p.submit("x", 1, "b")
    assert p.cancel([job]) == [True]
    assert fake.calls("condor_rm") == ["condor_rm 42.0"]
    assert p.status([job])[0].state is JobState.CANCELLED
    fake.prints("condor_submit", "Submitting job(s).\n1 job(s) submitted to cluster 77.\n")
    other = p.submit("x", 1, "c")
    fake.prints("condor_rm", "", recorded("condor_rm_gone.stderr"), 1)
    fake.prints("condor_history", ads_json({"ClusterId": 77, "ProcId": 0, "JobStatus": 4, "ExitCode": 0}))
    # condor_rm failed because the job had already left the queue: it ended, so the answer is True.
    assert p.cancel([other]) == [True]


def test_a_failed_submit_names_condors_error(tmp_path: Path, fake: FakeCommands) -> None:
    fake.prints("condor_submit", "Submitting job(s)\n", recorded("condor_submit_bad_requirements.stderr"), 1)
    with pytest.raises(SubmitException, match="exited with code 1") as info:
        provider(tmp_path, requirements="(TARGET.Arch == )").submit("x", 1, "blk")
    assert "Parse error in expression" in str(info.value.stderr)


# ----------------------------------------------------------------------------------- fuzzing

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)
_AD = st.fixed_dictionaries({"ClusterId": st.integers(0, 10**6), "ProcId": st.integers(0, 5)},
                            optional={k: _JSON for k in ("JobStatus", "ExitCode", "ExitBySignal", "ExitSignal",
                                                         "HoldReason", "HoldReasonCode", "RemoveReason")})


@given(st.lists(_AD, max_size=5))
def test_ads_round_trip_and_always_give_a_status(ads: list[dict[str, object]]) -> None:
    parsed = parse_condor_json(json.dumps(ads))
    assert parsed == {f"{a['ClusterId']}.{a['ProcId']}": a for a in ads}
    for ad in parsed.values():
        assert isinstance(condor_job_status(ad).state, JobState)


@given(st.one_of(st.text(max_size=300), _JSON.map(json.dumps)))
def test_garbled_output_raises_only_the_documented_errors(text: str) -> None:
    try:
        parse_condor_json(text)
    except ValueError:
        pass
    try:
        statuses_from_condor(CommandResult(("condor_q",), 0, text, "", 0.0), ["1.0"])
    except CondorQueryError:
        pass
    assert parse_condor_submit(text) is None or parse_condor_submit(text).endswith(".0")  # type: ignore[union-attr]


@given(st.integers(1, 10**9), st.text(max_size=100))
def test_submit_output_round_trips(cluster: int, noise: str) -> None:
    noise = "".join(line for line in noise.splitlines(keepends=True) if "submitted to cluster" not in line)
    text = f"{noise}\nSubmitting job(s).\n1 job(s) submitted to cluster {cluster}.\n"
    assert parse_condor_submit(text) == f"{cluster}.0"
