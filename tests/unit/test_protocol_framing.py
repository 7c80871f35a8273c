"""Unit tests for the wire formats (htex_ref.protocol) and stream framing (htex_ref.framing)."""

from __future__ import annotations

import json
import math
import socket
import struct
from dataclasses import asdict, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from htex_ref.errors import ProtocolError
from htex_ref.framing import (
    CHUNK,
    MAX_MESSAGE,
    Chunked,
    decode_body,
    encode,
    encode_body,
    encode_joined,
    encode_parts,
    encode_table,
)
from htex_ref.protocol import (
    BIG_FRAME,
    Kind,
    Outcome,
    Registration,
    join_results,
    join_tasks,
    load_json_object,
    pack_request_id,
    pack_result_header,
    pack_task_header,
    split_results,
    split_tasks,
    unpack_request_id,
    unpack_result_header,
    unpack_task_header,
)
from htex_ref.streams import NonBlockingWriter, StreamReader
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__

INT64 = st.integers(-(2**63), 2**63 - 1)
PRIORITY = st.floats(allow_nan=False)
RUN_TIME = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
OUTCOMES = st.sampled_from(list(Outcome))
SMALL_BYTES = st.binary(max_size=40)


def make_reg(**kw: object) -> Registration:
    base = Registration(
        protocol_version=PROTOCOL_VERSION,
        htex_ref_version=__version__,
        python_version=PYTHON_VERSION,
        uid="abc123",
        block_id="4",
        worker_count=8,
        prefetch_capacity=2,
        hostname="node7",
        pid=999,
        cpu_count=16,
        total_memory=64 << 30,
        os="Linux",
        drain_in=None,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def reg_json(**overrides: object) -> bytes:
    body = asdict(make_reg())
    for k, v in overrides.items():
        if v is _DELETE:
            del body[k]
        else:
            body[k] = v
    return json.dumps(body).encode()


_DELETE = object()


def raises_protocol_error_or_returns(fn, *args):
    """Call ``fn``; a ProtocolError is fine, any other exception fails the test (by propagating)."""
    try:
        return fn(*args)
    except ProtocolError:
        return None


# ------------------------------------------------------------------------------------ headers


@given(task_id=INT64, priority=PRIORITY)
def test_task_header_round_trip(task_id, priority):
    frame = pack_task_header(task_id, priority)
    assert unpack_task_header(frame) == (task_id, priority)


@given(task_id=INT64, outcome=OUTCOMES, run_time=RUN_TIME)
def test_result_header_round_trip(task_id, outcome, run_time):
    tid, out, rt = unpack_result_header(pack_result_header(task_id, outcome, run_time))
    assert (tid, out, rt) == (task_id, outcome, run_time)
    assert type(out) is Outcome


@given(rid=st.integers(0, 2**64 - 1))
def test_request_id_round_trip(rid):
    assert unpack_request_id(pack_request_id(rid)) == rid


def test_nan_priority_rejected():
    with pytest.raises(ProtocolError, match="NaN"):
        unpack_task_header(struct.pack("<qd", 1, math.nan))


def test_infinite_priority_accepted():
    assert unpack_task_header(pack_task_header(3, math.inf)) == (3, math.inf)


@pytest.mark.parametrize("cut", [0, 1, 8, 15])
def test_truncated_task_header(cut):
    with pytest.raises(ProtocolError):
        unpack_task_header(pack_task_header(1, 2.0)[:cut])


@pytest.mark.parametrize("cut", [0, 8, 16])
def test_truncated_result_header(cut):
    with pytest.raises(ProtocolError):
        unpack_result_header(pack_result_header(1, Outcome.OK, 1.0)[:cut])


def test_overlong_headers_rejected():
    with pytest.raises(ProtocolError):
        unpack_task_header(pack_task_header(1, 2.0) + b"\0")
    with pytest.raises(ProtocolError):
        unpack_result_header(pack_result_header(1, Outcome.OK) + b"\0")
    with pytest.raises(ProtocolError):
        unpack_request_id(b"\0" * 9)


@pytest.mark.parametrize("code", [len(Outcome), 9, 255])
def test_unknown_outcome_rejected(code):
    with pytest.raises(ProtocolError):
        unpack_result_header(struct.pack("<qBd", 1, code, 0.0))


# ---------------------------------------------------------------------------------- batches

RESULTS = st.lists(st.tuples(INT64, OUTCOMES, SMALL_BYTES, RUN_TIME), min_size=1, max_size=8)
TASKS = st.lists(st.tuples(INT64, PRIORITY, SMALL_BYTES, SMALL_BYTES), min_size=1, max_size=8)


@given(results=RESULTS)
def test_results_round_trip(results):
    frames = join_results(results)
    assert frames[0] == Kind.RESULTS
    assert len(frames) == 2
    assert split_results(frames) == results
    # The interchange reads them behind a ROUTER identity frame.
    assert split_results([b"manager-id", *frames], start=2) == results


@given(tasks=TASKS)
def test_tasks_round_trip(tasks):
    triples = [(pack_task_header(tid, prio), fn, args) for tid, prio, fn, args in tasks]
    frames = join_tasks(triples)
    assert frames[0] == Kind.TASKS
    decoded = split_tasks(frames)
    assert [tid for tid, _, _ in decoded] == [t[0] for t in tasks]
    assert [prio for _, prio, _ in decoded] == [t[1] for t in tasks]
    assert [fr for _, _, fr in decoded] == triples


def test_results_wrong_frame_counts():
    frames = join_results([(1, Outcome.OK, b"x", 0.0)])
    with pytest.raises(ProtocolError):
        split_results(frames[:1])
    with pytest.raises(ProtocolError):
        split_results([*frames, b"extra"])
    with pytest.raises(ProtocolError):
        split_results(frames, start=2)


def test_results_body_must_hold_pairs():
    with pytest.raises(ProtocolError):
        split_results([Kind.RESULTS, encode_body([])])
    with pytest.raises(ProtocolError):
        split_results([Kind.RESULTS, encode_body([pack_result_header(1, Outcome.OK)])])
    with pytest.raises(ProtocolError):
        split_results([Kind.RESULTS, encode_body([b"short", b"payload"])])


def test_tasks_wrong_frame_counts_and_bodies():
    good = join_tasks([(pack_task_header(1, 0.0), b"f", b"a")])
    with pytest.raises(ProtocolError):
        split_tasks(good[:1])
    with pytest.raises(ProtocolError):
        split_tasks([*good, b""])
    with pytest.raises(ProtocolError):
        split_tasks([Kind.TASKS, encode_body([])])
    with pytest.raises(ProtocolError):
        split_tasks([Kind.TASKS, encode_body([pack_task_header(1, 0.0), b"f"])])
    with pytest.raises(ProtocolError):
        split_tasks([Kind.TASKS, encode_body([struct.pack("<qd", 1, math.nan), b"f", b"a"])])
    with pytest.raises(ProtocolError):
        split_tasks([Kind.TASKS, b"\x01\x00"])


# ------------------------------------------------------------------------------- registration

REGISTRATIONS = st.builds(
    Registration,
    protocol_version=st.integers(0, 2**40),
    htex_ref_version=st.text(max_size=10),
    python_version=st.text(max_size=10),
    uid=st.text(max_size=16),
    block_id=st.one_of(st.none(), st.text(max_size=6)),
    worker_count=st.integers(0, 10**6),
    prefetch_capacity=st.integers(0, 10**6),
    hostname=st.text(max_size=20),
    pid=st.integers(0, 2**31),
    cpu_count=st.integers(0, 1024),
    total_memory=st.integers(0, 2**50),
    os=st.text(max_size=10),
    drain_in=st.one_of(st.none(), st.integers(0, 10**6), st.floats(0, 1e9)),
)


@given(reg=REGISTRATIONS)
def test_registration_round_trip(reg):
    assert Registration.decode(reg.encode()) == reg


def test_registration_capacity():
    assert make_reg(worker_count=3, prefetch_capacity=4).capacity == 7


def test_registration_ignores_unknown_fields_and_accepts_missing_optionals():
    body = asdict(make_reg())
    del body["drain_in"]
    del body["block_id"]
    body["future_field"] = [1, 2]
    reg = Registration.decode(json.dumps(body).encode())
    assert reg.block_id is None and reg.drain_in is None
    assert reg.uid == "abc123"


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe\xfa",
        b"[1, 2]",
        b'"a string"',
        b"42",
        b"null",
    ],
)
def test_registration_bad_json(frame):
    with pytest.raises(ProtocolError):
        Registration.decode(frame)


