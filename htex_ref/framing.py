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

from htex_ref.errors import ProtocolError

MAX_FRAMES = 1 << 16
MAX_MESSAGE = 1 << 34
_U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")

#: A frame as received: bytes, or for large frames a memoryview into the message's buffer.
Frame = bytes | memoryview


_counts: dict[int, struct.Struct] = {}


def _lengths_struct(n: int) -> struct.Struct:
    st = _counts.get(n)
    if st is None:
        st = _counts[n] = struct.Struct(f"<I{n}Q")
    return st


def encode_body(frames: list[Frame] | list[bytes] | tuple[Frame, ...]) -> bytes:
    """The frames as one byte string (no length prefix); ``decode_body`` reverses it."""
    return b"".join([_lengths_struct(len(frames)).pack(len(frames), *map(len, frames)), *frames])


def encode_parts(frames: list[Frame] | list[bytes]) -> list[Frame]:
    """The wire form as a list of buffers (prefix + lengths, then the frames), for scatter-gather sends."""
    head = _lengths_struct(len(frames)).pack(len(frames), *map(len, frames))
    total = len(head) + sum(map(len, frames))
    return [U64.pack(total) + head, *frames]


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
