"""LocalProvider with real bash jobs, and launchers' shell text."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil
import pytest

from htex_ref import JobState, LocalProvider, SimpleLauncher, SingleNodeLauncher
from htex_ref.errors import ConfigurationError
from htex_ref.providers.base import summarize
from tests.conftest import wait_until


def provider(tmp_path: Path, **kwargs: object) -> LocalProvider:
    p = LocalProvider(**kwargs)  # type: ignore[arg-type]
    p.script_dir = str(tmp_path / "scripts")
    return p


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for init to reap it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_terminal(p: LocalProvider, job: str) -> None:
    assert wait_until(lambda: p.status([job])[0].terminal, 30)


@pytest.mark.parametrize("tasks_per_node", [1, 2])
def test_exit_codes_and_output(tmp_path: Path, tasks_per_node: int) -> None:
    p = provider(tmp_path)
    ok = p.submit("/bin/true", tasks_per_node, "ok")
    bad = p.submit("exit 7", tasks_per_node, "bad")
    out = p.submit("echo -n magic", tasks_per_node, "out")
    err = p.submit("echo -n magic 1>&2", tasks_per_node, "err")
    for job in (ok, bad, out, err):
        wait_terminal(p, job)
    s_ok, s_bad, s_out, s_err = p.status([ok, bad, out, err])
    assert (s_ok.state, s_ok.exit_code) == (JobState.COMPLETED, 0)
    assert (s_bad.state, s_bad.exit_code) == (JobState.FAILED, 7)
    assert "exited with code 7" in (s_bad.message or "")
    assert s_out.stdout == "magic" * tasks_per_node
    assert s_err.stderr == "magic" * tasks_per_node
    assert Path(s_ok.stdout_path or "").parent == tmp_path / "scripts"


def test_worker_init_and_jobname(tmp_path: Path) -> None:
    p = provider(tmp_path, worker_init="export GREETING=hello")
    job = p.submit('echo "$GREETING $JOBNAME"', 1, "named")
    wait_terminal(p, job)
    assert p.status([job])[0].stdout == "hello named\n"


def test_walltime_ends_a_job_as_a_batch_system_would(tmp_path: Path) -> None:
    """Past its walltime a job gets SIGTERM, and SIGKILL after cancel_grace if it ignores it (this one
    does); it ends TIMEOUT. Status reads never wait for it."""
    p = provider(tmp_path, walltime="00:00:01", cancel_grace=0.5)
    assert p.walltime_seconds == 1
    marker = tmp_path / "child.pid"
    job = p.submit(f"trap '' TERM; sleep 300 & echo $! > {marker}; wait", 1, "stubborn")
    assert wait_until(lambda: marker.exists() and marker.read_text().strip() != "", 10)
    child = int(marker.read_text())
    slowest = 0.0

    def timed_status() -> JobState:
        nonlocal slowest
        t0 = time.monotonic()
        st = p.status([job])[0].state
        slowest = max(slowest, time.monotonic() - t0)
        return st

    assert wait_until(lambda: timed_status() is JobState.TIMEOUT, 15)
    assert "reached its walltime (00:00:01)" in (p.status([job])[0].message or "")
    assert slowest < 0.5, f"a status read took {slowest:.2f} s"
    assert wait_until(lambda: not alive(child), 5), "the job's child process outlived its walltime"
    # The script records when the job started, first thing, for pools that drain before the walltime.
    script = (tmp_path / "scripts" / "stubborn.sh").read_text()
    assert script.splitlines()[1] == 'export HTEX_REF_JOB_START="$(date +%s)"'


def test_cancel_kills_the_whole_process_group(tmp_path: Path) -> None:
    p = provider(tmp_path, cancel_grace=1.0)
    marker = tmp_path / "child.pid"
    job = p.submit(f"sleep 300 & echo $! > {marker}; wait", 1, "long")
    assert wait_until(marker.exists, 10) and wait_until(lambda: marker.read_text().strip() != "", 10)
    child = int(marker.read_text())
    assert p.status([job])[0].state is JobState.RUNNING
    t0 = time.monotonic()
    assert p.cancel([job]) == [True]
    assert time.monotonic() - t0 < 5
    assert p.status([job])[0].state is JobState.CANCELLED
    assert wait_until(lambda: not alive(child), 5), "the job's child process survived the cancel"
    assert p.cancel(["no-such-job"]) == [False]
    assert p.status(["no-such-job"])[0].state is JobState.MISSING


def test_terminal_state_is_kept(tmp_path: Path) -> None:
    p = provider(tmp_path)
    job = p.submit("exit 3", 1, "once")
    wait_terminal(p, job)
    first = p.status([job])[0]
    assert p.cancel([job]) == [True]  # already finished: nothing to do, and the state stays
    assert p.status([job])[0] == first


@pytest.mark.parametrize("launcher", [SimpleLauncher(), SingleNodeLauncher(), SingleNodeLauncher(fail_on_any=True)])
@pytest.mark.parametrize(("tasks_per_node", "nodes"), [(1, 1), (3, 1), (2, 2)])
def test_launcher_text_is_valid_bash(launcher: object, tasks_per_node: int, nodes: int) -> None:
    text = launcher("echo hi {block_id}", tasks_per_node, nodes)  # type: ignore[operator]
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_single_node_launcher_runs_every_copy_and_reports_failures() -> None:
    def run(text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", text], capture_output=True, text=True, timeout=30)

    r = run(SingleNodeLauncher()('echo "copy $1"', 3, 1))
    assert r.returncode == 0 and sorted(r.stdout.split("\n")[:-1]) == ["copy 1", "copy 2", "copy 3"]
    # One copy failing: the job fails only with fail_on_any.
    one_fails = 'if [ "$1" = 2 ]; then exit 5; fi'
    assert run(SingleNodeLauncher()(one_fails, 3, 1)).returncode == 0
    assert run(SingleNodeLauncher(fail_on_any=True)(one_fails, 3, 1)).returncode == 5
    assert run(SingleNodeLauncher()("exit 9", 2, 1)).returncode == 9
    assert SimpleLauncher()("cmd --x", 4, 1) == "cmd --x"


def test_summary_keeps_head_and_tail() -> None:
    text = "a" * 3000 + "END"
    s = summarize(text)
    assert s is not None and len(s) < 2100 and s.startswith("a") and s.endswith("END") and "\n...\n" in s
    assert summarize("short") == "short" and summarize(None) is None


def test_bad_block_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="min_blocks"):
        LocalProvider(min_blocks=3, max_blocks=1)
    with pytest.raises(ValueError, match="nodes_per_block"):
        LocalProvider(nodes_per_block=0)
    with pytest.raises(ValueError, match="parallelism"):
        LocalProvider(parallelism=2)
    with pytest.raises(TypeError, match="launcher"):
        LocalProvider(launcher="srun")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"init_blocks \(2\) is greater than max_blocks \(1\)"):
        LocalProvider(init_blocks=2)
    with pytest.raises(ValueError, match="parallelism"):
        LocalProvider(parallelism=True)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"cores_per_node": -1}, "cores_per_node"),
    ({"cores_per_node": 2.5}, "cores_per_node"),
    ({"mem_per_node": 0}, "mem_per_node"),
    ({"mem_per_node": float("inf")}, "mem_per_node"),
    ({"cancel_grace": -1}, "cancel_grace"),
    ({"cancel_grace": float("nan")}, "cancel_grace"),
    ({"worker_init": 3}, "worker_init"),
    ({"worker_init": ["module load x"]}, "worker_init"),
    ({"cmd_timeout": 0}, "cmd_timeout"),
    ({"cmd_timeout": float("inf")}, "cmd_timeout"),
    ({"cmd_timeout": "30"}, "cmd_timeout"),
    ({"label": ""}, "label"),
    ({"walltime": "1h"}, "walltime"),
    ({"walltime": 60}, "walltime"),
])
def test_bad_local_settings_are_named(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"LocalProvider\.{name} must (be|look like)"):
        LocalProvider(**kwargs)  # type: ignore[arg-type]


def test_local_settings_that_work_are_kept() -> None:
    p = LocalProvider(cores_per_node=4, mem_per_node=2.5, cancel_grace=0, cmd_timeout=5, init_blocks=2, max_blocks=2)
    assert (p.cores_per_node, p.mem_per_node, p.cancel_grace, p.cmd_timeout) == (4, 2.5, 0.0, 5.0)