@pytest.mark.parametrize(
    "overrides",
    [
        {"worker_count": True},  # bool where an int belongs
        {"prefetch_capacity": False},
        {"protocol_version": True},
        {"pid": "123"},
        {"worker_count": 2.0},  # float where an int belongs
        {"cpu_count": None},  # None for a required field
        {"uid": 5},
        {"hostname": ["n"]},
        {"block_id": 4},
        {"drain_in": "10"},
        {"drain_in": True},
        {"worker_count": -1},
        {"prefetch_capacity": -3},
        {"uid": _DELETE},
        {"worker_count": _DELETE},
        {"os": _DELETE},
    ],
)
def test_registration_wrong_fields(overrides):
    with pytest.raises(ProtocolError):
        Registration.decode(reg_json(**overrides))


def test_load_json_object():
    assert load_json_object(b'{"a": 1}') == {"a": 1}
    for bad in (b"[]", b"1", b"{", b"\x80"):
        with pytest.raises(ProtocolError):
            load_json_object(bad)


@pytest.mark.parametrize("frame", [b"[" * 100_000, b'{"a":' * 100_000])
def test_deeply_nested_json_is_a_protocol_error(frame):
    with pytest.raises(ProtocolError):
        Registration.decode(frame)


# ----------------------------------------------------------------------------------- fuzzing

