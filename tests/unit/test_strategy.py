"""Unit tests for the block-scaling policy (htex_ref.core.strategy.decide); rules in docs/scaling.md."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from htex_ref.core.strategy import (
    STRATEGY_NAMES,
    TERMINAL,
    BlockView,
    Decision,
    ScaleIn,
    ScaleOut,
    Snapshot,
    StrategyMemory,
    decide,
)
from htex_ref.providers.base import JobState

SCALING = ("simple", "htex_auto_scale")
LIVE_STATES = ("PENDING", "RUNNING", "HELD", "UNKNOWN")
TERMINAL_STATES = ("CANCELLED", "COMPLETED", "FAILED", "TIMEOUT", "MISSING", "SCALED_IN")


def snap(**kw: object) -> Snapshot:
    args: dict[str, object] = {
        "now": 0.0, "strategy": "simple", "outstanding": 0, "workers_per_node": 1, "nodes_per_block": 1,
        "parallelism": 1.0, "init_blocks": 0, "min_blocks": 0, "max_blocks": 20, "max_idletime": 0.0, "blocks": (),
    }
    args.update(kw)
    return Snapshot(**args)  # type: ignore[arg-type]


def blk(block_id: str, state: str = "RUNNING", **kw: object) -> BlockView:
    kw.setdefault("submitted_at", 0.0)
    return BlockView(block_id=block_id, state=state, **kw)  # type: ignore[arg-type]


def later(memory: StrategyMemory | None = None) -> StrategyMemory:
    """Memory of an executor whose first pass (init_blocks) is done."""
    return memory if memory is not None else StrategyMemory(first_pass_done=True)


def out_of(decisions: list[Decision]) -> int:
    return sum(d.blocks for d in decisions if isinstance(d, ScaleOut))


def in_of(decisions: list[Decision]) -> tuple[str, ...]:
    return tuple(b for d in decisions if isinstance(d, ScaleIn) for b in d.block_ids)


def pending(n: int, now: float = 0.0) -> tuple[BlockView, ...]:
    return tuple(blk(str(i), "PENDING", submitted_at=now) for i in range(n))


# ------------------------------------------------------------------------- Parsl's oscillation table

# (outstanding tasks, workers_per_node) -> blocks after the first scale-out; init 0, min 0, max 20,
# parallelism 1, one node per block.
OSCILLATION_TABLE = [(14, 48, 1), (1, 1, 1), (100, 1, 20), (47, 48, 1), (48, 48, 1), (49, 48, 2), (149, 50, 3)]


@pytest.mark.parametrize("strategy", SCALING)
@pytest.mark.parametrize(("tasks", "wpn", "blocks"), OSCILLATION_TABLE)
def test_oscillation_table(strategy: str, tasks: int, wpn: int, blocks: int) -> None:
    memory = StrategyMemory()
    cfg = {"strategy": strategy, "workers_per_node": wpn, "max_idletime": 0.0}
    # Pass 1: scale out exactly `blocks`.
    assert decide(snap(now=0, outstanding=tasks, **cfg), memory) == [ScaleOut(blocks)]
    # Pass 2: those blocks are pending, not registered; same tasks. Nothing happens: Parsl's
    # htex_auto_scale cancels the pending block here (ceil rounding), ours does not.
    assert decide(snap(now=5, outstanding=tasks, blocks=pending(blocks), **cfg), memory) == []
    assert decide(snap(now=10, outstanding=tasks, blocks=pending(blocks), **cfg), memory) == []
    # No task any more, max_idletime 0: every block is scaled in.
    decisions = decide(snap(now=15, outstanding=0, blocks=pending(blocks), **cfg), memory)
    assert len(decisions) == 1
    assert sorted(in_of(decisions)) == sorted(str(i) for i in range(blocks))


# ------------------------------------------------------------------------- rule 1 and `none`


def test_none_scales_out_init_blocks_once() -> None:
    memory = StrategyMemory()
    assert decide(snap(strategy="none", init_blocks=3, outstanding=100), memory) == [ScaleOut(3)]
    assert memory.first_pass_done
    for now, blocks in ((5, ()), (10, pending(3)), (15, (blk("0", "COMPLETED"),))):
        assert decide(snap(strategy="none", init_blocks=3, min_blocks=2, outstanding=100, now=now,
                           blocks=blocks), memory) == []
    # Nor does it scale in.
    assert decide(snap(strategy="none", outstanding=0, now=100, blocks=pending(3)), memory) == []


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_first_pass_counts_live_blocks_and_max(strategy: str) -> None:
    assert decide(snap(strategy=strategy, init_blocks=3, blocks=pending(1)), StrategyMemory()) == [ScaleOut(2)]
    assert decide(snap(strategy=strategy, init_blocks=3, max_blocks=2), StrategyMemory()) == [ScaleOut(2)]
    assert decide(snap(strategy=strategy, init_blocks=3, blocks=pending(3), max_idletime=30.0), StrategyMemory()) == []


# ------------------------------------------------------------------------- rule 2: min_blocks


@pytest.mark.parametrize("strategy", SCALING)
def test_min_blocks_restored_when_blocks_end(strategy: str) -> None:
    memory = StrategyMemory()
    cfg = {"strategy": strategy, "init_blocks": 2, "min_blocks": 2, "max_idletime": 0.0}
    assert decide(snap(**cfg), memory) == [ScaleOut(2)]
    assert decide(snap(now=5, blocks=pending(2), **cfg), memory) == []
    ended = (blk("0", "COMPLETED"), blk("1", "TIMEOUT"), blk("2", "RUNNING", registered=True, idle_for=99.0))
    assert decide(snap(now=10, blocks=ended, **cfg), memory) == [ScaleOut(1)]
    assert decide(snap(now=15, blocks=(blk("0", "FAILED"), blk("1", "MISSING")), **cfg), memory) == [ScaleOut(2)]


# ------------------------------------------------------------------------- rule 3: scale out


@pytest.mark.parametrize("strategy", SCALING)
@pytest.mark.parametrize("state", ["HELD", "UNKNOWN", "PENDING", "RUNNING"])
def test_held_and_unknown_count_toward_max_blocks(strategy: str, state: str) -> None:
    blocks = tuple(blk(str(i), state) for i in range(3))
    assert decide(snap(strategy=strategy, outstanding=1000, max_blocks=3, blocks=blocks), later()) == []
    assert decide(snap(strategy=strategy, outstanding=1000, max_blocks=5, blocks=blocks), later()) == [ScaleOut(2)]
    # Their slots count too: 3 blocks x 4 workers cover 12 tasks.
    assert decide(snap(strategy=strategy, outstanding=12, workers_per_node=4, blocks=blocks), later()) == []


@pytest.mark.parametrize("strategy", SCALING)
def test_rounding_up_and_nodes_per_block(strategy: str) -> None:
    def first(**kw: object) -> list[Decision]:
        return decide(snap(strategy=strategy, **kw), StrategyMemory())

    assert first(outstanding=49, workers_per_node=48) == [ScaleOut(2)]
    assert first(outstanding=49, workers_per_node=12, nodes_per_block=2) == [ScaleOut(3)]  # 24 slots a block
    assert first(outstanding=48, workers_per_node=12, nodes_per_block=4) == [ScaleOut(1)]
    # Existing slots are subtracted: 1 block of 48 + 49 tasks -> 1 more.
    assert decide(snap(strategy=strategy, outstanding=49, workers_per_node=48, blocks=pending(1)), later()) == [
        ScaleOut(1)]


@pytest.mark.parametrize("strategy", SCALING)
def test_parallelism_half_halves_demand(strategy: str) -> None:
    assert decide(snap(strategy=strategy, outstanding=100, parallelism=0.5), StrategyMemory()) == [ScaleOut(20)]
    assert decide(snap(strategy=strategy, outstanding=20, parallelism=0.5), StrategyMemory()) == [ScaleOut(10)]
    assert decide(snap(strategy=strategy, outstanding=96, workers_per_node=48, parallelism=0.5),
                  StrategyMemory()) == [ScaleOut(1)]
    assert decide(snap(strategy=strategy, outstanding=97, workers_per_node=48, parallelism=0.5),
                  StrategyMemory()) == [ScaleOut(2)]
    # 10 slots cover 20 tasks at parallelism 0.5.
    assert decide(snap(strategy=strategy, outstanding=20, parallelism=0.5, blocks=pending(10)), later()) == []


@pytest.mark.parametrize("strategy", SCALING)
def test_parallelism_zero_with_tasks_gets_one_block(strategy: str) -> None:
    assert decide(snap(strategy=strategy, outstanding=500, parallelism=0.0), StrategyMemory()) == [ScaleOut(1)]
    assert decide(snap(strategy=strategy, outstanding=500, parallelism=0.0, blocks=pending(1)), later()) == []
    # Only the one: the terminal block below is not a slot.
    assert decide(snap(strategy=strategy, outstanding=1, parallelism=0.0, blocks=(blk("0", "FAILED"),)),
                  later()) == [ScaleOut(1)]
    # At max_blocks 0 there is no room.
    assert decide(snap(strategy=strategy, outstanding=1, parallelism=0.0, max_blocks=0), StrategyMemory()) == []


# ------------------------------------------------------------------------- rules 4 and 5: scale in


def test_simple_never_scales_in_with_tasks_outstanding() -> None:
    blocks = (*(blk(str(i), "RUNNING", registered=True, idle_for=1e6) for i in range(10)),
              blk("h", "RUNNING", registered=True, held=True), blk("p", "PENDING"))
    assert decide(snap(outstanding=1, max_idletime=0.0, blocks=blocks), later()) == []


def test_htex_auto_scale_with_tasks_scales_in_only_idle_registered_taskless_blocks() -> None:
    blocks = (
        blk("busy", registered=True, tasks=4),
        blk("idle100", registered=True, idle_for=100.0),
        blk("idle5", registered=True, idle_for=5.0),  # not idle max_idletime yet
        blk("pend", "PENDING", submitted_at=-1000.0),  # never registered
        blk("held", registered=True, held=True),
        blk("idle60", registered=True, idle_for=60.0),
        blk("gone", "COMPLETED", registered=True, idle_for=1e6),
    )
    cfg = {"strategy": "htex_auto_scale", "outstanding": 10, "workers_per_node": 4, "max_idletime": 30.0,
           "blocks": blocks}
    # slots 6 x 4 = 24, demand 10: floor(14 / 4) = 3 blocks may go.
    assert decide(snap(min_blocks=1, **cfg), later()) == [ScaleIn(("held", "idle100", "idle60"))]
    assert decide(snap(min_blocks=4, **cfg), later()) == [ScaleIn(("held", "idle100"))]
    assert decide(snap(min_blocks=6, **cfg), later()) == []
    # floor rounding: 21 tasks leave 3 free slots, less than a block.
    assert decide(snap(min_blocks=0, **{**cfg, "outstanding": 21}), later()) == []
    assert decide(snap(min_blocks=0, **{**cfg, "strategy": "simple"}), later()) == []
    # A block holding tasks is never chosen, however idle its numbers look.
    busy_only = (blk("a", registered=True, tasks=1, idle_for=1e6), blk("b", registered=True, tasks=1, held=True))
    assert decide(snap(**{**cfg, "outstanding": 1, "blocks": busy_only}), later()) == []


def test_htex_auto_scale_keeps_pending_blocks_unlike_parsl() -> None:
    # Parsl: ceil((48 - 14) / 48) = 1 -> cancels the pending block, resubmits next pass.
    blocks = (blk("0", "PENDING", submitted_at=-1e6),)
    assert decide(snap(strategy="htex_auto_scale", outstanding=14, workers_per_node=48, blocks=blocks), later()) == []
    # Even with far more slots than tasks, a never-registered block is not a candidate while tasks wait.
    blocks = pending(5, now=-1e6)
    assert decide(snap(strategy="htex_auto_scale", outstanding=1, blocks=blocks), later()) == []


@pytest.mark.parametrize("strategy", SCALING)
def test_idle_scale_in_to_min_blocks_after_max_idletime(strategy: str) -> None:
    memory = later()
    blocks = tuple(blk(str(i), registered=True, idle_for=0.0) for i in range(5))
    cfg = {"strategy": strategy, "min_blocks": 2, "max_idletime": 30.0, "blocks": blocks}
    assert decide(snap(now=100, **cfg), memory) == []  # timer starts
    assert memory.no_work_since == 100
    assert decide(snap(now=129, **cfg), memory) == []
    decisions = decide(snap(now=130, **cfg), memory)
    assert len(decisions) == 1 and len(in_of(decisions)) == 3


@pytest.mark.parametrize("strategy", SCALING)
def test_unused_init_blocks_go_max_idletime_after_the_first_pass(strategy: str) -> None:
    memory = StrategyMemory()
    cfg = {"strategy": strategy, "init_blocks": 2, "max_idletime": 30.0}
    assert decide(snap(now=0, **cfg), memory) == [ScaleOut(2)]  # the idle timer starts here too
    assert decide(snap(now=29, blocks=pending(2), **cfg), memory) == []
    assert decide(snap(now=30, blocks=pending(2), **cfg), memory) == [ScaleIn(("0", "1"))]


@pytest.mark.parametrize("strategy", SCALING)
def test_idle_timer_resets_when_work_arrives(strategy: str) -> None:
    memory = later()
    blocks = tuple(blk(str(i), registered=True, idle_for=0.0) for i in range(2))
    cfg = {"strategy": strategy, "max_idletime": 30.0, "workers_per_node": 48, "blocks": blocks}
    assert decide(snap(now=0, **cfg), memory) == []
    assert decide(snap(now=20, outstanding=5, **cfg), memory) == []
    assert memory.no_work_since is None
    assert decide(snap(now=40, **cfg), memory) == []  # timer restarts at 40
    assert decide(snap(now=69, **cfg), memory) == []
    assert set(in_of(decide(snap(now=70, **cfg), memory))) == {"0", "1"}


def test_idle_timer_resets_when_work_arrives_on_a_min_blocks_pass() -> None:
    # Regression (fixed in 154fa6a): a pass that only restored min_blocks left the idle timer running.
    memory = later()
    cfg = {"min_blocks": 2, "max_idletime": 15.0, "workers_per_node": 48}
    idle = tuple(blk(str(i), registered=True, idle_for=0.0) for i in range(2))
    assert decide(snap(now=0, blocks=idle, **cfg), memory) == []  # no work since 0
    # t=10: 5 tasks arrive just as block 1 ends (walltime): rule 2 scales out to min_blocks.
    ended = (idle[0], blk("1", "TIMEOUT"))
    assert decide(snap(now=10, outstanding=5, blocks=ended, **cfg), memory) == [ScaleOut(1)]
    assert memory.no_work_since is None
    # t=20: the tasks are done; the user had also called scale_out(1) at t=10. There has been no task
    # for 0 s, not 15, so nothing may be scaled in yet.
    now_live = (idle[0], blk("1", "TIMEOUT"), blk("2", "PENDING", submitted_at=10.0),
                blk("3", "PENDING", submitted_at=10.0))
    assert decide(snap(now=20, blocks=now_live, **cfg), memory) == []


def test_scale_in_order_held_then_longest_idle_then_oldest_pending() -> None:
    blocks = (
        blk("pend_new", "PENDING", submitted_at=50.0),
        blk("idle10", registered=True, idle_for=10.0),
        blk("busy", registered=True, tasks=3),
        blk("pend_old", "PENDING", submitted_at=5.0),
        blk("held", "HELD", registered=True, held=True),
        blk("idle50", registered=True, idle_for=50.0),
        blk("unknown", "UNKNOWN", submitted_at=20.0),
        blk("done", "COMPLETED", registered=True, held=True),
    )
    expected = ("held", "idle50", "idle10", "pend_old", "unknown", "pend_new")
    for strategy in SCALING:
        assert decide(snap(strategy=strategy, now=100, blocks=blocks), later()) == [ScaleIn(expected)]
        # 7 live, min 4: the three cheapest.
        assert decide(snap(strategy=strategy, now=100, min_blocks=4, blocks=blocks), later()) == [
            ScaleIn(expected[:3])]


@pytest.mark.parametrize("strategy", SCALING)
def test_scale_in_is_never_empty(strategy: str) -> None:
    # More live blocks than min_blocks, but every one holds tasks: no ScaleIn(()).
    blocks = tuple(blk(str(i), registered=True, tasks=1) for i in range(3))
    assert decide(snap(strategy=strategy, now=100, blocks=blocks), later()) == []
    assert decide(snap(strategy=strategy, now=100, outstanding=1, workers_per_node=10, blocks=blocks), later()) == []


@pytest.mark.parametrize("strategy", SCALING)
def test_terminal_blocks_are_ignored(strategy: str) -> None:
    ended = tuple(blk(s, s, registered=True, idle_for=1e6) for s in TERMINAL_STATES)
    assert decide(snap(strategy=strategy, outstanding=3, max_blocks=3, blocks=ended), later()) == [ScaleOut(3)]
    assert decide(snap(strategy=strategy, now=100, blocks=ended), later()) == []
    assert decide(snap(strategy=strategy, init_blocks=2, blocks=ended), StrategyMemory()) == [ScaleOut(2)]


def test_terminal_set_matches_job_states() -> None:
    assert {s.name for s in JobState if s.terminal} == set(TERMINAL) == set(TERMINAL_STATES)
    assert {s.name for s in JobState if not s.terminal} == set(LIVE_STATES)


def test_unknown_strategy_raises() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'fast'"):
        decide(snap(strategy="fast"), StrategyMemory())


# ------------------------------------------------------------------------- properties

block_views = st.builds(
    BlockView,
    block_id=st.just(""),  # numbered below
    state=st.sampled_from(LIVE_STATES + TERMINAL_STATES),
    submitted_at=st.floats(-1000, 0),
    registered=st.booleans(),
    tasks=st.integers(0, 5) | st.just(0),
    idle_for=st.none() | st.floats(0, 1000),
    held=st.booleans(),
)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, object]:
    max_blocks = draw(st.integers(0, 30))
    min_blocks = draw(st.integers(0, max_blocks))
    return {
        "strategy": draw(st.sampled_from(STRATEGY_NAMES)),
        "workers_per_node": draw(st.integers(1, 64)),
        "nodes_per_block": draw(st.integers(1, 4)),
        "parallelism": draw(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0, 1)),
        "max_blocks": max_blocks,
        "min_blocks": min_blocks,
        "init_blocks": draw(st.integers(min_blocks, max_blocks)),
        "max_idletime": draw(st.sampled_from([0.0, 30.0]) | st.floats(0, 600)),
    }


@st.composite
def pass_inputs(draw: st.DrawFn) -> tuple[int, float, tuple[BlockView, ...]]:
    blocks = draw(st.lists(block_views, max_size=35))
    blocks = [replace(b, block_id=f"b{i}") for i, b in enumerate(blocks)]
    outstanding = draw(st.integers(0, 3) | st.integers(0, 3000))
    return outstanding, draw(st.floats(0, 200)), tuple(blocks)


def check_pass(s: Snapshot, decisions: list[Decision]) -> None:
    live = [b for b in s.blocks if b.state not in TERMINAL]
    by_id = {b.block_id: b for b in s.blocks}
    scale_out = out_of(decisions)
    scaled_in = in_of(decisions)
    assert all(not (isinstance(d, ScaleIn) and not d.block_ids) for d in decisions)
    assert all(not (isinstance(d, ScaleOut) and d.blocks <= 0) for d in decisions)
    assert not (scale_out and scaled_in)
    assert len(set(scaled_in)) == len(scaled_in)
    if len(live) >= s.max_blocks:
        assert scale_out == 0
    else:
        assert len(live) + scale_out <= s.max_blocks
    for block_id in scaled_in:
        b = by_id[block_id]
        assert b.tasks == 0 and b.state not in TERMINAL
        if s.outstanding > 0:
            assert b.registered
    if s.outstanding > 0:
        assert not scaled_in or len(live) - len(scaled_in) >= s.min_blocks
    if s.strategy == "none":
        assert not scaled_in
    if s.strategy == "simple" and s.outstanding > 0:
        assert not scaled_in


@settings(max_examples=150)
@given(cfg=configs(), passes=st.lists(pass_inputs(), min_size=1, max_size=6))
def test_properties_over_random_passes(cfg: dict[str, object], passes: list[tuple[int, float, tuple[BlockView, ...]]]
                                       ) -> None:
    memory = StrategyMemory()
    now = 0.0
    for i, (outstanding, step, blocks) in enumerate(passes):
        now += step
        s = snap(now=now, outstanding=outstanding, blocks=blocks, **cfg)
        decisions = decide(s, memory)
        check_pass(s, decisions)
        assert memory.first_pass_done
        if cfg["strategy"] == "none" and i > 0:
            assert decisions == []


def steady_workload(cfg: dict[str, object], outstanding: int, passes: int = 10, period: float = 5.0
                    ) -> list[list[Decision]]:
    """Drive decide() as the executor would under a constant workload: blocks scaled out appear RUNNING and
    registered with idle_for 0; the tasks are spread over live blocks in order (each full before the next), a
    block with no task idles from then on."""
    memory = StrategyMemory()
    per_block = int(cfg["workers_per_node"]) * int(cfg["nodes_per_block"])  # type: ignore[call-overload]
    blocks: list[BlockView] = []
    history = []
    for i in range(passes):
        now = i * period
        s = snap(now=now, outstanding=outstanding, blocks=tuple(blocks), **cfg)
        decisions = decide(s, memory)
        check_pass(s, decisions)
        history.append(decisions)
        gone = set(in_of(decisions))
        blocks = [replace(b, state="SCALED_IN") if b.block_id in gone else b for b in blocks]
        blocks += [blk(f"b{len(blocks) + k}", "RUNNING", submitted_at=now, registered=True, idle_for=0.0)
                   for k in range(out_of(decisions))]
        left = outstanding
        spread = []
        for b in blocks:
            if b.state in TERMINAL:
                spread.append(b)
                continue
            take = min(left, per_block)
            left -= take
            idle = None if take else (0.0 if b.tasks or b.idle_for is None else b.idle_for + period)
            if b.submitted_at == now:
                idle = None if take else 0.0
            spread.append(replace(b, tasks=take, idle_for=idle))
        blocks = spread
    return history


@settings(max_examples=200)
@given(cfg=configs(), outstanding=st.integers(0, 3) | st.integers(0, 2000))
def test_steady_workload_does_not_oscillate(cfg: dict[str, object], outstanding: int) -> None:
    # 100 s a pass: every idle timer (max_idletime <= 600 s) runs out within the 10 passes.
    history = steady_workload(cfg, outstanding, period=100.0)
    demand_driven: set[str] = set()
    n = 0
    scaled_in_yet = False
    for i, decisions in enumerate(history):
        new = [f"b{n + k}" for k in range(out_of(decisions))]
        n += len(new)
        if i > 0:  # the first pass is init_blocks (or demand), later ones only demand or min_blocks
            demand_driven.update(new)
        # Nothing a later pass scaled out for this same workload is ever scaled in again...
        assert not demand_driven & set(in_of(decisions))
        # ...and once blocks were scaled in, none is scaled out again.
        assert not (scaled_in_yet and new)
        scaled_in_yet = scaled_in_yet or bool(in_of(decisions))
    # The last passes are a fixed point.
    assert history[-1] == [] and history[-2] == []


@pytest.mark.parametrize("strategy", SCALING)
@pytest.mark.parametrize(("tasks", "wpn", "blocks"), OSCILLATION_TABLE)
def test_steady_table_workloads_scale_out_once(strategy: str, tasks: int, wpn: int, blocks: int) -> None:
    cfg = {"strategy": strategy, "workers_per_node": wpn, "nodes_per_block": 1, "parallelism": 1.0,
           "init_blocks": 0, "min_blocks": 0, "max_blocks": 20, "max_idletime": 0.0}
    history = steady_workload(cfg, tasks)
    assert history[0] == [ScaleOut(blocks)]
    assert all(d == [] for d in history[1:])
    assert blocks == min(20, math.ceil(tasks / wpn))


def test_min_blocks_and_demand_are_met_in_one_pass() -> None:
    memory = StrategyMemory(first_pass_done=True)
    s = Snapshot(now=0.0, strategy="simple", outstanding=100, workers_per_node=1, nodes_per_block=1,
                 parallelism=1.0, init_blocks=0, min_blocks=1, max_blocks=20, max_idletime=60.0)
    assert decide(s, memory) == [ScaleOut(20)]
    idle = Snapshot(now=0.0, strategy="simple", outstanding=0, workers_per_node=1, nodes_per_block=1,
                    parallelism=1.0, init_blocks=0, min_blocks=2, max_blocks=20, max_idletime=60.0)
    assert decide(idle, StrategyMemory(first_pass_done=True)) == [ScaleOut(2)]


def test_slots_count_the_workers_managers_actually_run() -> None:
    # Estimated 48 workers per block, but the registered block's node runs only 8: 20 tasks need more.
    small = BlockView("0", "RUNNING", submitted_at=0.0, registered=True, idle_for=None, tasks=8, workers=8)
    s = Snapshot(now=10.0, strategy="simple", outstanding=20, workers_per_node=48, nodes_per_block=1,
                 parallelism=1.0, init_blocks=1, min_blocks=0, max_blocks=5, max_idletime=60.0, blocks=(small,))
    assert decide(s, StrategyMemory(first_pass_done=True)) == [ScaleOut(1)]
    # The estimate alone would have been enough capacity.
    estimated = BlockView("0", "RUNNING", submitted_at=0.0, registered=True, tasks=8)
    s2 = Snapshot(now=10.0, strategy="simple", outstanding=20, workers_per_node=48, nodes_per_block=1,
                  parallelism=1.0, init_blocks=1, min_blocks=0, max_blocks=5, max_idletime=60.0, blocks=(estimated,))
    assert decide(s2, StrategyMemory(first_pass_done=True)) == []
