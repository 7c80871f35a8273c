"""``InterchangeLink``: the executor's end of its interchange, and the link thread that serves it.

The link owns the interchange process (started by fork+exec, watched through a pidfd), the Unix
socketpair to it, the queue of bytes waiting to be written to it, and the futures of queries in flight.
Its one thread, the *link thread* (``htex-{label}-link``), moves frames both ways: it flushes what
submitters and the control thread queued, reads result batches and hands them to the ``TaskTable``,
answers queries, pings the interchange as ``htex_ref.core.liveness.SilenceWatch`` says, and notices
the interchange's death (pidfd), silence, or a corrupt stream; each of those fails the executor through
``on_failure`` within a second or ``heartbeat_threshold``.

With ``restart_interchange`` the link restarts a dead (or silent, then killed) interchange instead, at
most ``max_restarts`` times: it reads what the dead one had written (results in its end of the
socketpair survive the process), starts a new one on the same port and keys, and sends it every
outstanding task as ``recover_task`` followed by ``recover`` (``htex_ref.core.interchange`` rule 11),
all while holding the task table's lock, so that a task submitted meanwhile goes either into that list
or to the new interchange, never to neither or both. Tasks that no worker pool claims are run again;
the interchange names them (``recovered``) and their futures record an attempt.

Any thread may write (``send``, ``notify``, ``query``): writes never block (``NonBlockingWriter``), and
what the kernel does not take at once is queued for the link thread, which a pipe wakes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import zmq

from htex_ref.core.liveness import Due, SilenceWatch
from htex_ref.errors import BadStateException, CommandTimeout, ExecutorShutdown, InterchangeError, VersionMismatch
from htex_ref.framing import Frame, encode_parts
from htex_ref.protocol import (
    Kind,
    Notice,
    Query,
    ResultTuple,
    dump_json,
    encode_command,
    encode_notice,
    load_json_object,
    split_result_batches,
    split_results,
    unpack_request_id,
)
from htex_ref.streams import BIG_BUFFERS, NonBlockingWriter, StreamReader
from htex_ref.tasks import TaskTable

logger = logging.getLogger("htex_ref.link")

#: After a restart, how long the new interchange waits for worker pools to claim the outstanding tasks
#: before it runs the unclaimed ones again (capped at ``heartbeat_threshold``; it ends sooner once as
#: many pools as were last seen have registered). Pools notice a dead interchange at once (the TCP
#: connection is reset) and reconnect every 0.1 s, so they are back within a second or two.
RECOVERY_WINDOW = 10.0


def select_readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has data (or end of stream) to read now."""
    return bool(select.select([sock], [], [], 0)[0])