FRAME_LISTS = st.lists(st.binary(max_size=64), max_size=5)


def _mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """Near-valid frames: truncated, extended, or with one byte changed."""
    n = len(valid)
    return st.one_of(
        st.integers(0, n).map(lambda i: valid[:i]),
        st.binary(max_size=16).map(lambda tail: valid + tail),
        st.tuples(st.integers(0, max(0, n - 1)), st.integers(0, 255)).map(
            lambda p: valid[: p[0]] + bytes([p[1]]) + valid[p[0] + 1 :] if n else valid
        ),
    )


@given(data=st.binary(max_size=64))
def test_fuzz_header_decoders(data):
    for fn in (unpack_task_header, unpack_result_header, unpack_request_id, decode_body, load_json_object):
        raises_protocol_error_or_returns(fn, data)
    reg = raises_protocol_error_or_returns(Registration.decode, data)
    assert reg is None or isinstance(reg, Registration)


@given(frames=FRAME_LISTS, start=st.integers(1, 3))
def test_fuzz_random_frame_lists(frames, start):
    res = raises_protocol_error_or_returns(split_results, frames, start)
    if res is not None:
        assert all(type(r[1]) is Outcome for r in res)
    raises_protocol_error_or_returns(split_tasks, frames)


@given(data=st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutated_batches(data):
    results = data.draw(RESULTS)
    body = join_results(results)[1]
    res = raises_protocol_error_or_returns(split_results, [Kind.RESULTS, data.draw(_mutations(body))])
    assert res is None or isinstance(res, list)
    tasks = data.draw(TASKS)
    tbody = join_tasks([(pack_task_header(t, p), f, a) for t, p, f, a in tasks])[1]
    got = raises_protocol_error_or_returns(split_tasks, [Kind.TASKS, data.draw(_mutations(tbody))])
    assert got is None or isinstance(got, list)


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=8),
    ),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=5), kids, max_size=3)),
    max_leaves=6,
)


@given(
    overrides=st.dictionaries(
        st.sampled_from([f for f in asdict(make_reg())]), JSON_VALUES | st.just(_DELETE), max_size=4
    )
)
def test_fuzz_registration_fields(overrides):
    frame = reg_json(**overrides)
    reg = raises_protocol_error_or_returns(Registration.decode, frame)
    if reg is not None:
        assert isinstance(reg.worker_count, int) and not isinstance(reg.worker_count, bool)
        assert reg.worker_count >= 0 and reg.prefetch_capacity >= 0
        assert isinstance(reg.uid, str)
        assert reg.block_id is None or isinstance(reg.block_id, str)


@given(data=st.data())
def test_fuzz_mutated_registration(data):
    frame = data.draw(_mutations(make_reg().encode()))
    raises_protocol_error_or_returns(Registration.decode, frame)


