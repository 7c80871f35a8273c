"""Unit tests for worker-count planning (htex_ref.core.planning), scale-in choice and the block-failure
rules (htex_ref.core.scaling)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from htex_ref.core.interchange import BlockLoad
from htex_ref.core.planning import plan_workers
from htex_ref.core.scaling import (
    BlockRegistration,
    blocks_all_failed,
    blocks_last_failed,
    blocks_registration_timed_out,
    last_blocks,
)
from htex_ref.core.scaling import choose_blocks_to_scale_in as choose


def plan(**kw):
    args = {
        "max_workers_per_node": None,
        "cores_per_worker": 1.0,
        "mem_per_worker": None,
        "cores": None,
        "mem_gb": None,
    }
    args.update(kw)
    return plan_workers(**args)


# ---------------------------------------------------------------------------------------- planning


def test_count_is_min_of_bounds():
    p = plan(max_workers_per_node=10, cores_per_worker=2, cores=16, mem_per_worker=4, mem_gb=20)
    assert p.count == 5  # memory: 20 / 4
    assert p.limits == {"max_workers_per_node": 10, "cores": 8, "memory": 5, "accelerators": math.inf}
    assert plan(max_workers_per_node=3, cores=16, mem_per_worker=1, mem_gb=64).count == 3
    assert plan(max_workers_per_node=50, cores_per_worker=4, cores=16, mem_per_worker=1, mem_gb=64).count == 4


def test_fractional_bounds_round_down():
    assert plan(cores=7, cores_per_worker=2).count == 3
    assert plan(mem_gb=10, mem_per_worker=3).count == 3
    assert plan(cores=8, cores_per_worker=0.5).count == 16
    assert plan(max_workers_per_node=2.5, cores=64).count == 2


@pytest.mark.parametrize("unbounded", [None, 0])
def test_none_or_zero_max_workers_means_unbounded(unbounded):
    p = plan(max_workers_per_node=unbounded, cores=12)
    assert p.count == 12
    assert p.limits["max_workers_per_node"] == math.inf


def test_accelerators_cap_the_count():
    p = plan(cores=64, accelerators=["0", "1", "2"])
    assert p.count == 3
    assert p.limits["accelerators"] == 3
    assert plan(cores=2, accelerators=["0", "1", "2", "3"]).count == 2


def test_count_zero_is_possible():
    assert plan(cores=1, cores_per_worker=2).count == 0
    assert plan(cores=64, mem_gb=0.5, mem_per_worker=1).count == 0


@pytest.mark.parametrize("default", [1, 4])
def test_default_when_unbounded(default):
    assert plan(default_when_unbounded=default).count == default
    # Unknown resources and an unbounded max: nothing bounds the count.
    assert plan(max_workers_per_node=0, default_when_unbounded=default).count == default
    assert plan(max_workers_per_node=math.inf, default_when_unbounded=default).count == default
    # Any single bound replaces the default.
    assert plan(max_workers_per_node=7, default_when_unbounded=default).count == 7
    assert plan(accelerators=["a"], default_when_unbounded=default).count == 1


def test_unknown_resources_put_no_bound():
    p = plan(max_workers_per_node=6, cores=None, mem_gb=None, mem_per_worker=2)
    assert p.count == 6
    assert p.limits["cores"] == math.inf and p.limits["memory"] == math.inf


def test_explain_names_each_bound():
    text = plan(max_workers_per_node=10, cores=4, mem_gb=None).explain()
    assert text.startswith("4 workers")
    assert "max_workers_per_node allows 10" in text
    assert "cores allows 4" in text
    assert "memory allows no limit" in text


@given(
    max_workers=st.one_of(st.none(), st.integers(0, 200)),
    cores_per_worker=st.floats(0.25, 8),
    cores=st.one_of(st.none(), st.integers(0, 256)),
    mem_per_worker=st.one_of(st.none(), st.floats(0.25, 16)),
    mem_gb=st.one_of(st.none(), st.floats(0, 1024)),
    n_acc=st.integers(0, 8),
    default=st.integers(1, 8),
)
def test_plan_matches_reference(max_workers, cores_per_worker, cores, mem_per_worker, mem_gb, n_acc, default):
    p = plan_workers(
        max_workers_per_node=max_workers,
        cores_per_worker=cores_per_worker,
        mem_per_worker=mem_per_worker,
        cores=cores,
        mem_gb=mem_gb,
        accelerators=[str(i) for i in range(n_acc)],
        default_when_unbounded=default,
    )
    bounds = []
    if max_workers:
        bounds.append(max_workers)
    if cores is not None:
        bounds.append(math.floor(cores / cores_per_worker))
    if mem_gb is not None and mem_per_worker:
        bounds.append(math.floor(mem_gb / mem_per_worker))
    if n_acc:
        bounds.append(n_acc)
    assert p.count == (min(bounds) if bounds else default)
    assert p.count >= 0


# ----------------------------------------------------------------------------------------- scaling


def mgr(block, tasks=0, idle=0.0, active=True):
    return {"block_id": block, "tasks": tasks, "idle_duration": idle, "active": active}


def loads(managers):
    """Per-block loads as the interchange keeps them (``InterchangeState.block_loads``) for these managers:
    a block is idle for as long as its least idle manager, and busy while any manager holds a task."""
    out = {}
    for b in {m["block_id"] for m in managers if m["block_id"] is not None}:
        mine = [m for m in managers if m["block_id"] == b]
        busy = any(m["tasks"] for m in mine)
        out[b] = BlockLoad(managers=len(mine), active=sum(1 for m in mine if m["active"]), workers=len(mine),
                           tasks=sum(m["tasks"] for m in mine),
                           idle_for=None if busy else min(m["idle_duration"] for m in mine))
    return out


def choose_blocks_to_scale_in(n, blocks, managers):
    return choose(n, blocks, loads(managers))


@pytest.mark.parametrize("n", [0, -1, -5])
def test_scale_in_nothing_for_non_positive_n(n):
    assert choose_blocks_to_scale_in(n, ["1", "2"], [mgr("1"), mgr("2")]) == []


def test_idle_blocks_before_busy_ones():
    managers = [mgr("1", tasks=3), mgr("2", idle=5.0), mgr("3", tasks=1)]
    assert choose_blocks_to_scale_in(1, ["1", "2", "3"], managers) == ["2"]
    assert choose_blocks_to_scale_in(3, ["1", "2", "3"], managers)[0] == "2"
    # Among busy blocks, the one with fewer tasks goes first.
    assert choose_blocks_to_scale_in(3, ["1", "2", "3"], managers) == ["2", "3", "1"]


def test_never_registered_block_goes_first():
    managers = [mgr("1", idle=1e6), mgr("2", tasks=1)]
    assert choose_blocks_to_scale_in(1, ["1", "2", "3"], managers) == ["3"]
    assert choose_blocks_to_scale_in(2, ["1", "2", "3"], managers) == ["3", "1"]


def test_longest_idle_first():
    managers = [mgr("a", idle=10.0), mgr("b", idle=300.0), mgr("c", idle=42.0)]
    assert choose_blocks_to_scale_in(3, ["a", "b", "c"], managers) == ["b", "c", "a"]


def test_block_idle_time_is_its_least_idle_manager():
    # Block x has one long-idle and one busy manager: it is busy. Block y's managers idle 50 and 20 s.
    managers = [mgr("x", idle=1000.0), mgr("x", tasks=2), mgr("y", idle=50.0), mgr("y", idle=20.0), mgr("z", idle=30.0)]
    assert choose_blocks_to_scale_in(3, ["x", "y", "z"], managers) == ["z", "y", "x"]


def test_managers_of_unknown_blocks_are_ignored():
    managers = [mgr("gone", idle=1e9), mgr("1", idle=1.0), mgr(None, idle=5.0)]
    assert choose_blocks_to_scale_in(5, ["1"], managers) == ["1"]


def test_n_larger_than_blocks_returns_all_once():
    out = choose_blocks_to_scale_in(10, ["1", "2", "3"], [mgr("2", tasks=1)])
    assert sorted(out) == ["1", "2", "3"]
    assert out[-1] == "2"


@given(
    blocks=st.lists(st.integers(0, 50).map(str), unique=True, max_size=8),
    data=st.data(),
    n=st.integers(-2, 10),
)
def test_scale_in_properties(blocks, data, n):
    managers = data.draw(
        st.lists(
            st.builds(
                mgr,
                st.one_of(st.sampled_from(blocks) if blocks else st.nothing(), st.just("other")),
                st.integers(0, 3),
                st.floats(0, 1000),
            ),
            max_size=12,
        )
    )
    out = choose_blocks_to_scale_in(n, blocks, managers)
    assert len(out) == max(0, min(n, len(blocks)))
    assert len(set(out)) == len(out)
    assert set(out) <= set(blocks)
    busy = {m["block_id"] for m in managers if m["tasks"]}
    # No busy block is chosen while an idle one is left out.
    if any(b in busy for b in out):
        assert all(b in out for b in blocks if b not in busy)


def test_scale_in_prefers_blocks_whose_managers_are_all_held() -> None:
    managers = [mgr("0", idle=1.0, active=False), mgr("1", idle=50.0), mgr("2", idle=99.0, active=False),
                mgr("2", idle=99.0)]
    assert choose_blocks_to_scale_in(1, ["0", "1", "2"], managers) == ["0"]
    # A block with one held and one active manager still serves work: ranked by idleness.
    assert choose_blocks_to_scale_in(2, ["0", "1", "2"], managers) == ["0", "2"]


# ------------------------------------------------------------------------------- block failure rules

F, M, R, P, C, S = "FAILED", "MISSING", "RUNNING", "PENDING", "COMPLETED", "SCALED_IN"


@pytest.mark.parametrize(
    ("blocks", "threshold", "bad"),
    [
        ({}, 1, False),  # no block: nothing failed
        ({"0": F}, 1, True),
        ({"0": M}, 1, True),  # MISSING (ended before registering) is a failure
        ({"0": F, "1": F}, 3, False),  # all failed, but fewer than threshold (init_blocks=3 in Parsl's test)
        ({"0": C, "1": F, "2": F, "3": F}, 3, False),  # one completed block keeps the executor alive
        ({"0": F, "1": F, "2": F, "3": F}, 3, True),
        ({"0": F, "1": R}, 1, False),
        ({"0": F, "1": P}, 1, False),
        ({"0": F, "1": S}, 1, False),  # scaled in before registering is not a failure
        ({"0": F, "1": "TIMEOUT"}, 1, False),  # walltime reached is not a failure
        ({"0": F}, 0, True),  # threshold below 1 counts as 1
    ],
)
def test_blocks_all_failed(blocks: dict[str, str], threshold: int, bad: bool) -> None:
    assert blocks_all_failed(blocks, threshold) is bad


@pytest.mark.parametrize(
    ("blocks", "window", "bad"),
    [
        # Parsl's own case: ids in numeric order 8, 9, 10, 21, 22.
        ({"8": F, "9": R, "10": F, "21": F, "22": F}, 3, True),
        ({"8": F, "9": F, "10": R, "21": F, "22": F}, 3, False),
        ({"8": F, "9": F, "10": R, "21": F, "22": F}, 2, True),  # functools.partial(..., threshold=2)
        # Fewer blocks than the window: not yet.
        ({"0": F, "1": F}, 3, False),
        ({"0": F, "1": F, "2": F}, 3, True),
        # A success between failures resets the window.
        ({"0": F, "1": C, "2": F, "3": F}, 3, False),
        ({"0": F, "1": C, "2": F, "3": F, "4": F}, 3, True),
        # Pending or running blocks in the window break it; older failures do not matter.
        ({"0": F, "1": F, "2": F, "3": P}, 3, False),
        ({"0": F, "1": F, "2": F, "3": R}, 3, False),
        ({"0": R, "1": F, "2": F, "3": F}, 3, True),  # an older running block is outside the window
        # MISSING counts as failure; SCALED_IN does not.
        ({"0": M, "1": F, "2": M}, 3, True),
        ({"0": F, "1": S, "2": F}, 3, False),
        # Numeric order: '10' comes after '9' (as strings '10' < '9' and the window would be 2, 9).
        ({"2": R, "9": F, "10": F}, 2, True),
        ({"2": F, "9": F, "10": R}, 2, False),
        ({"0": F}, 1, True),
    ],
)
def test_blocks_last_failed(blocks: dict[str, str], window: int, bad: bool) -> None:
    assert blocks_last_failed(blocks, window) is bad


def test_last_blocks_is_numeric_order() -> None:
    assert last_blocks(["10", "9", "2", "100"], 3) == ["9", "10", "100"]
    assert last_blocks(["1"], 3) == ["1"]
    with pytest.raises(ValueError, match="window"):
        last_blocks(["1"], 0)


@given(blocks=st.dictionaries(st.integers(0, 30).map(str), st.sampled_from([F, M, R, P, C, S]), max_size=10),
       window=st.integers(1, 12))
def test_windowed_rule_properties(blocks: dict[str, str], window: int) -> None:
    bad = blocks_last_failed(blocks, window)
    # Whenever every block failed, the windowed rule agrees with the simple rule at the same threshold.
    if all(v in (F, M) for v in blocks.values()):
        assert bad == blocks_all_failed(blocks, window)
    # The simple rule at the same threshold is the stricter one.
    if blocks_all_failed(blocks, window):
        assert bad
    # A new block that has not failed (yet) always clears it.
    newest = str(max((int(b) for b in blocks), default=-1) + 1)
    assert not blocks_last_failed({**blocks, newest: P}, window)


def reg(state: str, since: float | None = 0.0, registered: bool = False) -> BlockRegistration:
    return BlockRegistration(state=state, running_since=since, registered=registered)


@pytest.mark.parametrize(
    ("block", "now", "timed_out"),
    [
        (reg(R, since=0.0), 120.0, True),  # exactly the time-out
        (reg(R, since=0.0), 119.9, False),
        (reg(R, since=10.0), 200.0, True),
        (reg(R, since=0.0, registered=True), 1e6, False),  # a pool registered: not this rule's business
        (reg(R, since=None), 1e6, False),  # not yet seen running
        (reg(P, since=None), 1e6, False),  # waiting in the batch queue does not count
        (reg(P, since=0.0), 1e6, False),
        (reg("HELD", since=0.0), 1e6, False),
        (reg("UNKNOWN", since=0.0), 1e6, False),
        (reg(F, since=0.0), 1e6, False),  # ended blocks are left to the block error handler
        (reg(M, since=0.0), 1e6, False),
        (reg("CANCELLED", since=0.0), 1e6, False),
        (reg(S, since=0.0), 1e6, False),
    ],
)
def test_registration_time_out(block: BlockRegistration, now: float, timed_out: bool) -> None:
    assert blocks_registration_timed_out({"0": block}, 120.0, now) == (["0"] if timed_out else [])


def test_registration_time_out_disabled_and_ordered() -> None:
    blocks = {"10": reg(R), "9": reg(R), "2": reg(R, registered=True), "3": reg(R, since=50.0)}
    assert blocks_registration_timed_out(blocks, None, 1e9) == []
    assert blocks_registration_timed_out(blocks, 60.0, 100.0) == ["9", "10"]
    assert blocks_registration_timed_out(blocks, 50.0, 100.0) == ["3", "9", "10"]
