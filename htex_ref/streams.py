"""Whole messages over a Unix stream socket: a non-blocking reader and writer, and a blocking channel.

The layout of a message is ``htex_ref.framing``'s; this module owns the sockets' side: reassembling
messages from a byte stream (``StreamReader``), queueing writes so that no sender ever blocks
(``NonBlockingWriter``), and the worker's simple blocking ``BlockingChannel``.
"""

from __future__ import annotations

import io
import mmap
import socket
import sys
import threading
import time
from typing import cast

from htex_ref.errors import ProtocolError
from htex_ref.framing import MAX_MESSAGE, U64, Frame, decode_body, encode_parts


class BigBuffers:
    """Memory maps for messages of ``MAP_AT`` bytes or more, reused from one message to the next.

    Fresh pages are what a big transfer costs on a virtual machine: copying 256 MiB into pages a
    process already has took 10 ms here, into fresh ones 250-330 ms (each page is faulted in and zeroed,
    and on a VM the host may fault it too). A process that receives one big argument or result after
    another (the executor, the interchange, a pool, a worker) would pay that on every message. So the
    maps are kept, and the next big message reuses one that is large enough and no longer referenced:
    its frames are memoryviews into it, and each view holds a reference to the map, so a map is free
    when nothing but this cache refers to it (``sys.getrefcount``; a consumer still holding a frame, a
    ZeroMQ send not yet done with it, keeps it out of reuse). At most ``KEEP`` maps are kept, and one
    not handed out for ``IDLE_S`` seconds is dropped by ``trim``, which the event loops call as they
    go: a process holds on to this memory while big messages keep coming, not after. (A worker blocks
    in its read, so it keeps the map of its last big argument until its next task.)
    """

    KEEP = 2
    IDLE_S = 10.0

    def __init__(self) -> None:
        self._maps: list[tuple[mmap.mmap, float]] = []  # (map, last handed out), oldest first
        # Each process has one cache, and a process may read several streams from several threads (two
        # executors, each with its link thread): finding a free map and handing it out is one step.
        self._lock = threading.Lock()

    def take(self, size: int) -> memoryview:
        """A writable view of exactly ``size`` bytes in a map nobody else refers to."""
        with self._lock:
            return self._take(size)

    def _take(self, size: int) -> memoryview:
        now = time.monotonic()
        self._trim(now)
        best = -1
        for i, (m, _) in enumerate(self._maps):
            # References: the list's tuple, ``m`` here and getrefcount's argument.
            if len(m) >= size and sys.getrefcount(m) <= 3 and (best < 0 or len(m) < len(self._maps[best][0])):
                best = i
        if best >= 0:
            m = self._maps.pop(best)[0]
        else:
            m = mmap.mmap(-1, size)
            if len(self._maps) >= self.KEEP:
                self._maps.pop(0)
        self._maps.append((m, now))
        return memoryview(m)[:size]

    def trim(self, now: float) -> None:
        """Forget maps not handed out for ``IDLE_S`` seconds (unmapped once nothing refers to them)."""
        with self._lock:
            self._trim(now)

    def _trim(self, now: float) -> None:
        if self._maps and now - self._maps[0][1] > self.IDLE_S:
            self._maps = [(m, t) for m, t in self._maps if now - t <= self.IDLE_S]

    def __len__(self) -> int:
        return len(self._maps)


#: One cache per process: every stream a process reads shares it (a pool reads one per worker).
BIG_BUFFERS = BigBuffers()


