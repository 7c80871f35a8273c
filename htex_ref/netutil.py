"""ZeroMQ plumbing shared by the executor, interchange and worker pool: URLs, addresses and CurveZMQ.

With encryption on, every TCP channel uses CurveZMQ. The side that binds is the Curve server and checks
the connecting side's public key against the certificate directory (a ZAP authenticator), so only
holders of the run's client key can connect. The certificate directory must be private (mode 0700)
and reachable from the compute nodes.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from htex_ref.protocol import Kind

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator


def tcp_url(address: str, port: int | str) -> str:
    """tcp://address:port, bracketing IPv6; '*' binds every interface."""
    if address == "*":
        return f"tcp://*:{port}"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        # A host name: ZeroMQ resolves it.
        return f"tcp://{address}:{port}"
    return f"tcp://[{ip}]:{port}" if ip.version == 6 else f"tcp://{ip}:{port}"


def check_address(address: str, parameter: str) -> None:
    """Raise ValueError naming ``parameter`` unless ``address`` is an IP, a resolvable name, or '*'."""
    if address == "*":
        return
    try:
        ipaddress.ip_address(address)
        return
    except ValueError:
        pass
    try:
        socket.getaddrinfo(address, None)
    except OSError as e:
        raise ValueError(f"{parameter}={address!r} is neither an IP address nor a resolvable host name: {e}") from None


def all_addresses() -> list[str]:
    """This host's IPv4 addresses (loopback first), for worker pools to probe when no address is set."""
    import psutil

    found = ["127.0.0.1"]
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and a.address not in found and not a.address.startswith("169.254."):
                found.append(a.address)
    return found


def create_certificates(base_dir: str | os.PathLike[str]) -> str:
    """Create ``base_dir/certificates`` (mode 0700) with fresh server and client key pairs (secret keys 0600)."""
    import zmq.auth
    cert_dir = Path(base_dir) / "certificates"
    cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(cert_dir, 0o700)
    for name in ("server", "client"):
        for suffix in (".key", ".key_secret"):
            (cert_dir / f"{name}{suffix}").unlink(missing_ok=True)
        _, secret_file = zmq.auth.create_certificates(str(cert_dir), name)
        # pyzmq writes the secret key with the umask's mode (0644 as a rule): only the owner may read it,
        # whatever happens to the directory's mode or wherever a copy of it goes.
        os.chmod(secret_file, 0o600)
    return str(cert_dir)


def _load(cert_dir: str, name: str) -> tuple[bytes, bytes]:
    import zmq.auth

    st = os.stat(cert_dir)
    if st.st_mode & 0o077:
        raise OSError(f"The certificates directory must be private (mode 0700): {cert_dir}")
    public, secret = zmq.auth.load_certificate(os.path.join(cert_dir, f"{name}.key_secret"))
    if secret is None:
        raise ValueError(f"No secret key found in {cert_dir}/{name}.key_secret")
    return public, secret


class Contexts:
    """A ZeroMQ context plus the Curve settings for the sockets one process makes."""

    def __init__(self, cert_dir: str | None) -> None:
        self.cert_dir = cert_dir
        self.ctx = zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        self._server: tuple[bytes, bytes] | None = None
        self._client: tuple[bytes, bytes] | None = None

    @property
    def encrypted(self) -> bool:
        return self.cert_dir is not None

    def socket(self, kind: int, *, server: bool) -> Any:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IPV6, 1)
        if self.cert_dir is not None:
            if server:
                if self._auth is None:
                    from zmq.auth.thread import ThreadAuthenticator

                    self._auth = ThreadAuthenticator(self.ctx)
                    self._auth.start()
                    self._auth.configure_curve(domain="*", location=self.cert_dir)
                    self._server = _load(self.cert_dir, "server")
                assert self._server is not None
                sock.curve_secretkey = self._server[1]
                sock.curve_publickey = self._server[0]
                sock.curve_server = True
            else:
                if self._client is None:
                    self._client = _load(self.cert_dir, "client")
                    from zmq.auth import load_certificate

                    server_public, _ = load_certificate(os.path.join(self.cert_dir, "server.key"))
                    self._server_public = server_public
                sock.curve_secretkey = self._client[1]
                sock.curve_publickey = self._client[0]
                sock.curve_serverkey = self._server_public
        return sock

    def close(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self.ctx.destroy(linger=0)


#: Message kinds whose later parts are received without a copy (see ``recv_message``).
SPLIT_KINDS = frozenset({Kind.TASKS_SPLIT, Kind.RESULTS_SPLIT})


#: pyzmq's flags and options as plain ints: its enums cost a Python-level ``__or__`` and ``__call__`` per
#: use, and ``send_multipart`` builds one per part (at 10,000 managers registering at once, the enum
#: calls were a visible share of the interchange's loop).
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)


def send_message(sock: Any, parts: list[Any], copy: bool = True) -> None:
    """``sock.send_multipart(parts, copy=copy)`` at a quarter of its cost for small messages (one ``send``
    per part with plain int flags; measured here: 1.6 us against 5.7-8.3 us for three parts)."""
    send = sock.send
    last = len(parts) - 1
    for i in range(last):
        send(parts[i], _SNDMORE, copy=copy)
    send(parts[last], 0, copy=copy)


def recv_message(sock: Any) -> list[Any]:
    """One multipart message, without waiting (``zmq.Again`` when none). The parts of a split batch
    (``tasks_split``, ``results_split``: the second part names it) come as views of ZeroMQ's own buffers,
    not copies; all other parts as bytes, which is cheaper for small ones."""
    first = sock.recv(_NOBLOCK)
    frames = [first]
    split = first in SPLIT_KINDS  # a DEALER's messages start with their kind, a ROUTER's with the peer
    get = sock.get
    while get(_RCVMORE):
        if split:
            frames.append(sock.recv(copy=False).buffer)
        else:
            part = sock.recv()
            frames.append(part)
            split = part in SPLIT_KINDS
    return frames
