"""The byte layout of a multipart message on a stream, and of a batch of frames in one frame.

ZeroMQ hands every message through two background I/O threads, which costs four thread wake-ups per
hop. Between a manager and the workers it forked, and between the executor and its interchange, a Unix
socketpair does the same job with one write and one wake-up (``htex_ref.streams`` moves the bytes). A
message is the same list of frames a ZeroMQ multipart message would be::

    u64 body length | u32 frame count | u64 length of each frame | frame bytes ...

This module only encodes and decodes (no sockets), so the pure cores can use its ``Frame`` type and
``htex_ref.protocol`` its batch layout. Limits guard against a corrupt stream: at most ``MAX_FRAMES``
frames and ``MAX_MESSAGE`` bytes.
"""

from __future__ import annotations

import struct
from typing import Any

from htex_ref.errors import ProtocolError

MAX_FRAMES = 1 << 16
MAX_MESSAGE = 1 << 34
_U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")

#: A frame as received: bytes, or for large frames a memoryview into the message's buffer.
Frame = bytes | memoryview

#: On the ZeroMQ hop a frame larger than this travels as pieces of this size (CurveZMQ encrypts each
#: part into buffers of its own: 4 MiB pieces keep that memory small, and measured here they make an
#: encrypted 256 MiB transfer three times faster than one part).
CHUNK = 4 << 20


class Chunked:
    """A frame that arrived in pieces (``CHUNK`` bytes each, the last shorter). Its length is theirs
    together; ``encode_parts`` writes the pieces one after another, so nothing ever joins them."""

    __slots__ = ("pieces", "size")

    def __init__(self, pieces: list[Frame]) -> None:
        self.pieces = pieces
        self.size = sum(map(len, pieces))

    def __len__(self) -> int:
        return self.size

    def tobytes(self) -> bytes:
        """The whole frame (a copy; for tests and small uses only)."""
        return b"".join(self.pieces)


def pieces(frame: Frame | Chunked) -> list[Frame]:
    """``frame`` as the parts it travels as on the ZeroMQ hop (views, no copy)."""
    if type(frame) is Chunked:
        return frame.pieces
    size = len(frame)
    if size <= CHUNK:
        return [frame]  # type: ignore[list-item]
    view = memoryview(frame)  # type: ignore[arg-type]
    return [view[i:i + CHUNK] for i in range(0, size, CHUNK)]


def piece_count(size: int) -> int:
    """How many parts a frame of ``size`` bytes travels as (``pieces``)."""
    return 1 if size <= CHUNK else -(-size // CHUNK)


_counts: dict[int, struct.Struct] = {}


def _lengths_struct(n: int) -> struct.Struct:
    st = _counts.get(n)
    if st is None:
        st = _counts[n] = struct.Struct(f"<I{n}Q")
    return st


def encode_body(frames: list[Frame] | list[bytes] | tuple[Frame, ...]) -> bytes:
    """The frames as one byte string (no length prefix); ``decode_body`` reverses it."""
    return b"".join([_lengths_struct(len(frames)).pack(len(frames), *map(len, frames)), *frames])


def encode_table(frames: list[Frame] | list[bytes] | tuple[Frame, ...]) -> bytes:
    """The head of ``encode_body``'s layout alone (frame count and lengths): followed by the frames
    themselves it is the body, so a batch can travel as that head and its frames as separate buffers."""
    return _lengths_struct(len(frames)).pack(len(frames), *map(len, frames))


def lengths_table(lengths: list[int]) -> bytes:
    """``encode_table`` from the frames' lengths."""
    return _lengths_struct(len(lengths)).pack(len(lengths), *lengths)


def table_lengths(table: bytes | bytearray | memoryview) -> tuple[int, ...]:
    """The frame lengths of an ``encode_table`` head, checked against its size."""
    if len(table) < 4:
        raise ProtocolError("frame table too short")
    (n,) = _U32.unpack_from(table, 0)
    if n > MAX_FRAMES or len(table) != 4 + 8 * n:
        raise ProtocolError(f"bad frame table ({n} frames in {len(table)} bytes)")
    lengths: tuple[int, ...] = _lengths_struct(n).unpack_from(table, 0)[1:]
    return lengths


def encode_joined(kind: bytes, parts: list[Any]) -> list[Frame]:
    """Like ``encode_parts([kind, b"".join(parts)])`` without the join: the wire form of a two-frame
    message whose second frame is given in pieces (a batch received split, forwarded as one)."""
    size = sum(map(len, parts))
    head = _lengths_struct(2).pack(2, len(kind), size)
    flat = [p for f in parts for p in (f.pieces if type(f) is Chunked else (f,))]
    return [U64.pack(len(head) + len(kind) + size) + head, kind, *flat]


def encode_parts(frames: list[Frame] | list[bytes] | list[Any]) -> list[Frame]:
    """The wire form as a list of buffers (prefix + lengths, then the frames), for scatter-gather sends.
    A ``Chunked`` frame goes as its pieces."""
    head = _lengths_struct(len(frames)).pack(len(frames), *map(len, frames))
    total = len(head) + sum(map(len, frames))
    out = [U64.pack(total) + head, *frames]
    if any(type(f) is Chunked for f in frames):
        out = [p for f in out for p in (f.pieces if type(f) is Chunked else (f,))]
    return out


def encode(frames: list[Frame] | list[bytes]) -> bytes:
    return b"".join(encode_parts(frames))


#: Frames at least this large are handed on as memoryviews into their message's own buffer, not copied.
SHARE_THRESHOLD = 1 << 16


def frame_table(body: bytes | bytearray | memoryview) -> tuple[tuple[int, ...], int]:
    """The frame lengths of a message body and the offset of its first frame, checked against its size."""
    if len(body) < 4:
        raise ProtocolError("message body too short")
    (n,) = _U32.unpack_from(body, 0)
    if n > MAX_FRAMES or 4 + 8 * n > len(body):
        raise ProtocolError(f"bad frame count {n}")
    lengths: tuple[int, ...] = _lengths_struct(n).unpack_from(body, 0)[1:]
    offset = 4 + 8 * n
    if offset + sum(lengths) != len(body):
        raise ProtocolError("frame lengths do not add up to the body length")
    return lengths, offset


def decode_body(body: bytes | bytearray | memoryview, share: bool = False) -> list[Frame]:
    """Split a message body into frames.

    With ``share``, frames of ``SHARE_THRESHOLD`` bytes or more are memoryviews into ``body`` (which must
    not be reused afterwards); smaller frames, and all frames without ``share``, are ``bytes`` copies.
    """
    lengths, offset = frame_table(body)
    view = memoryview(body)
    frames: list[Frame] = []
    for length in lengths:
        part = view[offset : offset + length]
        frames.append(part if share and length >= SHARE_THRESHOLD else bytes(part))
        offset += length
    return frames
