"""``Wakes`` runs its wake-ups in exactly the order simpy runs the timeouts they replace: checked against
plain ``env.timeout`` on random mixes of wake-ups, timeouts, processes and events triggered now, with
many ties in time, each scheduling more of them when it runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from simcluster.wakes import Wakes

KINDS = ("wake", "timeout", "process", "event")
# Few distinct delays, so that many things fall due at the same instant.
DELAYS = (0, 0.5, 1, 2)

Plan = list[tuple[str, float, list[Any]]]


class TimeoutWakes:
    """The reference: each wake-up a simpy timeout."""

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env

    def call_later(self, delay: float, callback: Callable[[float], None]) -> None:
        self.env.timeout(delay).callbacks.append(lambda _ev: callback(self.env.now))


def play(make_wakes: Callable[[simpy.Environment], Any], plan: Plan) -> list[tuple[str, float]]:
    env = simpy.Environment()
    wakes = make_wakes(env)
    log: list[tuple[str, float]] = []

    def spawn(label: str, kind: str, delay: float, children: Plan) -> None:
        def run(now: float) -> None:
            assert now == env.now
            log.append((label, now))
            for i, (k, d, c) in enumerate(children):
                spawn(f"{label}.{i}", k, d, c)

        if kind == "wake":
            wakes.call_later(delay, run)
        elif kind == "timeout":
            env.timeout(delay).callbacks.append(lambda _ev: run(env.now))
        elif kind == "process":
            def proc() -> Any:
                yield env.timeout(delay)
                run(env.now)

            env.process(proc())
        else:
            ev = env.event()
            ev.callbacks.append(lambda _ev: run(env.now))
            ev.succeed()

    for i, (kind, delay, children) in enumerate(plan):
        spawn(str(i), kind, delay, children)
    env.run()
    return log


leaf = st.tuples(st.sampled_from(KINDS), st.sampled_from(DELAYS), st.just([]))
node = st.tuples(st.sampled_from(KINDS), st.sampled_from(DELAYS), st.lists(leaf, max_size=3))
root = st.tuples(st.sampled_from(KINDS), st.sampled_from(DELAYS), st.lists(node, max_size=3))


@given(plan=st.lists(root, min_size=1, max_size=8))
@settings(max_examples=400, deadline=None)
def test_wakes_run_in_the_order_of_the_timeouts_they_replace(plan: Plan) -> None:
    assert play(Wakes, plan) == play(TimeoutWakes, plan)


def test_a_chain_of_wakes_between_other_events() -> None:
    # A wake-up chain every 0.25 s, a timeout every second made by a process: at each whole second the
    # one created first goes first, as with timeouts.
    def plan_chain(make_wakes: Callable[[simpy.Environment], Any]) -> list[tuple[str, float]]:
        env = simpy.Environment()
        wakes = make_wakes(env)
        log: list[tuple[str, float]] = []

        def tick(now: float) -> None:
            log.append(("wake", now))
            if now < 5:
                wakes.call_later(0.25, tick)

        def clock() -> Any:
            while env.now < 5:
                yield env.timeout(1)
                log.append(("timeout", env.now))

        wakes.call_later(0, tick)
        env.process(clock())
        env.run()
        return log

    got = plan_chain(Wakes)
    assert got == plan_chain(TimeoutWakes)
    assert len(got) == 21 + 5


def test_a_negative_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="negative delay"):
        Wakes(simpy.Environment()).call_later(-1, lambda now: None)
