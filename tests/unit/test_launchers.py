"""Every launcher's shell text: valid bash, and it starts the right number of copies under stub launch tools."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from htex_ref.errors import ConfigurationError
from htex_ref.launchers import (
    ALL_LAUNCHERS,
    AprunLauncher,
    GnuParallelLauncher,
    JsrunLauncher,
    Launcher,
    MpiExecLauncher,
    MpiRunLauncher,
    SimpleLauncher,
    SingleNodeLauncher,
    SrunLauncher,
    SrunMPILauncher,
    WrappedLauncher,
    heredoc_delimiter,
)
from tests.stubs import launch_stub

CORES = 4  # SLURM_CPUS_ON_NODE in the fake allocation


def srun_mpi_copies(tpn: int, nodes: int) -> int:
    """What SrunMPILauncher starts in an allocation of ``nodes`` nodes of CORES cores (see its docstring)."""
    steps = tpn * nodes
    if steps > nodes:
        return steps * max(1, nodes * CORES // steps)
    return steps * (nodes // steps)


@dataclass
class Case:
    launcher: Launcher
    rank_var: str | None  # the variable that numbers the copies; None: copies are not numbered
    copies: Callable[[int, int], int]
    exit_code: Callable[[int, int], int] = lambda tpn, nodes: 3  # when every copy exits 3


def every(tpn: int, nodes: int) -> int:
    return tpn * nodes


CASES = [
    Case(SimpleLauncher(), None, lambda t, n: 1),
    Case(WrappedLauncher(prepend="time -p"), None, lambda t, n: 1),
    Case(SingleNodeLauncher(), None, every),
    Case(SingleNodeLauncher(fail_on_any=True), None, every),
    Case(SrunLauncher(), "SLURM_PROCID", every),
    Case(SrunLauncher(overrides="--cpu-bind=none"), "SLURM_PROCID", every),
    Case(SrunMPILauncher(), None, srun_mpi_copies),
    Case(MpiExecLauncher(), "PMI_RANK", every),
    Case(MpiExecLauncher(bind_cmd="--cpu-bind", overrides="--depth 1"), "PMI_RANK", every),
    Case(MpiExecLauncher(bind_cmd=""), "PMI_RANK", every),
    Case(MpiRunLauncher(), "OMPI_COMM_WORLD_RANK", every),
    Case(MpiRunLauncher(bash_location="/usr/bin/env bash", overrides="--oversubscribe"), "OMPI_COMM_WORLD_RANK",
         every),
    Case(AprunLauncher(), "ALPS_APP_PE", every),
    Case(JsrunLauncher(), "JSM_NAMESPACE_RANK", every),
    Case(GnuParallelLauncher(), "PARALLEL_SEQ", every, exit_code=lambda t, n: min(101, t * n)),
]
SHAPES = [(1, 1), (2, 1), (1, 3), (3, 2)]


@pytest.fixture(scope="module")
def stub_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    bin_dir = tmp_path_factory.mktemp("stub-bin")
    launch_stub.install(str(bin_dir))
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def job_env(tmp_path: Path, stub_path: str, nodes: int, **extra: str) -> dict[str, str]:
    """A batch job's environment: a fake Slurm allocation and PBS node file of ``nodes`` hosts."""
    nodefile = tmp_path / "nodefile"
    # PBS lists a host once per cpu it gives the job.
    nodefile.write_text("".join(f"cn{i:02d}\n" * CORES for i in range(nodes)))
    return {**os.environ, "PATH": stub_path, "HTEX_SCRIPT_DIR": str(tmp_path), "JOBNAME": "job1",
            "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_CPUS_ON_NODE": str(CORES), "PBS_NODEFILE": str(nodefile),
            "OUT": str(tmp_path / "out.txt"), **extra}


