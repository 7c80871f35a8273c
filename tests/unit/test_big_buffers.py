"""Reuse of the memory maps that big messages land in (htex_ref.streams.BigBuffers), on its own and
through both stream readers over a real socketpair."""

from __future__ import annotations

import select
import socket
import sys
import threading
import time
import weakref

import pytest

from htex_ref.framing import Frame, encode
from htex_ref.streams import BIG_BUFFERS, BigBuffers, BlockingChannel, StreamReader

MIB = 1 << 20


def _map_of(view: memoryview) -> object:
    return view.obj


def _ref(view: memoryview) -> weakref.ref[object]:
    """Which map a view is in, without holding it (a reference would keep it out of reuse)."""
    return weakref.ref(view.obj)


def test_a_released_map_is_reused_and_a_referenced_one_is_not() -> None:
    cache = BigBuffers()
    first = cache.take(3 * MIB)
    assert len(first) == 3 * MIB
    first[:5] = b"hello"
    held = _ref(first)
    # Still referenced (the view is alive): the next message must get other memory.
    second = cache.take(2 * MIB)
    assert _map_of(second) is not held()
    del second
    # A slice of the first view keeps its map too, through the view's buffer.
    tail = first[MIB:]
    del first
    third = cache.take(2 * MIB)
    assert _map_of(third) is not held()
    del tail, third
    # Nothing refers to either map now: the smaller one that fits is taken, a too-small one never.
    fourth = cache.take(2 * MIB)
    assert len(_map_of(fourth)) == 2 * MIB  # type: ignore[arg-type]
    fifth = cache.take(3 * MIB)
    assert _map_of(fifth) is held()
    assert len(fifth) == 3 * MIB
    big = cache.take(4 * MIB)
    assert len(_map_of(big)) == 4 * MIB  # type: ignore[arg-type]


def test_the_cache_keeps_at_most_keep_maps_and_forgets_idle_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = BigBuffers()
    views = [cache.take(MIB) for _ in range(cache.KEEP + 3)]
    assert len(cache) == cache.KEEP
    del views
    clock = [time.monotonic() + 1e6]  # later than every real stamp
    monkeypatch.setattr("htex_ref.streams.time.monotonic", lambda: clock[0])
    cache.take(MIB)  # stamped at the fake time; the older entries are far older
    clock[0] += cache.IDLE_S + 1
    cache.trim(clock[0])
    assert len(cache) == 0


def _send_all(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)


def test_stream_reader_reuses_the_map_of_a_consumed_big_message() -> None:
    a, b = socket.socketpair()
    try:
        b.setblocking(False)
        reader = StreamReader(b)
        size = StreamReader.MAP_AT + 12_345
        maps = []
        for fill in (b"\x01", b"\x02", b"\x03"):
            payload = fill * size
            sender = threading.Thread(target=_send_all, args=(a, encode([b"kind", payload])))
            sender.start()
            messages: list[list[Frame]] = []
            while not messages:
                select.select([b], [], [], 5.0)
                messages = reader.read_available()
            sender.join()
            [frames] = messages
            assert frames[0] == b"kind"
            assert isinstance(frames[1], memoryview)
            assert frames[1] == payload  # byte-identical, whichever map it landed in
            maps.append(_ref(frames[1]))
            del frames, messages
        # Each message was consumed before the next: all three landed in the same map.
        assert maps[0]() is not None
        assert maps[0]() is maps[1]() is maps[2]()
    finally:
        a.close()
        b.close()


def test_blocking_channel_big_message_in_a_reused_map_and_a_held_one_is_kept() -> None:
    a, b = socket.socketpair()
    try:
        chan = BlockingChannel(b)
        size = StreamReader.MAP_AT + 1
        def send() -> None:
            for fill in (b"x", b"y", b"z"):
                a.sendall(encode([b"t", fill * size]))

        sender = threading.Thread(target=send)
        sender.start()
        one = chan.recv()
        assert one is not None and one[1] == b"x" * size
        two = chan.recv()  # ``one`` is still held: other memory
        assert two is not None and two[1] == b"y" * size
        assert one[1] == b"x" * size  # untouched by the second message
        first_map = _ref(one[1])  # type: ignore[arg-type]
        assert two[1].obj is not first_map()  # type: ignore[union-attr]
        del one
        three = chan.recv()
        sender.join()
        assert three is not None and three[1] == b"z" * size
        assert first_map() is not None
        assert three[1].obj is first_map()  # type: ignore[union-attr]
        a.close()
        assert chan.recv() is None
    finally:
        a.close()
        b.close()
        BIG_BUFFERS.trim(float("inf"))


def test_threads_taking_at_once_never_share_a_map() -> None:
    cache = BigBuffers()
    live: dict[int, list[memoryview]] = {0: [], 1: []}
    clashes: list[str] = []
    barrier = threading.Barrier(2)

    def run(me: int) -> None:
        barrier.wait()
        for _ in range(2000):
            view = cache.take(MIB)
            theirs = {id(v.obj) for v in live[1 - me]}
            if id(view.obj) in theirs:
                clashes.append(f"thread {me} got a map thread {1 - me} still holds")
            live[me].append(view)
            if len(live[me]) > 1:  # hold one, release the older: maps keep changing hands
                live[me].pop(0)

    threads = [threading.Thread(target=run, args=(n,)) for n in (0, 1)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can: races show up
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert clashes == []
