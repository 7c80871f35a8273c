"""Multipart messages over a plain stream socket, for the local manager <-> worker hop.

ZeroMQ hands every message through two background I/O threads, which costs four thread wake-ups per
hop. Between a manager and the workers it forked, a Unix socketpair does the same job with one write
and one wake-up. A message is the same list of frames a ZeroMQ multipart message would be::

    u32 body length | u32 frame count | u32 length of each frame | frame bytes ...

Limits guard against a corrupt stream: at most ``MAX_FRAMES`` frames and ``MAX_MESSAGE`` bytes.
"""

from __future__ import annotations

import socket
import struct

from htex_ref.errors import ProtocolError

MAX_FRAMES = 1 << 16
MAX_MESSAGE = 1 << 34
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


_counts: dict[int, struct.Struct] = {}


def _lengths_struct(n: int) -> struct.Struct:
    st = _counts.get(n)
    if st is None:
        st = _counts[n] = struct.Struct(f"<I{n}Q")
    return st


def encode_body(frames: list[bytes] | tuple[bytes, ...]) -> bytes:
    """The frames as one byte string (no length prefix); ``decode_body`` reverses it."""
    return b"".join([_lengths_struct(len(frames)).pack(len(frames), *map(len, frames)), *frames])


def encode_parts(frames: list[bytes]) -> list[bytes]:
    """The wire form as a list of buffers (prefix + lengths, then the frames), for scatter-gather sends."""
    head = _lengths_struct(len(frames)).pack(len(frames), *map(len, frames))
    total = len(head) + sum(map(len, frames))
    return [_U64.pack(total) + head, *frames]


def encode(frames: list[bytes]) -> bytes:
    return b"".join(encode_parts(frames))


def decode_body(body: bytes | memoryview) -> list[bytes]:
    if len(body) < 4:
        raise ProtocolError("message body too short")
    (n,) = _U32.unpack_from(body, 0)
    if n > MAX_FRAMES or 4 + 8 * n > len(body):
        raise ProtocolError(f"bad frame count {n}")
    lengths = struct.unpack_from(f"<{n}Q", body, 4)
    offset = 4 + 8 * n
    if offset + sum(lengths) != len(body):
        raise ProtocolError("frame lengths do not add up to the body length")
    frames = []
    for length in lengths:
        frames.append(bytes(body[offset : offset + length]))
        offset += length
    return frames


class StreamReader:
    """Reassembles messages from a non-blocking socket's byte stream."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self.closed = False

    def read_available(self) -> list[list[bytes]]:
        """Read what the socket has now; return the complete messages. Sets ``closed`` on EOF."""
        while True:
            try:
                chunk = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.closed = True
                break
            if not chunk:
                self.closed = True
                break
            self._buf += chunk
            if len(chunk) < (1 << 20):
                break
        out = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 8:
            (body_len,) = _U64.unpack_from(buf, pos)
            if body_len > MAX_MESSAGE:
                raise ProtocolError(f"message of {body_len} bytes is over the limit")
            if len(buf) - pos - 8 < body_len:
                break
            out.append(decode_body(memoryview(buf)[pos + 8 : pos + 8 + body_len]))
            pos += 8 + body_len
        if pos:
            del buf[:pos]
        return out


class BlockingChannel:
    """Blocking send/receive of whole messages (the worker's side)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._file = sock.makefile("rb", buffering=1 << 16)

    def send(self, frames: list[bytes]) -> None:
        parts = [memoryview(p) for p in encode_parts(frames)]
        while parts:
            sent = self.sock.sendmsg(parts)
            while parts and sent >= len(parts[0]):
                sent -= len(parts[0])
                parts.pop(0)
            if parts and sent:
                parts[0] = parts[0][sent:]

    def recv(self) -> list[bytes] | None:
        """The next message, or None when the peer closed the stream."""
        head = self._file.read(8)
        if len(head) < 8:
            return None
        (body_len,) = _U64.unpack(head)
        if body_len > MAX_MESSAGE:
            raise ProtocolError(f"message of {body_len} bytes is over the limit")
        body = self._file.read(body_len)
        if len(body) < body_len:
            return None
        return decode_body(body)


class NonBlockingWriter:
    """Queue of outgoing bytes for a non-blocking socket: ``write`` never blocks.

    What the kernel does not take at once stays queued; the owner polls for POLLOUT while ``pending``
    and calls ``flush``. Nobody ever blocks on a send, so two peers that both write a lot cannot
    deadlock, and a slow reader only grows this queue.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._queue: list[memoryview] = []
        self.broken: OSError | None = None

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def write(self, data: bytes) -> None:
        if self.broken is not None:
            raise self.broken
        if self._queue:
            self._queue.append(memoryview(data))
            return
        try:
            sent = self.sock.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            self.broken = e
            raise
        if sent < len(data):
            self._queue.append(memoryview(data)[sent:])

    def write_parts(self, parts: list[bytes]) -> None:
        """Like ``write`` for a message given as several buffers, without joining them first."""
        if self.broken is not None:
            raise self.broken
        views = [memoryview(p) for p in parts]
        if not self._queue:
            try:
                sent = self.sock.sendmsg(views, [], socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as e:
                self.broken = e
                raise
            while views and sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            if views and sent:
                views[0] = views[0][sent:]
        self._queue.extend(views)

    def flush(self) -> None:
        while self._queue:
            chunk = self._queue[0]
            try:
                sent = self.sock.send(chunk, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.broken = e
                self._queue.clear()
                return
            if sent < len(chunk):
                self._queue[0] = chunk[sent:]
                return
            self._queue.pop(0)