class InterchangeLink:
    """See the module docstring."""

    def __init__(self, label: str, logdir: str, table: TaskTable, on_failure: Callable[[BaseException], None],
                 heartbeat_threshold: float, heartbeat_period: float, max_restarts: int = 0) -> None:
        self.label = label
        self.logdir = logdir
        self.table = table
        self.on_failure = on_failure
        #: Why the link itself failed (the interchange died, went silent or sent garbage); None while it works.
        self.broken: BaseException | None = None
        self.heartbeat_threshold = heartbeat_threshold
        self.heartbeat_period = heartbeat_period
        self.process: subprocess.Popen[bytes] | None = None
        #: Where ``monitor`` messages from the interchange go (the monitoring store's ``put``), if anywhere.
        self.monitor: Callable[[tuple[Any, ...]], None] | None = None
        #: What the interchange reported when ready: its worker port and pid.
        self.ready_info: dict[str, Any] = {}
        self.thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._send_lock = threading.Lock()
        self._replies: dict[int, Future[Any]] = {}
        self._request_ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._writer: NonBlockingWriter | None = None
        self._pidfd: int | None = None
        self._reader: StreamReader | None = None
        self._wake_r, self._wake_w = -1, -1
        #: ``time.monotonic()`` of the latest message given to the writer (``send``'s cork), under the send lock.
        self._last_send = 0.0
        self.closed = False
        #: Restarts left (0: a dead interchange fails the executor).
        self.restarts_left = max_restarts
        #: One dict per restart: when (epoch s), why, tasks re-sent, and once known, how long until the new
        #: interchange was ready and recovery ended (``gap_s``, ``recovered_s``) and what it found.
        self.restarts: list[dict[str, Any]] = []
        #: Worker pools registered when last asked: written only by the control thread, read once by the
        #: link thread at a restart (a plain int, so a stale read costs at most a longer recovery window);
        #: a restarted interchange ends recovery once as many have registered again.
        self.known_managers: int | None = None
        self._cfg: dict[str, Any] = {}
        self._argv: Sequence[str] | None = None
        self._start_timeout = 30.0
        #: ``time.monotonic()`` of the latest restart, until the new interchange reports ready.
        self._restarted_at: float | None = None
        #: Why the link killed the interchange (it went silent), for the restart record.
        self._kill_reason: str | None = None
        #: Notices sent (holds, ended blocks), kept only while restarts are possible.
        self._notices: list[list[bytes]] = []

    # ----------------------------------------------------------------------------------- start

    def start(self, cfg: dict[str, Any], timeout: float, argv: Sequence[str] | None = None) -> int:
        """Start the interchange (``argv``, default this Python with ``-m htex_ref.interchange``) with ``cfg``
        and the link thread; return its worker port once it is ready."""
        self._cfg, self._argv, self._start_timeout = cfg, argv, timeout
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._spawn(cfg)
        self.thread = threading.Thread(target=self._run, name=f"htex-{self.label}-link", daemon=True)
        self.thread.start()
        if not self._ready.wait(timeout):
            raise InterchangeError(f"the interchange did not report ready within {timeout} s; "
                                   f"see {self.logdir}/interchange.log and {self.logdir}/interchange.stderr")
        if self.table.failure is not None:
            raise InterchangeError(str(self.table.failure)) from self.table.failure
        return int(self.ready_info["worker_port"])

    def _spawn(self, cfg: dict[str, Any]) -> None:
        """Start an interchange process with ``cfg`` and make it this link's peer."""
        # The interchange is our child on this host, so a socketpair is its channel: private to the
        # two processes (no port, no encryption needed) and one wake-up per message instead of ZeroMQ's four.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        self._sock = ours
        self._writer = NonBlockingWriter(ours)
        stderr_path = os.path.join(self.logdir, "interchange.stderr")
        cfg = {**cfg, "executor_fd": theirs.fileno()}
        with open(stderr_path, "ab") as err:
            # A session of its own keeps terminal signals (Ctrl-C) away from it; it stops when our end
            # of the socketpair closes, that is when this process exits however it exits.
            try:
                self.process = subprocess.Popen(
                    list(self._argv) if self._argv else [sys.executable, "-m", "htex_ref.interchange"],
                    stdin=subprocess.PIPE, stdout=err, stderr=err, start_new_session=True, close_fds=True,
                    pass_fds=(theirs.fileno(),),
                )
            finally:
                theirs.close()
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(cfg).encode())
            self.process.stdin.close()
        except BrokenPipeError:
            # It exited before reading its configuration (a wrong interchange_launch_cmd, a crash at start).
            code = self.process.wait()
            raise InterchangeError(f"the interchange process exited at once with code {code}, before reading its "
                                   f"configuration; see {stderr_path}") from None
        self._pidfd = os.pidfd_open(self.process.pid)

    # ---------------------------------------------------------------------------------- writing

    #: A message that follows another by less than this is queued for the link thread rather than sent at
    #: once (a cork): a thread submitting as fast as it can then hands the interchange tens of tasks per
    #: system call instead of one, so the interchange reads them in one pass and hands them out in one
    #: message per manager, and their results come back in batches. A message after a pause (a single
    #: task, the first of a burst) still goes out at once.
    CORK_S = 0.0005

    def send(self, frames: list[bytes] | list[Frame]) -> None:
        """Queue a message for the interchange. Never blocks; any thread."""
        with self._send_lock:
            writer = self._writer
            if self.closed or writer is None:
                raise ExecutorShutdown(f"executor {self.label} is shutting down")
            was_pending = writer.pending
            now = time.monotonic()
            try:
                if not was_pending and now - self._last_send < self.CORK_S:
                    writer.queue_parts(encode_parts(frames))
                else:
                    writer.write_parts(encode_parts(frames))
            except OSError:
                if self.can_restart():
                    # The interchange is gone and will be restarted: a task's message is kept by the task
                    # table and sent to the new one; anything else (a cancel, a notice) is moot.
                    return
                raise
            self._last_send = now
            if writer.pending and not was_pending:
                # The link thread sends what is queued; it is woken once per batch, not per message.
                try:
                    os.write(self._wake_w, b"x")
                except BlockingIOError:
                    pass  # a wake-up is already queued

    def notify(self, notice: Notice, *args: Any) -> None:
        frames = encode_notice(notice, *args)
        if self.restarts_left:
            # Replayed to a restarted interchange: which blocks are held or have ended. Under the send lock,
            # which the link thread holds while it replays them (a notice replayed and then also sent is
            # harmless: both notices are idempotent).
            with self._send_lock:
                self._notices.append(frames)
        self.send(frames)

    def query(self, query: Query, *args: Any, timeout: float = 10.0) -> Any:
        """Ask the interchange and wait for its answer (``CommandTimeout`` after ``timeout`` seconds)."""
        if self.broken is not None:
            # The interchange cannot answer. In bad state for another reason (failed blocks) it still can:
            # what ran and where stays visible for the diagnosis.
            raise BadStateException(self.label, self.table.failure or self.broken)
        if self.closed or self._writer is None:
            raise RuntimeError(f"executor {self.label} is not running")
        request_id = next(self._request_ids)
        fut: Future[Any] = Future()
        self._replies[request_id] = fut
        try:
            self.send(encode_command(request_id, query, *args))
            try:
                return fut.result(timeout)
            except concurrent.futures.TimeoutError:
                raise CommandTimeout(f"the interchange did not answer {query.value!r} within {timeout} s") from None
        finally:
            self._replies.pop(request_id, None)

    def _note_restart(self, **facts: Any) -> None:
        # A new dict in place of the last one: other threads read these records (the executor's
        # ``interchange_restarts``) while only this thread writes, and a dict is never changed once shown.
        self.restarts[-1] = {**self.restarts[-1], **facts}

    def can_restart(self) -> bool:
        return self.restarts_left > 0 and not self.closed and self.table.failure is None

    def _fail(self, exc: BaseException) -> None:
        if self.broken is None:
            self.broken = exc
        self.on_failure(exc)

    def fail_queries(self, error: BaseException) -> None:
        """Fail every query in flight (the executor failed or is shutting down)."""
        for reply in list(self._replies.values()):
            if not reply.done():
                reply.set_exception(error)

    # ------------------------------------------------------------------------------ link thread

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:
            # The thread that resolves futures must not die silently: nobody else would resolve them.
            logger.exception("The link thread failed")
            if not self.closed:
                self._fail(InterchangeError(
                    f"the executor's link thread failed ({type(e).__name__}: {e}); see the log of {__name__}"))
                self._ready.set()

    def _loop(self) -> None:
        while self._serve():
            if not self._restart():
                return

    def _serve(self) -> bool:
        """Serve the current interchange until it ends; True when it died and is to be restarted."""
        assert self._sock is not None and self._writer is not None and self._pidfd is not None
        sock_fd = self._sock.fileno()
        reader = self._reader = StreamReader(self._sock)
        writer = self._writer
        poller = zmq.Poller()
        for fd in (sock_fd, self._pidfd, self._wake_r):
            poller.register(fd, zmq.POLLIN)
        writing = False
        watch = SilenceWatch(self.heartbeat_threshold, self.heartbeat_period, time.monotonic())
        while not self._stop.is_set():
            now = time.monotonic()
            self._watch(watch, now)
            if BIG_BUFFERS:
                BIG_BUFFERS.trim(now)
            if writer.pending != writing:
                writing = writer.pending
                poller.modify(sock_fd, zmq.POLLIN | (zmq.POLLOUT if writing else 0))
            socks = dict(poller.poll(100))
            flags = socks.get(sock_fd, 0)
            if self._wake_r in socks:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                if writer.pending:
                    flags |= zmq.POLLOUT  # queued by send (its cork): try now, not after another poll
            if flags & zmq.POLLOUT:
                with self._send_lock:
                    writer.flush()
            if flags & zmq.POLLIN:
                watch.heard(time.monotonic())
                if not self._read(reader):
                    return False
            if self._pidfd in socks:
                return self._interchange_exited()
        return False

    def _watch(self, watch: SilenceWatch, now: float) -> None:
        if not self.ready_info or self.table.failure is not None:
            # Before READY the start-up time-out applies; in bad state everything has failed.
            watch.suspend(now)
            if self._restarted_at is not None and now - self._restarted_at > self._start_timeout:
                self._restarted_at = None
                self._fail(InterchangeError(
                    f"the restarted interchange did not report ready within {self._start_timeout} s; "
                    f"see {self.logdir}/interchange.log and {self.logdir}/interchange.stderr"))
            return
        silent = watch.silent_for(now)
        due = watch.due(now)
        if due is Due.SILENT and self.can_restart():
            assert self.process is not None
            # A stopped or stuck interchange: killed, so that the pidfd brings the restart.
            logger.error("The interchange (pid %d) has not answered for %.1f s (heartbeat_threshold=%s s); "
                         "killing it to restart it", self.process.pid, silent, self.heartbeat_threshold)
            self._kill_reason = f"it did not answer for {silent:.1f} s and was killed"
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            watch.suspend(now)
        elif due is Due.SILENT:
            assert self.process is not None
            self._fail(InterchangeError(
                f"the interchange process (pid {self.process.pid}) has not answered for {silent:.1f} s "
                f"(heartbeat_threshold={self.heartbeat_threshold} s): it is stopped or stuck; "
                f"see {self.logdir}/interchange.log"))
        elif due is Due.PING and not self.closed:
            # No one waits for this reply: any message from the interchange counts.
            with contextlib.suppress(ExecutorShutdown):
                self.send(encode_command(next(self._request_ids), Query.PING))

    def _read(self, reader: StreamReader) -> bool:
        """Handle what the interchange sent; False when the stream is corrupt (the executor has failed)."""
        try:
            messages = reader.read_available()
        except Exception as e:
            # Our own child wrote something we cannot parse: nothing after it can be trusted.
            self._fail(InterchangeError(f"corrupt message stream from the interchange ({type(e).__name__}: "
                                             f"{e}); see {self.logdir}/interchange.log"))
            return False
        # The results of consecutive result messages are resolved together (one pass over the futures, one
        # monitoring record), before any other message, so that a reply or notice still follows the
        # results the interchange sent before it.
        results: list[ResultTuple] = []
        try:
            for frames in messages:
                kind = frames[0]
                if kind == Kind.RESULT_BATCHES:
                    results.extend(split_result_batches(frames))
                elif kind == Kind.RESULTS:
                    results.extend(split_results(frames))
                else:
                    if results:
                        resolved, results = results, []
                        self.table.resolve(resolved)
                    self._control_message(frames)
            if results:
                resolved, results = results, []
                self.table.resolve(resolved)
        except Exception as e:
            # Results in it would never resolve: fail loudly rather than leave them waiting. Those decoded
            # before it are good: resolved first.
            logger.exception("Undecodable message from the interchange")
            if results:
                with contextlib.suppress(Exception):
                    self.table.resolve(results)
            self._fail(InterchangeError(f"undecodable message from the interchange ({type(e).__name__}: "
                                             f"{e}); see {self.logdir}/interchange.log"))
            return False
        return True

    def _control_message(self, frames: list[Frame]) -> None:
        kind = frames[0]
        if kind == Kind.REPLY:
            fut = self._replies.pop(unpack_request_id(frames[1]), None)
            body = load_json_object(frames[2])
            if fut is None or fut.done():
                return
            if "error" in body:
                fut.set_exception(InterchangeError(f"the interchange refused a query: {body['error']}"))
            else:
                fut.set_result(body.get("ok"))
        elif kind == Kind.MONITOR:
            if self.monitor is not None:
                self.monitor(("ix", bytes(frames[1])))
        elif kind == Kind.POOL_REPORT and len(frames) == 4:
            if self.monitor is not None:
                self.monitor(("pool", bytes(frames[1]).decode(errors="replace"), bytes(frames[2]), bytes(frames[3])))
        elif kind == Kind.READY:
            self.ready_info = load_json_object(frames[1])
            if self._restarted_at is not None:
                gap = time.monotonic() - self._restarted_at
                self._restarted_at = None
                self._note_restart(gap_s=round(gap, 3))
                logger.warning("The restarted interchange (pid %s) is ready after %.2f s", self.ready_info.get("pid"),
                               gap)
            self._ready.set()
        elif kind == Kind.RECOVERED:
            body = load_json_object(frames[1])
            requeued = [int(t) for t in body.get("requeued", [])]
            if self.restarts:
                self._note_restart(requeued=len(requeued), adopted=body.get("adopted"), managers=body.get("managers"),
                                   recovered_s=round(time.monotonic() - self.restarts[-1]["_t0"], 3))
            logger.warning("Recovery after the interchange restart: %s tasks claimed by %s worker pools, %d "
                           "sent again", body.get("adopted"), body.get("managers"), len(requeued))
            self.table.requeued_after_restart(requeued)
        elif kind == Kind.FATAL:
            body = load_json_object(frames[1])
            exc: BaseException
            if body.get("kind") == "version_mismatch":
                exc = VersionMismatch(str(body.get("manager")), str(body.get("interchange")))
            else:
                exc = InterchangeError(str(body.get("message")))
            self._fail(exc)
        else:
            logger.warning("Ignoring message of unknown kind %r from the interchange", bytes(kind[:32]))

    def _interchange_exited(self) -> bool:
        """The interchange process ended: True when it is to be restarted, else the executor fails."""
        assert self.process is not None
        code = self.process.wait()
        if self.closed:
            return False
        if self.can_restart():
            why = self._kill_reason or f"it exited with code {code}"
            self._kill_reason = None
            logger.error("The interchange process (pid %d) ended: %s; restarting it (%d restarts left)",
                         self.process.pid, why, self.restarts_left - 1)
            self.restarts.append({"at": time.time(), "cause": why, "_t0": time.monotonic()})
            return True
        stderr = ""
        with contextlib.suppress(OSError):
            stderr = Path(self.logdir, "interchange.stderr").read_text(errors="replace")[-2000:]
        exc = InterchangeError(
            f"the interchange process (pid {self.process.pid}) exited unexpectedly with code {code}; "
            f"see {self.logdir}/interchange.log" + (f"; its stderr ends with:\n{stderr}" if stderr else "")
        )
        logger.error("%s", exc)
        self._fail(exc)
        self._ready.set()
        return False

    def _restart(self) -> bool:
        """Start a new interchange in place of the dead one (see the module docstring); False if that failed
        (the executor has failed then)."""
        assert self._sock is not None and self._reader is not None and self._pidfd is not None
        # What the dead interchange wrote is still in our end of the socketpair: results first.
        reader = self._reader
        while not reader.closed:
            if not self._read(reader):
                return False
            if not reader.closed and not select_readable(self._sock):
                break
        self.restarts_left -= 1
        self.fail_queries(InterchangeError("the interchange restarted before it answered"))
        cfg = dict(self._cfg)
        if self.ready_info.get("worker_port"):
            cfg["worker_port"] = self.ready_info["worker_port"]  # the pools reconnect to the same port
        window = min(RECOVERY_WINDOW, self.heartbeat_threshold)
        try:
            with self.table.frozen() as outstanding, self._send_lock:
                os.close(self._pidfd)
                self._pidfd = None
                self._sock.close()
                self.ready_info = {}
                self._restarted_at = time.monotonic()
                self._spawn(cfg)
                writer = self._writer
                assert writer is not None
                for notice in self._notices:
                    writer.write_parts(encode_parts(notice))
                for frames in outstanding:
                    writer.write_parts(encode_parts([Kind.RECOVER_TASK, *frames[1:]]))
                writer.write_parts(encode_parts([Kind.RECOVER, dump_json({"window": window,
                                                                          "managers": self.known_managers})]))
                self._note_restart(resent=len(outstanding))
        except Exception as e:
            logger.exception("Could not restart the interchange")
            self._fail(InterchangeError(f"the interchange died and could not be restarted: {e}; "
                                        f"see {self.logdir}/interchange.log"))
            self._ready.set()
            return False
        logger.warning("Started a new interchange (pid %d) on port %s; sent it %d outstanding tasks to recover",
                       self.process.pid if self.process else -1, cfg.get("worker_port"), len(outstanding))
        return True

    # ------------------------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop the interchange (``stop``, then SIGTERM after 2 s, SIGKILL after 1 more) and the link thread."""
        self.closed = True
        self.fail_queries(ExecutorShutdown(f"executor {self.label} is shutting down"))
        proc = self.process
        if proc is not None and proc.poll() is None and self._writer is not None:
            with contextlib.suppress(OSError), self._send_lock:
                self._writer.write_parts(encode_parts([Kind.STOP]))
                os.write(self._wake_w, b"x")
            for wait in (2.0, 1.0):
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    if wait == 2.0:
                        proc.terminate()
                        # A stopped interchange would leave SIGTERM pending until SIGKILL.
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(proc.pid, signal.SIGCONT)
                    else:
                        proc.kill()
                        proc.wait()
        self._stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(5)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
