"""The link's cork (htex_ref.link.InterchangeLink.send): a message that follows another closely is queued
for the link thread, which is woken once per batch, and every message still arrives whole and in order.
Real sockets and a real wake-up pipe; the link's process and thread are not started."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from htex_ref.framing import encode
from htex_ref.link import InterchangeLink
from htex_ref.streams import NonBlockingWriter
from htex_ref.tasks import TaskTable


@pytest.fixture
def link(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[InterchangeLink, socket.socket, list[float]]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    lk = InterchangeLink("cork", "/nonexistent", TaskTable("cork", None), lambda e: None, 120.0, 30.0)
    lk._writer = NonBlockingWriter(ours)
    lk._wake_r, lk._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    clock = [1000.0]
    monkeypatch.setattr("htex_ref.link.time.monotonic", lambda: clock[0])
    try:
        yield lk, theirs, clock
    finally:
        for fd in (lk._wake_r, lk._wake_w):
            os.close(fd)
        ours.close()
        theirs.close()


def _available(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


def _wakes(fd: int) -> int:
    try:
        return len(os.read(fd, 4096))
    except BlockingIOError:
        return 0


def test_a_message_after_a_pause_goes_at_once_and_close_ones_wait_for_one_flush(link) -> None:
    lk, peer, clock = link
    writer = lk._writer
    messages = [[b"task", b"%d" % i] for i in range(5)]
    lk.send(messages[0])  # the first after a long pause: sent now, nothing for the link thread
    assert _available(peer) == encode(messages[0])
    assert not writer.pending and _wakes(lk._wake_r) == 0
    for m in messages[1:4]:
        clock[0] += lk.CORK_S / 4  # a thread submitting as fast as it can
        lk.send(m)
    # Queued, not sent; the link thread woken once for the three.
    assert _available(peer) == b""
    assert writer.pending and _wakes(lk._wake_r) == 1
    writer.flush()  # what the link thread does on that wake-up: one system call for all of them
    assert _available(peer) == b"".join(encode(m) for m in messages[1:4])
    clock[0] += 10 * lk.CORK_S  # a pause again: straight out
    lk.send(messages[4])
    assert _available(peer) == encode(messages[4])
    assert not writer.pending and _wakes(lk._wake_r) == 0
    assert writer.unsent == 0 and writer.written == sum(len(encode(m)) for m in messages)


def test_a_message_while_others_wait_joins_them_in_order(link) -> None:
    lk, peer, clock = link
    writer = lk._writer
    lk.send([b"a"])
    clock[0] += lk.CORK_S / 2
    lk.send([b"b"])
    assert writer.pending and _wakes(lk._wake_r) == 1
    clock[0] += 10 * lk.CORK_S  # long after, but the queue is not empty: it must not overtake "b"
    lk.send([b"c"])
    assert _wakes(lk._wake_r) == 0  # already woken for this batch
    writer.flush()
    assert _available(peer) == encode([b"a"]) + encode([b"b"]) + encode([b"c"])