# ------------------------------------------------------------------------------------ framing


@given(frames=st.lists(st.binary(max_size=100), max_size=10))
def test_body_round_trip(frames):
    body = encode_body(frames)
    assert decode_body(body) == frames
    assert decode_body(memoryview(bytearray(body))) == frames
    assert decode_body(encode_body(tuple(frames))) == frames


@given(frames=st.lists(st.binary(max_size=50), max_size=6))
def test_encode_prefixes_body_length(frames):
    wire = encode(frames)
    assert wire == b"".join(encode_parts(frames))
    (n,) = struct.unpack_from("<Q", wire, 0)
    assert n == len(wire) - 8
    assert decode_body(wire[8:]) == frames


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x01\x00",
        struct.pack("<I", 1),  # one frame but no length
        struct.pack("<IQ", 1, 5) + b"abc",  # frame shorter than announced
        struct.pack("<IQ", 1, 2) + b"abc",  # trailing byte
        struct.pack("<I", 1 << 20),  # frame count over the limit
        struct.pack("<I", 0) + b"x",
    ],
)
def test_decode_body_malformed(body):
    with pytest.raises(ProtocolError):
        decode_body(body)


@given(data=st.binary(max_size=200))
def test_fuzz_decode_body(data):
    frames = raises_protocol_error_or_returns(decode_body, data)
    if frames is not None:
        assert encode_body(frames) == data


# ---------------------------------------------------------------------------- stream sockets


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.mark.timeout(30)
@given(
    messages=st.lists(st.lists(st.binary(max_size=300), max_size=5), min_size=1, max_size=6),
    data=st.data(),
)
@settings(deadline=None, max_examples=60)
def test_stream_reader_reassembles_split_messages(messages, data):
    wire = b"".join(encode(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12), label="cuts"))
    a, b = socket.socketpair()
    try:
        reader = StreamReader(b)
        got: list[list[bytes]] = []
        prev = 0
        for cut in [*cuts, len(wire)]:
            chunk = wire[prev:cut]
            prev = cut
            if chunk:
                a.sendall(chunk)
            got.extend(reader.read_available())
            assert not reader.closed
        assert got == messages
        assert reader.read_available() == []
        a.close()
        assert reader.read_available() == []
        assert reader.closed
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(30)
def test_stream_reader_byte_at_a_time(pair):
    a, b = pair
    messages = [[b"task", b"\x00" * 16, b"fn"], [], [b""], [b"x" * 1000]]
    wire = b"".join(encode(m) for m in messages)
    reader = StreamReader(b)
    got = []
    for i in range(len(wire)):
        a.sendall(wire[i : i + 1])
        got.extend(reader.read_available())
        if i < len(wire) - 1:
            assert len(got) < len(messages)
    assert got == messages


@pytest.mark.timeout(30)
def test_stream_reader_rejects_oversized_and_corrupt_messages(pair):
    a, b = pair
    a.sendall(struct.pack("<Q", MAX_MESSAGE + 1))
    with pytest.raises(ProtocolError):
        StreamReader(b).read_available()
    c, d = socket.socketpair()
    try:
        body = b"\x05\x00\x00\x00"  # claims 5 frames, has no lengths
        c.sendall(struct.pack("<Q", len(body)) + body)
        with pytest.raises(ProtocolError):
            StreamReader(d).read_available()
    finally:
        c.close()
        d.close()


def _drain_into(sock: socket.socket, sink: bytearray) -> None:
    while True:
        try:
            chunk = sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        if not chunk:
            return
        sink += chunk


def _flush_all(writer: NonBlockingWriter, sock: socket.socket, received: bytearray) -> None:
    """Read everything ``writer`` sends, flushing it whenever there is room, as its owner would."""
    for _ in range(100_000):
        _drain_into(sock, received)
        if not writer.pending:
            break
        writer.flush()
    _drain_into(sock, received)


