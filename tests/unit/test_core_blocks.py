"""The interchange's per-block totals (``InterchangeState.block_loads``), which the executor's strategy and
simcluster read, against the same figures worked out from the manager table by brute force."""

from __future__ import annotations

import random

import pytest

from htex_ref.core.blocks import BlockLoad
from htex_ref.core.interchange import (
    BlockCancelled,
    HoldManager,
    InterchangeState,
    ManagerGoodbye,
    ManagerHeartbeat,
    ManagerRegistered,
    QueuedTask,
    ResultsReceived,
    SendTasks,
    TaskSubmitted,
)
from htex_ref.core.selectors import RandomManagerSelector
from htex_ref.protocol import Outcome, Registration
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__


def reg(uid: str, block: str, workers: int) -> Registration:
    return Registration(PROTOCOL_VERSION, __version__, PYTHON_VERSION, uid, block, workers, 0, f"h-{uid}",
                        1, workers, 1 << 30, "linux")


def brute_force(state: InterchangeState, now: float) -> dict[str, BlockLoad]:
    """What the executor computed from the manager snapshot before the totals existed."""
    by_block: dict[str, list[dict[str, object]]] = {}
    for m in state.managers_snapshot(now):
        by_block.setdefault(str(m["block_id"]), []).append(m)
    out = {}
    for b, mine in by_block.items():
        busy = any(m["tasks"] for m in mine)
        out[b] = BlockLoad(
            managers=len(mine), active=sum(1 for m in mine if m["active"]),
            workers=sum(int(str(m["worker_count"])) for m in mine), tasks=sum(int(str(m["tasks"])) for m in mine),
            idle_for=None if busy else min(float(str(m["idle_duration"])) for m in mine))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_block_loads_match_the_manager_table(seed: int) -> None:
    rng = random.Random(seed)
    state = InterchangeState(heartbeat_threshold=50.0, selector=RandomManagerSelector(seed))
    held: dict[bytes, set[int]] = {}
    now = 0.0
    next_task = 0
    next_manager = 0
    for _ in range(300):
        now += rng.choice([0.0, 0.5, 3.0, 20.0])
        op = rng.random()
        events: list[object] = []
        if op < 0.15:
            mid = f"m{next_manager}".encode()
            next_manager += 1
            events.append(ManagerRegistered(mid, reg(mid.decode(), str(rng.randrange(4)), rng.randint(1, 3))))
        elif op < 0.45:
            for _ in range(rng.randint(1, 6)):
                events.append(TaskSubmitted(QueuedTask(next_task, float(rng.randrange(2)), ())))
                next_task += 1
        elif op < 0.75 and held:
            mid = rng.choice(sorted(held))
            if held[mid]:
                done = rng.sample(sorted(held[mid]), rng.randint(1, len(held[mid])))
                events.append(ResultsReceived(mid, [(t, Outcome.OK, b"", 0.1) for t in done]))
        elif op < 0.82 and held:
            events.append(HoldManager(rng.choice(sorted(held))))
        elif op < 0.88 and held:
            events.append(ManagerGoodbye(rng.choice(sorted(held)), "bye"))
        elif op < 0.92:
            events.append(BlockCancelled(str(rng.randrange(4))))
        else:
            for mid in held:
                events.append(ManagerHeartbeat(mid))
        for ins in state.handle(*events, now=now):  # type: ignore[arg-type]
            if isinstance(ins, SendTasks):
                held.setdefault(ins.manager_id, set()).update(t.task_id for t in ins.tasks)
        held = {mid: {t for t in tasks if t in state.managers[mid].tasks}
                for mid, tasks in held.items() if mid in state.managers}
        for mid in state.managers:
            held.setdefault(mid, set())
        assert state.block_loads(now) == brute_force(state, now)
