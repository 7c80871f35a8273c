"""CurveZMQ end to end: per-run private certificates, and clients without the run's keys are shut out.

Every raw client here talks only to 127.0.0.1.
"""

from __future__ import annotations

import os
import platform
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from htex_ref.protocol import Kind, Registration
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__

pytestmark = pytest.mark.e2e

#: How long a refused client waits for an answer that must not come.
SILENCE_MS = 2000


def square(x: int) -> int:
    return x * x


def registration(uid: str) -> Registration:
    return Registration(
        protocol_version=PROTOCOL_VERSION, htex_ref_version=__version__, python_version=PYTHON_VERSION, uid=uid,
        block_id="intruder", worker_count=4, prefetch_capacity=0, hostname=socket.gethostname(), pid=os.getpid(),
        cpu_count=1, total_memory=1, os=platform.system(),
    )


def test_certificates_are_private_and_fresh_per_run(make_executor: Any) -> None:
    runs = [make_executor(max_workers_per_node=1, encrypted=True) for _ in range(2)]
    secrets = []
    for ex in runs:
        assert ex.submit(square, 5).result(30) == 25
        cert_dir = Path(ex.cert_dir)
        assert cert_dir.is_relative_to(ex.run_dir)
        assert stat.S_IMODE(cert_dir.stat().st_mode) == 0o700
        assert sorted(p.name for p in cert_dir.iterdir()) == [
            "client.key", "client.key_secret", "server.key", "server.key_secret"]
        for name in ("client.key_secret", "server.key_secret"):
            mode = stat.S_IMODE((cert_dir / name).stat().st_mode)
            assert mode & 0o077 == 0, f"{name} has mode {oct(mode)}: readable beyond its owner"
        secrets.append({name: zmq.auth.load_certificate(str(cert_dir / f"{name}.key_secret"))[1]
                        for name in ("client", "server")})
    assert secrets[0]["client"] != secrets[1]["client"]
    assert secrets[0]["server"] != secrets[1]["server"]


def _client(ctx: Any, cert_dir: str, kind: str) -> Any:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.IDENTITY, f"raw-{kind}".encode())
    server_public, _ = zmq.auth.load_certificate(os.path.join(cert_dir, "server.key"))
    if kind == "run_client_key":
        public, secret = zmq.auth.load_certificate(os.path.join(cert_dir, "client.key_secret"))
    elif kind == "wrong_server_key":
        public, secret = zmq.curve_keypair()
        server_public = zmq.curve_keypair()[0]
    elif kind == "unknown_client_key":
        public, secret = zmq.curve_keypair()
    else:
        assert kind == "no_curve"
        return s
    assert secret is not None
    s.curve_publickey = public
    s.curve_secretkey = secret
    s.curve_serverkey = server_public
    return s


@pytest.mark.parametrize("kind", ["no_curve", "wrong_server_key", "unknown_client_key"])
def test_clients_without_the_run_keys_get_nothing(make_executor: Any, kind: str) -> None:
    ex = make_executor(max_workers_per_node=1, encrypted=True)
    assert ex.submit(square, 3).result(30) == 9
    managers = [m["manager"] for m in ex.connected_managers()]
    assert len(managers) == 1
    ctx = zmq.Context()
    try:
        s = _client(ctx, ex.cert_dir, kind)
        s.connect(f"tcp://127.0.0.1:{ex.interchange_worker_port}")
        s.send_multipart([Kind.PROBE, str(PROTOCOL_VERSION).encode()])
        s.send_multipart([Kind.REGISTER, registration(f"intruder-{kind}").encode()])
        assert s.poll(SILENCE_MS) == 0, f"a client with {kind} got an answer"
        s.close()
    finally:
        ctx.destroy(linger=0)
    # Nothing it sent reached the interchange's application layer, and it serves as before.
    assert [m["manager"] for m in ex.connected_managers()] == managers
    assert ex.interchange_stats()["bad_frames"] == 0
    assert [ex.submit(square, i).result(30) for i in range(5)] == [0, 1, 4, 9, 16]
    assert not ex.bad_state_is_set


def test_a_client_with_the_run_keys_is_answered(make_executor: Any) -> None:
    """The control for the test above: the same raw client, holding the run's client key, is answered."""
    ex = make_executor(max_workers_per_node=1, encrypted=True)
    assert ex.submit(square, 3).result(30) == 9
    ctx = zmq.Context()
    try:
        s = _client(ctx, ex.cert_dir, "run_client_key")
        s.connect(f"tcp://127.0.0.1:{ex.interchange_worker_port}")
        s.send_multipart([Kind.PROBE, str(PROTOCOL_VERSION).encode()])
        assert s.poll(10_000), "the interchange did not answer a client holding the run's keys"
        assert s.recv_multipart() == [Kind.PROBE_OK, str(PROTOCOL_VERSION).encode()]
        s.close()
    finally:
        ctx.destroy(linger=0)
    assert ex.submit(square, 4).result(30) == 16