@pytest.mark.timeout(30)
def test_non_blocking_writer_never_blocks_and_delivers_in_order(pair):
    a, b = pair  # both blocking sockets: a send without MSG_DONTWAIT would hang here
    writer = NonBlockingWriter(a)
    expected = bytearray()
    # Fill the kernel buffer: the peer reads nothing.
    for chunk_no in range(100_000):
        data = bytes([chunk_no % 251]) * 65_536
        writer.write(data)
        expected += data
        if writer.pending:
            break
    assert writer.pending, "the socket buffer never filled"
    # More writes while full just queue, in both forms.
    for i in range(20):
        data = bytes([i]) * 10_000
        writer.write(data)
        expected += data
        parts = [b"part-%d-" % i, b"", bytes([200 + i % 50]) * 5_000]
        writer.write_parts(parts)
        expected += b"".join(parts)
        assert writer.pending
    # Now the peer drains; the owner flushes whenever there is room.
    received = bytearray()
    _flush_all(writer, b, received)
    assert not writer.pending
    assert len(received) == len(expected)
    assert received == expected
    assert writer.broken is None


@pytest.mark.timeout(30)
@pytest.mark.parametrize("count", [1023, 1024, 1025, 5000])
def test_non_blocking_writer_takes_messages_of_more_buffers_than_one_sendmsg_may(pair, count):
    # The kernel refuses a sendmsg of over IOV_MAX (1,024) buffers with EMSGSIZE: a message of many
    # frames (a big batch of results) must still go out whole, in order, with the channel unbroken.
    a, b = pair
    writer = NonBlockingWriter(a)
    parts = [bytes([i % 251]) * (1 + i % 7) for i in range(count)]
    writer.write_parts(parts)
    assert writer.broken is None
    expected = b"".join(parts)
    received = bytearray()
    _flush_all(writer, b, received)
    assert bytes(received) == expected
    assert writer.written == len(expected) and writer.unsent == 0


@pytest.mark.timeout(30)
def test_non_blocking_writer_with_stream_reader_large_messages(pair):
    a, b = pair
    writer = NonBlockingWriter(a)
    reader = StreamReader(b)
    messages = [[b"results", bytes(range(256)) * 12_000], [b"small"], [b"x" * 3_000_000, b"y"]]
    for m in messages:
        writer.write_parts(encode_parts(m))
    got: list[list[bytes]] = []
    for _ in range(100_000):
        got.extend(reader.read_available())
        if len(got) == len(messages):
            break
        writer.flush()
    assert got == messages
    assert not writer.pending


@pytest.mark.timeout(30)
def test_non_blocking_writer_reports_broken_peer(pair):
    a, b = pair
    b.close()
    writer = NonBlockingWriter(a)
    with pytest.raises(OSError):
        writer.write(b"hello")
    assert writer.broken is not None
    with pytest.raises(OSError):
        writer.write(b"again")
    with pytest.raises(OSError):
        writer.write_parts([b"x"])


# ------------------------------------------------------------------------ the executor's control vocabulary


def test_queries_and_notices_round_trip_through_their_decoders():
    from htex_ref.protocol import (
        Notice,
        Query,
        decode_command,
        decode_notice,
        encode_command,
        encode_notice,
    )

    for query in Query:
        args = ("m1",) if query is Query.HOLD_MANAGER else ()
        frames = encode_command(7, query, *args)
        assert frames[0] == Kind.CMD
        command = decode_command(frames)
        assert (command.request_id, command.query, command.args) == (7, query, args)
    notice = decode_notice(encode_notice(Notice.BLOCK_ENDED, "3", "ended (FAILED)"))
    assert (notice.notice, notice.args) == (Notice.BLOCK_ENDED, ("3", "ended (FAILED)"))
    assert decode_notice(encode_notice(Notice.HOLD_BLOCK, "3")).args == ("3",)


@pytest.mark.parametrize(("body", "match"), [
    (b'{"op": "reboot", "args": []}', "unknown query 'reboot'"),
    (b'{"op": "hold_manager", "args": []}', r"hold_manager: arguments must be \['str'\]"),
    (b'{"op": "hold_manager", "args": [3]}', "arguments must be"),
    (b'{"op": "managers", "args": ["x"]}', "arguments must be"),
    (b'{"op": "hold_manager", "args": [true]}', "arguments must be"),
    (b'{"op": "hold_manager", "args": ["' + b"x" * 2000 + b'"]}', "longer than 1000"),
])
def test_a_bad_query_is_refused_with_its_request_id(body, match):
    from htex_ref.protocol import BadCommand, decode_command

    with pytest.raises(BadCommand, match=match) as info:
        decode_command([Kind.CMD, pack_request_id(42), body])
    assert info.value.request_id == 42


