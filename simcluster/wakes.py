"""``Wakes``: the simulated executor's own wake-ups (task releases, task completions, interchange timers),
run in exactly the order simpy would run them as timeouts, at a fraction of the cost.

A million-task run wakes the executor a few million times, nearly always with nothing else due in
between; a simpy ``Timeout`` per wake-up (an object, a push and a pop on simpy's queue, a pass through
its loop) was a tenth of the run. Here a wake-up is an entry ``(time, id, callback)`` in a heap of our
own, where ``id`` comes from simpy's own event counter at the moment the timeout would have been made,
and ``(time, NORMAL, id)`` is the key that timeout would have had in simpy's queue. One simpy event, a
proxy with the key of our earliest entry, stands for the heap. When it fires, entries run one after
another, with ``env.now`` set as simpy would set it, for as long as the next one comes before the head
of simpy's queue; then a proxy for the next one goes into simpy's queue. Everything else (processes,
the batch system, other timeouts) is ordered against our entries exactly as against the timeouts they
replace, so a run is the same, event for event and byte for byte.

It relies on three attributes of ``simpy.Environment`` that are not public (``_queue``, ``_eid``,
``_now``), as simpy 4 has them; ``tests/sim`` run every path through here.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import simpy
from simpy.events import NORMAL

_Key = tuple[float, int]


class _Proxy(simpy.Event):
    """The simpy event that stands for the entry with key ``key``; ``dead`` once an earlier entry has
    one of its own (it then does nothing when it fires, unless made live again before)."""

    dead = False
    key: _Key = (0.0, 0)


class Wakes:
    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self._queue = env._queue
        self._eid = env._eid
        self._heap: list[tuple[float, int, Callable[[float], None]]] = []
        #: Proxies in simpy's queue by key (the live one and dead ones not yet popped).
        self._proxies: dict[_Key, _Proxy] = {}
        self._live: _Key | None = None
        self._running = False

    def call_later(self, delay: float, callback: Callable[[float], None]) -> None:
        """Call ``callback(now)`` ``delay`` seconds from now, where ``env.timeout(delay)`` would have."""
        if delay < 0:
            raise ValueError(f"negative delay {delay}")
        env = self.env
        when = env._now + delay
        eid = next(self._eid)
        heapq.heappush(self._heap, (when, eid, callback))
        if not self._running and (self._live is None or (when, eid) < self._live):
            self._make_live((when, eid))

    def _make_live(self, key: _Key) -> None:
        if self._live is not None:
            self._proxies[self._live].dead = True
        self._live = key
        proxy = self._proxies.get(key)
        if proxy is not None:
            proxy.dead = False  # still in simpy's queue from before: the same event stands for it again
            return
        proxy = _Proxy(self.env)
        proxy.key = key
        proxy._ok = True
        proxy._value = None
        proxy.callbacks.append(self._fire)
        self._proxies[key] = proxy
        heapq.heappush(self._queue, (key[0], NORMAL, key[1], proxy))

    def _fire(self, event: simpy.Event) -> None:
        assert isinstance(event, _Proxy)
        env = self.env
        del self._proxies[event.key]
        if event.dead:
            return
        self._live = None
        heap, queue, proxies = self._heap, self._queue, self._proxies
        heappop = heapq.heappop
        self._running = True
        try:
            while heap:
                when, eid, callback = heap[0]
                if queue:
                    head = queue[0]
                    t = head[0]
                    if t < when or (t == when and (head[1] < NORMAL or (head[1] == NORMAL and head[2] < eid))):
                        ev = head[3]
                        if type(ev) is _Proxy and ev.dead:
                            # It would only stop the run here for nothing.
                            heappop(queue)
                            del proxies[ev.key]
                            continue
                        break
                heappop(heap)
                env._now = when
                callback(when)
        finally:
            self._running = False
            if heap:
                self._make_live((heap[0][0], heap[0][1]))
