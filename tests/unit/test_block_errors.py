"""Block error handlers (htex_ref.block_errors) on an executor that is never started: no process runs."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

import htex_ref
from htex_ref import HighThroughputExecutor, JobState, JobStatus, LocalProvider
from htex_ref.block_errors import (
    noop_error_handler,
    resolve_block_error_handler,
    simple_error_handler,
    windowed_error_handler,
)
from htex_ref.errors import ScalingFailed

FAILED, MISSING, RUNNING, COMPLETED = JobState.FAILED, JobState.MISSING, JobState.RUNNING, JobState.COMPLETED


def executor(init_blocks: int = 1, **kwargs: Any) -> HighThroughputExecutor:
    return HighThroughputExecutor(label="hx", provider=LocalProvider(init_blocks=init_blocks), **kwargs)


def failed(block: str, tmp_path: Path, code: int = 3, state: JobState = FAILED) -> JobStatus:
    out, err = tmp_path / f"{block}.out", tmp_path / f"{block}.err"
    out.write_text(f"stdout of block {block}\n")
    err.write_text(f"stderr of block {block}\n")
    return JobStatus(state, f"job of block {block} exited with code {code}", code, str(out), str(err))


def test_names_and_bools_resolve_to_handlers() -> None:
    assert resolve_block_error_handler(True) is simple_error_handler
    assert resolve_block_error_handler("simple") is simple_error_handler
    assert resolve_block_error_handler("windowed") is windowed_error_handler
    assert resolve_block_error_handler(False) is noop_error_handler
    assert resolve_block_error_handler("none") is noop_error_handler
    custom = functools.partial(windowed_error_handler, threshold=2)
    assert resolve_block_error_handler(custom) is custom
    assert executor(block_error_handler="windowed").block_error_handler is windowed_error_handler
    assert executor().block_error_handler is simple_error_handler  # the default, as in Parsl


def test_handlers_are_exported_at_top_level() -> None:
    assert htex_ref.simple_error_handler is simple_error_handler
    assert htex_ref.windowed_error_handler is windowed_error_handler
    assert htex_ref.noop_error_handler is noop_error_handler
    assert {"simple_error_handler", "windowed_error_handler", "noop_error_handler"} <= set(dir(htex_ref))


def test_simple_threshold_is_init_blocks(tmp_path: Path) -> None:
    ex = executor(init_blocks=3)
    ex.handle_block_errors({"0": failed("0", tmp_path), "1": failed("1", tmp_path)})
    assert not ex.bad_state_is_set  # two blocks, init_blocks=3
    ex.handle_block_errors({"0": failed("0", tmp_path), "1": failed("1", tmp_path),
                            "2": failed("2", tmp_path, state=MISSING)})
    assert isinstance(ex.executor_exception, ScalingFailed)
    text = str(ex.executor_exception)
    assert text.startswith("all 3 blocks of executor hx failed:")
    for b in "012":
        assert f"stdout of block {b}" in text and f"stderr of block {b}" in text
    assert "block 2: MISSING" in text and text.count("EXIT CODE: 3") == 3


def test_simple_explicit_threshold_is_used(tmp_path: Path) -> None:
    ex = executor(init_blocks=3, block_error_handler=functools.partial(simple_error_handler, threshold=1))
    ex.handle_block_errors({"0": failed("0", tmp_path)})
    assert ex.bad_state_is_set


def test_windowed_lists_only_the_window_in_numeric_order(tmp_path: Path) -> None:
    ex = executor(block_error_handler="windowed")
    statuses = {"8": failed("8", tmp_path, code=1), "9": JobStatus(COMPLETED, None, 0),
                "10": failed("10", tmp_path), "21": failed("21", tmp_path), "22": failed("22", tmp_path)}
    ex.handle_block_errors(statuses)
    text = str(ex.executor_exception)
    assert text.startswith("the last 3 blocks of executor hx (by block id) failed:")
    assert text.index("block 10:") < text.index("block 21:") < text.index("block 22:")
    assert "block 8:" not in text and "block 9:" not in text and "EXIT CODE: 1" not in text
    assert text.count("EXIT CODE: 3") == 3 and "stderr of block 22" in text


def test_windowed_partial_threshold(tmp_path: Path) -> None:
    statuses = {"0": failed("0", tmp_path), "1": JobStatus(RUNNING), "2": failed("2", tmp_path),
                "3": failed("3", tmp_path)}
    default = executor(block_error_handler=windowed_error_handler)
    default.handle_block_errors(statuses)
    assert not default.bad_state_is_set  # block 1 is in the last 3
    two = executor(block_error_handler=functools.partial(windowed_error_handler, threshold=2))
    two.handle_block_errors(statuses)
    assert "the last 2 blocks" in str(two.executor_exception)


def test_noop_never_fails(tmp_path: Path) -> None:
    for setting in (False, "none"):
        ex = executor(block_error_handler=setting)
        ex.handle_block_errors({str(i): failed(str(i), tmp_path) for i in range(5)})
        assert not ex.bad_state_is_set


def test_custom_handler_gets_executor_and_statuses_until_bad_state(tmp_path: Path) -> None:
    calls: list[tuple[Any, dict[str, JobStatus]]] = []
    ex = executor(block_error_handler=lambda e, st: calls.append((e, st)))
    statuses = {"0": failed("0", tmp_path)}
    ex.handle_block_errors(statuses)
    assert calls == [(ex, statuses)]
    ex.set_bad_state_and_fail_all(RuntimeError("stop"))
    ex.handle_block_errors(statuses)
    assert len(calls) == 1  # a handler is not asked again once the executor is in bad state


def test_bad_state_fails_outstanding_futures_with_the_report(tmp_path: Path) -> None:
    ex = executor()
    fut = htex_ref.HtexFuture(1)
    ex.tasks[1] = fut
    ex.handle_block_errors({"0": failed("0", tmp_path, code=7)})
    with pytest.raises(htex_ref.BadStateException, match="EXIT CODE: 7"):
        fut.result(0)