@pytest.mark.parametrize("frames", [
    [Kind.NOTICE, b'{"op": "block_ended", "args": ["3"]}'],
    [Kind.NOTICE, b'{"op": "managers", "args": []}'],
    [Kind.NOTICE, b"not json"],
    [Kind.NOTICE],
    [Kind.CMD, b"\x01", b'{"op": "ping", "args": []}'],
])
def test_a_bad_notice_or_command_layout_is_a_protocol_error(frames):
    from htex_ref.protocol import decode_command, decode_notice

    with pytest.raises(ProtocolError):
        (decode_notice if frames[0] == Kind.NOTICE else decode_command)(frames)


# ------------------------------------------------------------------ split batches (large payloads)

_SIZES = st.one_of(st.integers(0, 300), st.sampled_from([BIG_FRAME - 1, BIG_FRAME, CHUNK - 1, CHUNK, CHUNK + 1,
                                                            2 * CHUNK + 17]))


def _blob(seed: int, size: int) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


def _as_received(parts: list[Any]) -> list[Any]:
    """What a receiver holds: each part as a view of its own buffer (as ZeroMQ's ``copy=False`` gives)."""
    return [memoryview(bytes(p)) for p in parts]


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(_SIZES, min_size=1, max_size=4), seed=st.integers(0, 1000))
def test_results_of_any_size_round_trip_byte_identical(sizes: list[int], seed: int) -> None:
    results = [(i, Outcome.OK, _blob(seed + i, n), float(i)) for i, n in enumerate(sizes)]
    msg = join_results(results)
    big = max(sizes) >= BIG_FRAME
    assert msg[0] == (Kind.RESULTS_SPLIT if big else Kind.RESULTS)
    if big:
        # No part is larger than CHUNK: a large payload travels in pieces, never joined on the way.
        assert all(len(p) <= CHUNK for p in msg[1:])
    got = split_results([b"manager", *_as_received(msg)], start=2)
    assert [(t, o, r) for t, o, _, r in got] == [(t, o, r) for t, o, _, r in results]
    for (_, _, payload, _), (_, _, want, _) in zip(got, results, strict=True):
        assert (payload.tobytes() if isinstance(payload, Chunked) else bytes(payload)) == want
    # Forwarded to the executor as one batch frame without joining: the executor's decoder reads it.
    wire = b"".join(bytes(p) for p in encode_joined(Kind.RESULTS, _as_received(msg[1:]))) if big else None
    if wire is not None:
        frames = decode_body(wire[8:])
        again = split_results(frames)
        assert [bytes(p) for _, _, p, _ in again] == [r[2] for r in results]


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.tuples(_SIZES, _SIZES), min_size=1, max_size=3), seed=st.integers(0, 1000))
def test_tasks_of_any_size_round_trip_and_reach_the_worker_byte_identical(sizes: list[tuple[int, int]],
                                                                          seed: int) -> None:
    triples = [(pack_task_header(i, 0.0), _blob(seed + i, f), _blob(seed - i, a)) for i, (f, a) in enumerate(sizes)]
    msg = join_tasks(triples)
    got = split_tasks(_as_received(msg))
    for (tid, _, frames), want in zip(got, triples, strict=True):
        assert tid == unpack_task_header(want[0])[0]
        # The pool writes them to its worker as one message (pieces of a Chunked frame in a row).
        wire = b"".join(bytes(p) for p in encode_parts([Kind.TASK, *frames]))
        assert decode_body(wire[8:]) == [Kind.TASK, *want]


def test_a_split_batch_whose_parts_do_not_match_its_table_is_refused() -> None:
    msg = join_results([(1, Outcome.OK, bytes(CHUNK + 5), 0.0)])
    with pytest.raises(ProtocolError):
        split_results([b"m", *msg[:-1]], start=2)  # a piece missing
    with pytest.raises(ProtocolError):
        split_results([b"m", *msg[:-1], b"x"], start=2)  # a piece of the wrong size
    with pytest.raises(ProtocolError):
        split_tasks([Kind.TASKS_SPLIT, encode_table([b"a"]), b"a", b"b"])
