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
from htex_ref.core.blocks import Start, StatusQuery
from htex_ref.errors import ScalingFailed
from tests.unit.control_harness import FakeProvider, Harness

FAILED, MISSING, RUNNING, COMPLETED = JobState.FAILED, JobState.MISSING, JobState.RUNNING, JobState.COMPLETED


def executor(init_blocks: int = 1, **kwargs: Any) -> HighThroughputExecutor:
    provider = LocalProvider(init_blocks=init_blocks, max_blocks=max(1, init_blocks))
    return HighThroughputExecutor(label="hx", provider=provider, **kwargs)


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


# ------------------------------------------------------------------ registration time-out, in block control


def timed(timeout: float | None, registered: list[str]) -> Harness:
    """Block control with blocks 0 and 1 (jobs j0, j1) launched at time 0, both PENDING."""
    h = Harness(FakeProvider(init_blocks=2, max_blocks=2), registration_timeout=timeout, registered=registered)
    h.run(Start(), 0.0)
    assert h.core.blocks_to_job_id == {"0": "j0", "1": "j1"}
    return h


def refresh(h: Harness, now: float) -> dict[str, JobStatus]:
    """One wake of the control thread at ``now`` with a refresh due; the statuses the error rule saw (none
    once the executor is in bad state: block control then refreshes nothing)."""
    h.core.last_status = None  # a refresh is due whenever the test says so
    h.run(None, now)
    return h.core.last_status[1] if h.core.last_status is not None else {}


def test_time_out_counts_from_first_seen_running_then_cancels_and_fails() -> None:
    h = timed(120.0, registered=[])
    refresh(h, 0.0)  # both pending: the queue wait does not count
    h.set_jobs(RUNNING)
    refresh(h, 500.0)  # first seen running at 500
    assert refresh(h, 619.0)["0"].state == RUNNING
    assert h.provider.cancelled == []  # nothing due
    statuses = refresh(h, 620.0)
    assert h.provider.cancelled == ["j0", "j1"]
    assert statuses["0"].state == MISSING and "has been running for 120 s" in str(statuses["0"].message)
    assert "/jobs/j0.out" in str(statuses["0"].message)
    assert h.run(StatusQuery(), 620.0)["0"].state == JobState.CANCELLED  # the provider's view
    assert h.run(StatusQuery(with_missing=True), 620.0)["1"].state == MISSING  # what the handler keeps seeing
    assert "block_registration_timeout=120 s" in str(h.target.failure)  # both failed: simple handler
    refresh(h, 1000.0)
    assert h.provider.cancelled == ["j0", "j1"]  # once


def test_registered_block_is_not_timed_out() -> None:
    h = timed(10.0, registered=["1"])
    h.set_jobs(RUNNING)
    refresh(h, 0.0)
    refresh(h, 10.0)
    assert h.provider.cancelled == ["j0"]
    assert h.run(StatusQuery(with_missing=True), 10.0)["1"].state == RUNNING
    assert h.target.failure is None  # simple handler: block 1 still runs


def test_no_time_out_when_disabled() -> None:
    h = timed(None, registered=[])
    h.set_jobs(RUNNING, "0")
    refresh(h, 0.0)
    refresh(h, 1e9)
    assert h.provider.cancelled == []
