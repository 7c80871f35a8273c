"""Loading and closing configurations with apps in flight: a with-block waits for its apps, an exception
(or exit_mode="cleanup") fails them at once, and nothing is left running either way."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import htex_ref
from htex_ref import Config, ExecutorShutdown, HighThroughputExecutor, NoConfigLoaded, python_app
from htex_ref import config as config_module
from tests.conftest import processes_mentioning, wait_until

pytestmark = pytest.mark.e2e


@python_app
def wait_for_file(path: str, value: Any) -> Any:
    """Returns once ``path`` exists (at most 60 s), so a test decides when the task ends."""
    import os
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


@python_app
def inc(x: int) -> int:
    return x + 1


def small_config(run_dir: Path, **options: Any) -> Config:
    cfg = htex_ref.local_config(run_dir=str(run_dir), encrypted=False, max_workers_per_node=2,
                                heartbeat_period=2, heartbeat_threshold=10)
    for name, value in options.items():
        setattr(cfg, name, value)
    return cfg


def no_leftovers(path: Path) -> None:
    assert wait_until(lambda: not processes_mentioning(str(path)), 10), (
        f"processes left behind: {[p.info['cmdline'] for p in processes_mentioning(str(path))]}")


def test_leaving_the_block_waits_for_launched_apps(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with htex_ref.load(small_config(tmp_path / "run")) as session:
        held = wait_for_file(str(gate), 1)
        after = inc(inc(held))
        assert not after.done()
        gate.touch()
    # Leaving waited: nothing failed with ExecutorShutdown.
    assert after.result(timeout=0) == 3
    assert session.closed and config_module._current is None
    with pytest.raises(NoConfigLoaded, match=r"htex_ref\.load\(\)"):
        inc(1)
    no_leftovers(tmp_path)


def test_an_exception_in_the_block_fails_apps_at_once(tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # never created
    start = time.monotonic()
    with pytest.raises(KeyError), htex_ref.load(small_config(tmp_path / "run")):
        running = wait_for_file(str(gate), 1)
        waiting = inc(running)
        raise KeyError("user error")
    for fut in (running, waiting):
        err = fut.exception(timeout=10)
        assert isinstance(err, ExecutorShutdown)
    assert waiting.name in str(waiting.exception())
    assert time.monotonic() - start < 30  # not the task's 60 s
    no_leftovers(tmp_path)


def test_exit_mode_cleanup_does_not_wait_and_another_config_loads_afterwards(tmp_path: Path) -> None:
    with htex_ref.load(small_config(tmp_path / "one", exit_mode="cleanup")):
        held = wait_for_file(str(tmp_path / "never"), 1)
    assert isinstance(held.exception(timeout=10), ExecutorShutdown)
    session = htex_ref.load(small_config(tmp_path / "two"))
    try:
        assert inc(inc(0)).result(timeout=60) == 2
    finally:
        htex_ref.clear()
    assert session.closed
    htex_ref.clear()  # nothing loaded: a no-op
    no_leftovers(tmp_path)


def test_a_config_whose_executor_cannot_start_leaves_nothing_loaded(tmp_path: Path) -> None:
    good = small_config(tmp_path / "good").executors[0]
    bad = htex_ref.HighThroughputExecutor(label="bad", encrypted=False, address="127.0.0.1",
                                          run_dir=str(tmp_path / "bad"))
    bad.start()  # a second start() fails
    try:
        with pytest.raises(RuntimeError, match="already started"):
            htex_ref.load(Config(executors=[good, bad]))
        assert config_module._current is None
    finally:
        bad.shutdown(wait=False)
    no_leftovers(tmp_path)


def test_a_load_whose_executor_fails_to_start_leaves_no_log_handler(tmp_path: Path) -> None:
    broken = HighThroughputExecutor(label="broken", interchange_launch_cmd=["/bin/false"], interchange_start_timeout=5,
                                    run_dir=str(tmp_path / "broken"))
    with pytest.raises(Exception, match="interchange"):
        htex_ref.load(Config(executors=[broken], run_dir=str(tmp_path / "runs")))
    assert config_module._current is None
    # Its log handler would otherwise stay on htex_ref's logger, and every later log line would go there.
    assert not any(isinstance(h, config_module._LogHandlers) for h in logging.getLogger("htex_ref").handlers)
    no_leftovers(tmp_path)


def test_a_script_that_never_closes_its_config_exits_cleanly(tmp_path: Path) -> None:
    script = tmp_path / "forgetful.py"
    script.write_text(
        "import htex_ref\n"
        "from concurrent.futures import Future\n"
        "@htex_ref.python_app\n"
        "def inc(x):\n"
        "    return x + 1\n"
        "htex_ref.load(htex_ref.local_config(encrypted=False, max_workers_per_node=1))\n"
        "print(inc(1).result(timeout=60), flush=True)\n"
        "pending = inc(Future())  # waits forever for a future nobody resolves\n"
    )
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "2\n"
    assert "Python is exiting with a configuration still loaded" in proc.stderr
    no_leftovers(tmp_path)