def run_job(text: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", text], env=env, capture_output=True, text=True, timeout=60)


def ids(case: Case) -> str:
    return repr(case.launcher)


@pytest.mark.parametrize(("tpn", "nodes"), [*SHAPES, (8, 4)])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_output_is_valid_bash(case: Case, tpn: int, nodes: int) -> None:
    text = case.launcher("echo hi {block_id} 'quoted' \"$HOME\"", tpn, nodes)
    check = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(("tpn", "nodes"), SHAPES)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_runs_each_copy_once(case: Case, tpn: int, nodes: int, tmp_path: Path, stub_path: str) -> None:
    rank = f"${{{case.rank_var}}}" if case.rank_var else "-"
    command = f'echo "{rank} ${{HTEX_STUB_HOST:-here}}" >> "$OUT"'
    r = run_job(case.launcher(command, tpn, nodes), job_env(tmp_path, stub_path, nodes))
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "out.txt").read_text().splitlines()
    expected = case.copies(tpn, nodes)
    assert len(lines) == expected, lines
    if case.rank_var is not None:
        ranks = sorted(int(line.split()[0]) for line in lines)
        first = 1 if case.rank_var == "PARALLEL_SEQ" else 0
        assert ranks == list(range(first, first + expected))


@pytest.mark.parametrize(("tpn", "nodes"), [(1, 1), (2, 2)])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_failure_is_the_job_exit_code(case: Case, tpn: int, nodes: int, tmp_path: Path, stub_path: str) -> None:
    r = run_job(case.launcher("exit 3", tpn, nodes), job_env(tmp_path, stub_path, nodes))
    assert r.returncode == case.exit_code(tpn, nodes), r.stderr


def test_mpiexec_places_tasks_per_node_on_each_pbs_host(tmp_path: Path, stub_path: str) -> None:
    text = MpiExecLauncher()('echo "$PMI_RANK $HTEX_STUB_HOST" >> "$OUT"', 3, 2)
    assert run_job(text, job_env(tmp_path, stub_path, 2)).returncode == 0
    hosts = Counter(line.split()[1] for line in (tmp_path / "out.txt").read_text().splitlines())
    assert hosts == {"cn00": 3, "cn01": 3}
    # The host file holds each host once, not once per cpu as PBS_NODEFILE does.
    (hostfile,) = tmp_path.glob("hosts_job1.*.txt")
    assert hostfile.read_text().split() == ["cn00", "cn01"]


def test_srun_spreads_tasks_per_node_and_labels_output(tmp_path: Path, stub_path: str) -> None:
    text = SrunLauncher()('echo "node $SLURM_NODEID"', 2, 3)
    r = run_job(text, job_env(tmp_path, stub_path, 3))
    assert r.returncode == 0, r.stderr
    lines = sorted(r.stdout.splitlines())
    assert Counter(line.split(": ")[1] for line in lines) == {"node 0": 2, "node 1": 2, "node 2": 2}
    assert sorted(int(line.split(":")[0]) for line in lines) == list(range(6))


def test_srun_asking_for_more_nodes_than_allocated_fails(tmp_path: Path, stub_path: str) -> None:
    r = run_job(SrunLauncher()('echo x >> "$OUT"', 1, 3), job_env(tmp_path, stub_path, 2))
    assert r.returncode != 0 and "only 2 nodes" in r.stderr


AWKWARD = """\
cat >> "$OUT" <<'HTEX_REF_CMD_EOF'
it's "quoted" $HOME `not run` \\n {block_id}
HTEX_REF_CMD_EOF
echo "args: $#" >> "$OUT"
"""


@pytest.mark.parametrize("launcher", [SrunLauncher(), MpiExecLauncher(), MpiRunLauncher(), AprunLauncher(),
                                      JsrunLauncher(), GnuParallelLauncher()], ids=repr)
