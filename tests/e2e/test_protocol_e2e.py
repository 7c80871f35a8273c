"""Bad frames and version mismatches against a real interchange."""

from __future__ import annotations

import itertools
import json
import os
import platform
import socket
from typing import Any

import pytest
import zmq

from htex_ref import BadStateException, VersionMismatch
from htex_ref.protocol import Kind, Registration
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__

pytestmark = pytest.mark.e2e


def add(a: int, b: int) -> int:
    return a + b


def registration(uid: str, protocol: int = PROTOCOL_VERSION, python: str = PYTHON_VERSION) -> Registration:
    return Registration(
        protocol_version=protocol, htex_ref_version=__version__, python_version=python, uid=uid, block_id="99",
        worker_count=1, prefetch_capacity=0, hostname=socket.gethostname(), pid=os.getpid(), cpu_count=1,
        total_memory=1, os=platform.system(),
    )


def dealer(ctx: Any, port: int, identity: bytes) -> Any:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.IDENTITY, identity)
    s.connect(f"tcp://127.0.0.1:{port}")
    return s


def test_malformed_frames_are_dropped_and_service_continues(make_executor: Any) -> None:
    ex = make_executor(max_workers_per_node=1)
    assert ex.submit(add, 1, 2).result(30) == 3
    ctx = zmq.Context()
    try:
        s = dealer(ctx, ex.interchange_worker_port, b"fuzzer")
        garbage = [
            [b"FuzzyByte\rSTREAM"], [b"{}"], [Kind.HEARTBEAT], [Kind.RESULTS, b"\x00\x01"],
            [Kind.REGISTER, b"not json"], [Kind.REGISTER, b'{"protocol_version": true}'],
            [Kind.RESULTS, b""], [Kind.BYE, b"[]"], [b"", b"", b""], [Kind.TASKS, os.urandom(64)],
        ]
        for frames in garbage:
            s.send_multipart(frames)
        s.send_multipart([Kind.PROBE, b"1"])
        assert s.poll(10_000), "interchange stopped answering after malformed frames"
        assert s.recv_multipart()[0] == Kind.PROBE_OK
        s.close()
    finally:
        ctx.destroy(linger=0)
    assert ex.submit(add, 2, 3).result(30) == 5
    assert ex.interchange_stats()["bad_frames"] >= 5
    assert not ex.bad_state_is_set


@pytest.mark.parametrize(("protocol", "python", "shown"), [(999, PYTHON_VERSION, "protocol=999"),
                                                         (PROTOCOL_VERSION, "2.7.18", "python=2.7.18")])
def test_version_mismatch_is_refused_and_fatal(make_executor: Any, protocol: int, python: str, shown: str) -> None:
    ex = make_executor(max_workers_per_node=1)
    pending = ex.submit(add, 1, 1)
    pending.result(30)
    ctx = zmq.Context()
    try:
        s = dealer(ctx, ex.interchange_worker_port, b"oldpool")
        s.send_multipart([Kind.REGISTER, registration("oldpool", protocol, python).encode()])
        assert s.poll(10_000)
        kind, body = s.recv_multipart()
        assert kind == Kind.REJECTED
        assert shown.encode() in body and f"protocol={PROTOCOL_VERSION}".encode() in body
        s.close()
    finally:
        ctx.destroy(linger=0)
    with pytest.raises(BadStateException) as info:
        for _ in range(200):
            ex.submit(add, 1, 1).result(30)
    assert isinstance(info.value.reason, VersionMismatch)
    assert shown in str(info.value) and f"python={PYTHON_VERSION}" in str(info.value)


def test_fuzzed_messages_never_stop_the_interchange(make_executor: Any) -> None:
    """Hypothesis sends random and near-valid messages from raw clients with random identities; after
    each one the interchange must still answer a probe, and at the end it still runs tasks."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from htex_ref.framing import encode_body

    ex = make_executor(max_workers_per_node=1)
    assert ex.submit(add, 1, 2).result(30) == 3
    kinds = st.sampled_from([Kind.RESULTS, Kind.HEARTBEAT, Kind.REGISTER, Kind.BYE, Kind.PROBE, Kind.TASKS,
                             Kind.SHUTDOWN, b"", b"\xff" * 3])
    json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
    body = st.one_of(
        st.binary(max_size=200),
        st.lists(st.binary(max_size=30), max_size=6).map(encode_body),
        st.dictionaries(st.text(max_size=12), json_scalar, max_size=6).map(lambda d: json.dumps(d).encode()),
    )
    message = st.tuples(kinds, st.lists(body, max_size=3)).map(lambda kb: [kb[0], *kb[1]])
    ctx = zmq.Context()
    probe = dealer(ctx, ex.interchange_worker_port, b"prober")
    serial = itertools.count()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(identity=st.binary(min_size=1, max_size=16).filter(lambda b: b[0] != 0), msg=message)
    def send(identity: bytes, msg: list[bytes]) -> None:
        # A serial number keeps identities unique: the ROUTER silently refuses a connection whose identity
        # is still held by a closed socket it has not yet seen go.
        s = dealer(ctx, ex.interchange_worker_port, b"fz%d-" % next(serial) + identity)
        try:
            s.send_multipart(msg)
            # A probe on the same connection is answered only after the fuzzed message was read: without
            # it, a loaded machine can close the socket (LINGER 0) before the message ever left it.
            s.send_multipart([Kind.PROBE, b"1"])
            assert s.poll(10_000), f"no answer on the fuzzing connection after {msg!r}"
            while s.recv_multipart()[0] != Kind.PROBE_OK:
                assert s.poll(10_000), f"no probe answer on the fuzzing connection after {msg!r}"
        finally:
            s.close()
        probe.send_multipart([Kind.PROBE, b"1"])
        assert probe.poll(10_000), f"no answer after {msg!r}"
        assert probe.recv_multipart()[0] == Kind.PROBE_OK

    try:
        send()
    finally:
        probe.close()
        ctx.destroy(linger=0)
    assert ex.submit(add, 2, 3).result(30) == 5
    assert not ex.bad_state_is_set
    assert ex.interchange_stats()["bad_frames"] > 0
