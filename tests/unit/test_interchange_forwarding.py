"""The interchange runtime's result path: the batches of one loop pass reach the executor in one
``result_batches`` message, and a manager's acknowledgement still waits until the executor's end of the
socketpair holds the bytes (rule 9 of the core)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from htex_ref.errors import ProtocolError
from htex_ref.framing import encode_body
from htex_ref.interchange import BATCHES_PER_MESSAGE, Interchange
from htex_ref.netutil import recv_message, send_message
from htex_ref.protocol import (
    Kind,
    Outcome,
    Registration,
    pack_result_header,
    split_result_batches,
    split_results,
    unpack_ids,
)
from htex_ref.streams import StreamReader
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__


def _batch(task_ids: list[int]) -> bytes:
    parts: list[bytes] = []
    for tid in task_ids:
        parts += [pack_result_header(tid, Outcome.OK, 0.5), b"value-%d" % tid]
    return encode_body(parts)


def test_result_batches_decode_every_batch_in_order() -> None:
    frames = [Kind.RESULT_BATCHES, _batch([1, 2]), _batch([3]), _batch([4, 5, 6])]
    results = split_result_batches(frames)
    assert [r[0] for r in results] == [1, 2, 3, 4, 5, 6]
    assert all(r[1] is Outcome.OK and r[3] == 0.5 for r in results)
    assert [bytes(r[2]) for r in results[:2]] == [b"value-1", b"value-2"]


def test_result_batches_are_all_or_nothing() -> None:
    with pytest.raises(ProtocolError):
        split_result_batches([Kind.RESULT_BATCHES, _batch([1]), b"\x05\x00\x00\x00garbage"])
    with pytest.raises(ProtocolError):
        split_result_batches([Kind.RESULT_BATCHES])


class Harness:
    """One ``Interchange`` driven pass by pass, its executor end, and DEALER sockets as managers."""

    def __init__(self, rcvbuf: int | None = None) -> None:
        self.exec_end, ix_end = socket.socketpair()
        if rcvbuf is not None:
            self.exec_end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            ix_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
        self.ix = Interchange({"executor_fd": ix_end.detach(), "heartbeat_threshold": 120.0,
                               "address": "127.0.0.1", "worker_port_range": (56000, 58000)})
        self.reader = StreamReader(self.exec_end)
        self.ctx = zmq.Context()
        self.managers: list[Any] = []

    def manager(self, uid: str) -> Any:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, uid.encode())
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"tcp://127.0.0.1:{self.ix.worker_port}")
        reg = Registration(protocol_version=PROTOCOL_VERSION, htex_ref_version=__version__,
                           python_version=PYTHON_VERSION, uid=uid, block_id="0", worker_count=4,
                           prefetch_capacity=0, hostname="h", pid=1, cpu_count=4, total_memory=0, os="Linux")
        send_message(s, [Kind.REGISTER, reg.encode()])
        self.managers.append(s)
        return s

    def pass_(self, expect: int, timeout: float = 5.0) -> None:
        """One loop pass over ``expect`` manager messages (waiting for them to arrive)."""
        events: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(events) < expect and time.monotonic() < deadline:
            if self.ix.router.poll(50, zmq.POLLIN):
                self.ix._read_managers(events)
        assert len(events) >= expect, f"{len(events)} of {expect} messages arrived"
        self.ix._execute(self.ix.state.handle(*events, now=time.monotonic()))
        if self.ix._acks:
            self.ix._send_acks()

    def executor_messages(self) -> list[list[Any]]:
        self.exec_end.setblocking(False)
        out: list[list[Any]] = []
        try:
            out = self.reader.read_available()
        except BlockingIOError:
            pass
        return out

    def close(self) -> None:
        for s in self.managers:
            s.close()
        self.ctx.term()
        self.ix.router.close()
        self.ix.exec_sock.close()
        self.ix.contexts.close()
        self.exec_end.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


def _received(sock: Any, kind: bytes, timeout: float = 2.0) -> list[Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sock.poll(50, zmq.POLLIN):
            frames = recv_message(sock)
            if frames[0] == kind:
                return frames
    return None


def _registered(h: Harness, n: int) -> list[Any]:
    socks = [h.manager(f"m{i}") for i in range(n)]
    h.pass_(n)
    for s in socks:
        assert _received(s, Kind.REGISTERED) is not None
    return socks


def _give_tasks(h: Harness, n_managers: int) -> dict[bytes, list[int]]:
    """Queue four tasks per manager and let the interchange hand them out; manager id -> task ids."""
    from htex_ref.core.interchange import QueuedTask, TaskSubmitted
    from htex_ref.protocol import pack_task_header

    events = [TaskSubmitted(QueuedTask(tid, 0.0, (pack_task_header(tid, 0.0), b"f", b"a")))
              for tid in range(1, 4 * n_managers + 1)]
    held: dict[bytes, list[int]] = {}
    for ins in h.ix.state.handle(*events, now=time.monotonic()):
        if type(ins).__name__ == "SendTasks":
            held[ins.manager_id] = [t.task_id for t in ins.tasks]
    return held


def test_the_batches_of_one_pass_reach_the_executor_in_one_message(harness: Harness) -> None:
    h = harness
    socks = _registered(h, 3)
    held = _give_tasks(h, 3)
    h.executor_messages()  # READY is not sent here; whatever came so far
    for s in socks:
        ids = held[s.getsockopt(zmq.IDENTITY)]
        # Two batches from each manager in the same pass.
        send_message(s, [Kind.RESULTS, _batch(ids[:2])])
        send_message(s, [Kind.RESULTS, _batch(ids[2:])])
    h.pass_(6)
    messages = h.executor_messages()
    assert [m[0] for m in messages] == [Kind.RESULT_BATCHES]
    assert len(messages[0]) == 7
    got = sorted(r[0] for r in split_result_batches(messages[0]))
    assert got == sorted(t for ids in held.values() for t in ids)
    # One acknowledgement per manager for the pass, naming both of its batches.
    for s in socks:
        ack = _received(s, Kind.ACK)
        assert ack is not None
        assert sorted(unpack_ids(ack[1])) == sorted(held[s.getsockopt(zmq.IDENTITY)])


def test_a_single_batch_still_goes_as_a_results_message(harness: Harness) -> None:
    h = harness
    (s,) = _registered(h, 1)
    held = _give_tasks(h, 1)
    h.executor_messages()
    send_message(s, [Kind.RESULTS, _batch(held[b"m0"])])
    h.pass_(1)
    messages = h.executor_messages()
    assert [m[0] for m in messages] == [Kind.RESULTS]
    assert sorted(r[0] for r in split_results(messages[0])) == sorted(held[b"m0"])


def test_more_batches_than_one_message_takes_are_split(harness: Harness) -> None:
    h = harness
    # The core hands the runtime a ForwardResults; built here directly to pass the limit.
    from htex_ref.core.interchange import ForwardResults

    n = BATCHES_PER_MESSAGE + 5
    h.ix._execute([ForwardResults([], [_batch([i]) for i in range(n)])])
    h.ix.exec_writer.flush()
    messages: list[list[Any]] = []
    deadline = time.monotonic() + 5
    while sum(len(m) - 1 for m in messages) < n and time.monotonic() < deadline:
        messages += h.executor_messages()
        h.ix.exec_writer.flush()
    assert [len(m) - 1 for m in messages] == [BATCHES_PER_MESSAGE, 5]
    assert [r[0] for m in messages for r in split_result_batches(m)] == list(range(n))


def test_acks_wait_until_the_executor_holds_the_coalesced_message() -> None:
    h = Harness(rcvbuf=4096)
    try:
        socks = _registered(h, 2)
        held = _give_tasks(h, 2)
        h.executor_messages()
        # Fill the socketpair so that this pass's message cannot be written whole.
        h.ix.to_exec([Kind.MONITOR, b"x" * (1 << 20)])
        assert h.ix.exec_writer.pending
        for s in socks:
            ids = held[s.getsockopt(zmq.IDENTITY)]
            send_message(s, [Kind.RESULTS, _batch(ids[:1])])
            send_message(s, [Kind.RESULTS, _batch(ids[1:])])
        h.pass_(4)
        for s in socks:
            assert _received(s, Kind.ACK, timeout=0.3) is None, "acknowledged before the executor had the results"
        # The executor reads; once the writer has handed over everything, the acks go.
        got: list[int] = []
        deadline = time.monotonic() + 10
        while h.ix.exec_writer.pending and time.monotonic() < deadline:
            for m in h.executor_messages():
                if m[0] == Kind.RESULT_BATCHES:
                    got += [r[0] for r in split_result_batches(m)]
            h.ix.exec_writer.flush()
            h.ix._send_acks()
        for m in h.executor_messages():
            if m[0] == Kind.RESULT_BATCHES:
                got += [r[0] for r in split_result_batches(m)]
        assert sorted(got) == sorted(t for ids in held.values() for t in ids)
        for s in socks:
            ack = _received(s, Kind.ACK)
            assert ack is not None
            assert sorted(unpack_ids(ack[1])) == sorted(held[s.getsockopt(zmq.IDENTITY)])
    finally:
        h.close()


def test_registrations_of_one_pass_are_logged_in_one_line_per_block() -> None:
    from htex_ref.core.interchange import InterchangeState, ManagerRegistered
    from htex_ref.core.notes import Note

    state = InterchangeState(heartbeat_threshold=120.0)
    regs = [Registration(protocol_version=PROTOCOL_VERSION, htex_ref_version=__version__,
                         python_version=PYTHON_VERSION, uid=f"u{i}", block_id=str(i % 2), worker_count=4,
                         prefetch_capacity=0, hostname=f"host{i}", pid=1, cpu_count=4, total_memory=0, os="Linux")
            for i in range(6)]
    out = state.handle(*[ManagerRegistered(f"m{i}".encode(), r) for i, r in enumerate(regs)], now=1.0)
    notes = [ins.text for ins in out if isinstance(ins, Note)]
    assert len(notes) == 2
    assert notes[0].startswith("Registered 3 managers of block 0 (4 workers, capacity 4 each): u0 on host0, u2 on")
    assert "u5 on host5" in notes[1]
    # One registration alone reads as before.
    one = Registration(protocol_version=PROTOCOL_VERSION, htex_ref_version=__version__, python_version=PYTHON_VERSION,
                       uid="solo", block_id="7", worker_count=2, prefetch_capacity=1, hostname="h", pid=1,
                       cpu_count=2, total_memory=0, os="Linux")
    out = state.handle(ManagerRegistered(b"solo", one), now=2.0)
    assert [ins.text for ins in out if isinstance(ins, Note)] == [
        "Registered manager solo (block 7, host h, 2 workers, capacity 3)"]