def test_command_file_keeps_the_command_verbatim(launcher: Launcher, tmp_path: Path, stub_path: str) -> None:
    assert heredoc_delimiter(AWKWARD) != "HTEX_REF_CMD_EOF"
    r = run_job(launcher(AWKWARD, 1, 1), job_env(tmp_path, stub_path, 1))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.txt").read_text() == "it's \"quoted\" $HOME `not run` \\n {block_id}\nargs: 0\n"
    (cmd_file,) = tmp_path.glob("cmd_job1.*.sh")
    assert cmd_file.read_text() == AWKWARD


@pytest.mark.skipif(shutil.which("parallel") is None, reason="GNU parallel is not installed")
@pytest.mark.parametrize("home_has_recorded_env", [False, True])
def test_gnu_parallel_launcher_with_the_real_parallel(tmp_path: Path, home_has_recorded_env: bool) -> None:
    home = tmp_path / "home"
    (home / ".parallel").mkdir(parents=True)
    if home_has_recorded_env:
        (home / ".parallel" / "ignored_vars").write_text("HOME\n")
    env = {**os.environ, "HOME": str(home), "HTEX_SCRIPT_DIR": str(tmp_path), "JOBNAME": "gp",
           "OUT": str(tmp_path / "out.txt")}
    env.pop("PBS_NODEFILE", None)
    text = GnuParallelLauncher()('echo "$PARALLEL_SEQ" >> "$OUT"; exit "${RC:-0}"', 3, 2)
    r = run_job(text, env)
    assert r.returncode == 0, r.stderr
    assert sorted(int(x) for x in (tmp_path / "out.txt").read_text().split()) == list(range(1, 7))
    assert run_job(text, {**env, "RC": "1"}).returncode == 6  # parallel exits with the number of failures


def _hydra() -> bool:
    """Whether the mpiexec on PATH is MPICH's Hydra (the one MpiExecLauncher's options are for)."""
    if shutil.which("mpiexec") is None:
        return False
    out = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True, timeout=30).stdout
    return "HYDRA" in out


@pytest.mark.skipif(not _hydra(), reason="MPICH (Hydra mpiexec) is not installed")
@pytest.mark.parametrize("launcher", [MpiExecLauncher(), MpiRunLauncher()], ids=repr)
def test_mpi_launchers_with_the_real_mpich(tmp_path: Path, launcher: Launcher) -> None:
    nodefile = tmp_path / "nodefile"
    nodefile.write_text(f"{socket.gethostname()}\n" * 4)
    env = {**os.environ, "HTEX_SCRIPT_DIR": str(tmp_path), "JOBNAME": "mpi", "OUT": str(tmp_path / "out.txt"),
           "PBS_NODEFILE": str(nodefile)}
    text = launcher('echo "$PMI_RANK" >> "$OUT"; exit "${RC:-0}"', 3, 1)
    r = run_job(text, env)
    assert r.returncode == 0, r.stderr
    assert sorted(int(x) for x in (tmp_path / "out.txt").read_text().split()) == [0, 1, 2]
    assert run_job(text, {**env, "RC": "4"}).returncode == 4


def test_wrapped_launcher_runs_the_command_under_its_prefix(tmp_path: Path, stub_path: str) -> None:
    text = WrappedLauncher("env HTEX_WRAPPED=yes")("bash -c 'echo \"$HTEX_WRAPPED\" >> \"$OUT\"'", 1, 1)
    assert run_job(text, job_env(tmp_path, stub_path, 1)).returncode == 0
    assert (tmp_path / "out.txt").read_text() == "yes\n"


def test_single_node_passes_the_copy_number() -> None:
    r = subprocess.run(["bash", "-c", SingleNodeLauncher()('echo "copy $1"', 3, 1)], capture_output=True,
                       text=True, timeout=30)
    assert sorted(r.stdout.splitlines()) == ["copy 1", "copy 2", "copy 3"]