class StreamReader:
    """Reassembles messages from a non-blocking socket's byte stream.

    Small messages are read through a reusable staging buffer, many per system call. A message too big
    for it gets a buffer of its own that the kernel fills directly, and its large frames are handed on
    as memoryviews into that buffer: a 1 MiB result is copied once here, not three times. From
    ``MAP_AT`` bytes that buffer is an anonymous memory map rather than a ``bytearray``: its pages are
    touched once, by the kernel's copy, instead of first being zeroed (a quarter of a second for 256 MiB
    on a small VM), and maps are reused from one big message to the next (``BigBuffers``). Below it, a
    ``bytearray`` reuses memory the allocator already has (fresh pages cost more than zeroing ones that
    are there).
    """

    STAGING = 1 << 18
    #: glibc's allocator hands out fresh pages for blocks above its dynamic threshold (at most 32 MiB).
    MAP_AT = 32 << 20

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray(self.STAGING)
        self._start = 0
        self._end = 0
        self._big: memoryview | None = None
        self._big_got = 0
        self.closed = False

    def _recv_into(self, view: memoryview) -> int:
        """Bytes read; 0 at end of stream (sets ``closed``); -1 when nothing is there now."""
        try:
            n = self.sock.recv_into(view, 0, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return -1
        except OSError:
            self.closed = True
            return 0
        if n == 0:
            self.closed = True
        return n

    def read_available(self) -> list[list[Frame]]:
        """Read what the socket has now; return the complete messages. Sets ``closed`` on EOF."""
        out: list[list[Frame]] = []
        while not self.closed:
            if self._big is not None:
                n = self._recv_into(self._big[self._big_got :])
                if n <= 0:
                    break
                self._big_got += n
                if self._big_got == len(self._big):
                    out.append(decode_body(self._big, share=True))
                    self._big = None
                continue
            if self._start == self._end:
                self._start = self._end = 0
            elif self._end == len(self._buf):
                # Move the incomplete message to the front to make room.
                size = self._end - self._start
                self._buf[:size] = self._buf[self._start : self._end]
                self._start, self._end = 0, size
            room = len(self._buf) - self._end
            n = self._recv_into(memoryview(self._buf)[self._end :])
            if n <= 0:
                break
            self._end += n
            self._parse(out)
            if n < room and self._big is None:
                break  # the socket is drained; skip the extra call that would say so
        return out

    def _parse(self, out: list[list[Frame]]) -> None:
        buf = self._buf
        while self._end - self._start >= 8:
            (body_len,) = U64.unpack_from(buf, self._start)
            if body_len > MAX_MESSAGE:
                raise ProtocolError(f"message of {body_len} bytes is over the limit")
            have = self._end - self._start - 8
            if have >= body_len:
                begin = self._start + 8
                out.append(decode_body(memoryview(buf)[begin : begin + body_len]))
                self._start = begin + body_len
            elif body_len > len(buf) - 8:
                big = BIG_BUFFERS.take(body_len) if body_len >= self.MAP_AT else memoryview(bytearray(body_len))
                big[:have] = buf[self._start + 8 : self._end]
                self._big, self._big_got = big, have
                self._start = self._end = 0
                return
            else:
                return


class BlockingChannel:
    """Blocking send/receive of whole messages (the worker's side)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # "rb" with a buffer size makes a BufferedReader (typeshed only says IOBase).
        self._file = cast(io.BufferedReader, sock.makefile("rb", buffering=1 << 16))

    def send(self, frames: list[Frame] | list[bytes]) -> None:
        parts = [memoryview(p) for p in encode_parts(frames)]
        while parts:
            sent = self.sock.sendmsg(parts)
            while parts and sent >= len(parts[0]):
                sent -= len(parts[0])
                parts.pop(0)
            if parts and sent:
                parts[0] = parts[0][sent:]

    def recv(self) -> list[Frame] | None:
        """The next message, or None when the peer closed the stream."""
        head = self._file.read(8)
        if len(head) < 8:
            return None
        (body_len,) = U64.unpack(head)
        if body_len > MAX_MESSAGE:
            raise ProtocolError(f"message of {body_len} bytes is over the limit")
        if body_len < StreamReader.MAP_AT:
            body = self._file.read(body_len)
            if len(body) < body_len:
                return None
            return decode_body(body, share=True)
        # A big argument lands in a reused map (see ``BigBuffers``): its frames are views into it, so the
        # caller must drop them before the next big message can reuse that memory.
        view = BIG_BUFFERS.take(body_len)
        got = 0
        while got < body_len:
            n = self._file.readinto(view[got:])
            if not n:
                return None
            got += n
        return decode_body(view, share=True)


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
        #: Bytes given to ``write``/``write_parts`` so far, and of those the ones still queued here: the
        #: kernel has taken everything up to ``written - unsent`` (the interchange acknowledges results
        #: by it).
        self.written = 0
        self.unsent = 0

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def write(self, data: bytes) -> None:
        if self.broken is not None:
            raise self.broken
        self.written += len(data)
        if self._queue:
            self._queue.append(memoryview(data))
            self.unsent += len(data)
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
            self.unsent += len(data) - sent

    def write_parts(self, parts: list[Frame] | list[bytes]) -> None:
        """Like ``write`` for a message given as several buffers, without joining them first."""
        if self._queue:
            self.queue_parts(parts)  # behind what waits already
            return
        if self.broken is not None:
            raise self.broken
        views = [memoryview(p) for p in parts]
        try:
            # At most FLUSH_BATCH buffers a call: past the kernel's IOV_MAX (1,024) sendmsg fails with
            # EMSGSIZE, and a message of many frames must not break the channel. The rest is queued.
            sent = self.sock.sendmsg(views[: self.FLUSH_BATCH], [], socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            self.written += sum(v.nbytes for v in views)
            self.broken = e
            raise
        self.written += sent
        done = 0
        while done < len(views) and sent >= len(views[done]):
            sent -= len(views[done])
            done += 1
        if sent:
            views[done] = views[done][sent:]
        if done < len(views):
            self.queue_parts(views[done:])

    def queue_parts(self, parts: list[Frame] | list[bytes] | list[memoryview]) -> None:
        """Like ``write_parts``, but only queue the message: the owner's next ``flush`` sends it with
        whatever else is queued by then, in one system call."""
        if self.broken is not None:
            raise self.broken
        views = [memoryview(p) for p in parts]
        size = sum(v.nbytes for v in views)
        self.written += size
        self.unsent += size
        self._queue.extend(views)

    #: Buffers handed to one ``sendmsg`` when flushing (below the kernel's IOV_MAX of 1024).
    FLUSH_BATCH = 512

    def flush(self) -> None:
        queue = self._queue
        done = 0  # buffers fully sent, removed from the queue in one slice at the end (not pop(0) each)
        try:
            while done < len(queue):
                batch = queue[done:done + self.FLUSH_BATCH]
                try:
                    sent = self.sock.sendmsg(batch, [], socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:
                    self.broken = e
                    queue.clear()
                    done = 0
                    return
                self.unsent -= sent
                for chunk in batch:
                    if sent >= len(chunk):
                        sent -= len(chunk)
                        done += 1
                    else:
                        if sent:
                            queue[done] = chunk[sent:]
                        return
        finally:
            if done:
                del queue[:done]
