"""Large arguments and results through real processes: byte-identical over every hop (executor ->
interchange -> pool -> worker and back), encrypted and not, at any size from 0 bytes to several MiB (a
batch with a large frame travels split and in pieces), one of 256 MiB, and ``max_payload_bytes``."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from htex_ref import HighThroughputExecutor, LocalProvider, PayloadTooLarge
from htex_ref.framing import CHUNK
from htex_ref.protocol import BIG_FRAME
from htex_ref.streams import BIG_BUFFERS, StreamReader


def echo(data: bytes) -> bytes:
    return data


def digest_and_echo(data: bytes) -> tuple[str, bytes]:
    import hashlib

    return hashlib.sha256(data).hexdigest(), data


def make(n: int) -> bytes:
    return bytes(range(256)) * (n // 256) + bytes(n % 256)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "encrypted"])
def ex(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HighThroughputExecutor]:
    run_dir = tmp_path_factory.mktemp("payload")
    e = HighThroughputExecutor(label="payload", provider=LocalProvider(), max_workers_per_node=2,
                               encrypted=request.param, run_dir=str(run_dir), address="127.0.0.1")
    e.start()
    yield e
    e.shutdown()


SIZES = st.one_of(st.integers(0, 5000), st.integers(BIG_FRAME - 2, BIG_FRAME + 2),
                  st.integers(CHUNK - 2, CHUNK + 2), st.integers(0, 3 * CHUNK + 100))


@settings(max_examples=12, deadline=None)
@given(sizes=st.lists(SIZES, min_size=1, max_size=4), seed=st.integers(0, 2**32))
def test_payloads_of_any_size_arrive_byte_identical(ex: HighThroughputExecutor, sizes: list[int], seed: int) -> None:
    rng = random.Random(seed)
    blobs = [rng.randbytes(n) for n in sizes]
    # Submitted together, so that small and large ones share batches on the way.
    futures = [ex.submit(digest_and_echo, b) for b in blobs]
    for f, b in zip(futures, blobs, strict=True):
        remote_digest, back = f.result(120)
        assert remote_digest == hashlib.sha256(b).hexdigest()  # the argument arrived intact
        assert back == b  # and the result came back intact


def test_a_256_mib_argument_and_result_round_trip(ex: HighThroughputExecutor) -> None:
    data = make(256 << 20)
    remote_digest, back = ex.submit(digest_and_echo, data).result(300)
    assert remote_digest == hashlib.sha256(data).hexdigest()
    assert back == data


def test_big_messages_reuse_memory_and_let_it_go_when_they_stop(ex: HighThroughputExecutor,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Results over MAP_AT land in maps of this (the executor's) process: kept for the next big message,
    # then dropped by the link thread once no big message came for IDLE_S seconds.
    size = StreamReader.MAP_AT + 4096
    first = ex.submit(make, size).result(120)
    assert first == make(size)
    maps = {id(m) for m, _ in BIG_BUFFERS._maps}
    assert maps, "a big result did not land in a cached map"
    del first
    second = ex.submit(make, size).result(120)
    assert second == make(size)
    assert {id(m) for m, _ in BIG_BUFFERS._maps} == maps, "the second big result did not reuse the map"
    del second
    monkeypatch.setattr(BIG_BUFFERS, "IDLE_S", 0.2)
    deadline = time.monotonic() + 30
    while BIG_BUFFERS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not BIG_BUFFERS, "the link thread kept the maps of big messages that stopped coming"


def test_max_payload_bytes_refuses_a_large_call_at_submit_and_fails_a_large_result(make_executor: Any,
                                                                                 tmp_path: Path) -> None:
    e = make_executor(max_payload_bytes=1 << 20)
    with pytest.raises(PayloadTooLarge, match="max_payload_bytes=1048576") as info:
        e.submit(echo, bytes(2 << 20))
    assert info.value.limit == 1 << 20 and info.value.size > 2 << 20
    assert e.outstanding == 0  # nothing was sent
    assert e.submit(echo, b"small").result(60) == b"small"
    # A result over the limit fails its task at the worker pool; the pool and the executor carry on.
    with pytest.raises(PayloadTooLarge, match="the result of task"):
        e.submit(make, 2 << 20).result(60)
    assert len(e.submit(make, 1000).result(60)) == 1000
    assert not e.bad_state_is_set


def test_max_payload_bytes_is_checked_at_construction() -> None:
    for bad in (0, -1, 1.5, "1G", 1 << 40):
        with pytest.raises(ValueError, match="max_payload_bytes"):
            HighThroughputExecutor(max_payload_bytes=bad)