def test_reprs_show_parameters() -> None:
    assert repr(SrunLauncher(overrides="--mpi=none")) == "SrunLauncher(overrides='--mpi=none')"
    assert repr(MpiExecLauncher()) == "MpiExecLauncher(bind_cmd='--bind-to', overrides='')"
    assert repr(MpiRunLauncher()) == "MpiRunLauncher(bash_location='/bin/bash', overrides='')"
    assert repr(WrappedLauncher("time")) == "WrappedLauncher(prepend='time')"
    assert repr(SingleNodeLauncher()) == "SingleNodeLauncher(fail_on_any=False)"
    assert repr(GnuParallelLauncher()) == "GnuParallelLauncher()"
    assert {cls.__name__ for cls in ALL_LAUNCHERS} == {type(c.launcher).__name__ for c in CASES}


@pytest.mark.parametrize(("make", "name"), [
    (lambda: SrunLauncher(overrides=3), "overrides"),  # type: ignore[arg-type]
    (lambda: SrunMPILauncher(overrides=None), "overrides"),  # type: ignore[arg-type]
    (lambda: MpiExecLauncher(bind_cmd=["--bind-to"]), "bind_cmd"),  # type: ignore[arg-type]
    (lambda: MpiRunLauncher(bash_location=""), "bash_location"),
    (lambda: AprunLauncher(overrides="-cc none\nrm -rf /"), "overrides"),
    (lambda: JsrunLauncher(overrides=b"-a 1"), "overrides"),  # type: ignore[arg-type]
    (lambda: WrappedLauncher(prepend=1), "prepend"),  # type: ignore[arg-type]
    (lambda: SingleNodeLauncher(fail_on_any="yes"), "fail_on_any"),  # type: ignore[arg-type]
    (lambda: MpiExecLauncher(bind_cmd="--bind-to none"), "bind_cmd"),
    (lambda: MpiExecLauncher(bind_cmd=" --cpu-bind"), "bind_cmd"),
    (lambda: MpiRunLauncher(bash_location="   "), "bash_location"),
])
def test_bad_constructor_arguments_are_named(make: Callable[[], Launcher], name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        make()


def test_bind_cmd_with_an_option_value_points_at_overrides() -> None:
    with pytest.raises(ConfigurationError, match=r"put other mpiexec options in overrides, got '--bind-to none'"):
        MpiExecLauncher(bind_cmd="--bind-to none")
    text = MpiExecLauncher(bind_cmd="--cpu-bind", overrides="--envall")("cmd", 2, 1)
    assert "--cpu-bind none --envall" in text
    assert "none" not in MpiExecLauncher(bind_cmd="")("cmd", 2, 1)


def test_blank_bash_location_is_reported_as_given() -> None:
    with pytest.raises(ConfigurationError, match=r"bash_location must name a shell, got '   '"):
        MpiRunLauncher(bash_location="   ")


@pytest.mark.parametrize("launcher", [c.launcher for c in CASES], ids=repr)
def test_bad_call_arguments_are_named(launcher: Launcher) -> None:
    with pytest.raises(ConfigurationError, match="tasks_per_node"):
        launcher("cmd", 0, 1)
    with pytest.raises(ConfigurationError, match="nodes_per_block"):
        launcher("cmd", 1, True)
    with pytest.raises(ConfigurationError, match="command"):
        launcher("  ", 1, 1)


@pytest.mark.parametrize("cls", ALL_LAUNCHERS, ids=lambda c: c.__name__)
def test_debug_says_what_the_launcher_starts_and_is_off_by_default(cls: type[Launcher]) -> None:
    plain, loud = cls(), cls(debug=True)  # type: ignore[call-arg]
    assert plain.debug is False and loud.debug is True and "debug=True" in repr(loud)
    text = loud("echo hi", 2, 1)
    assert text.startswith(f'echo "htex_ref {cls.__name__}: 2 cop(ies) of the worker-pool command, 1 node(s)')
    assert text.endswith(plain("echo hi", 2, 1))
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    with pytest.raises(ConfigurationError, match=f"{cls.__name__}.debug must be a bool"):
        cls(debug="yes")  # type: ignore[call-arg]
