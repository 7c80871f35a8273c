"""The interchange process: a thin ZeroMQ runtime around ``htex_ref.core.interchange.InterchangeState``.

Data flow::

      user process                 interchange process               worker pool (one per node)
    +-------------------+        +----------------------+         +--------------------------------+
    | Executor.submit() |--task->| socket-   ROUTER     |--tasks->| Manager (DEALER)               |
    |   TaskTable       |        | pair  InterchangeState<-result-|   ManagerState                 |
    | link thread       |<-result| (unix)    (pure)     |<--hb--->|   socketpair per worker 0..n-1 |
    | control thread    |-notice>|                      |         |                                |
    +-------------------+        +----------------------+         +--------------------------------+
      queries, replies and notices share the socketpair   (TCP, CurveZMQ)   one process per worker

1. The executor (in the user's process) serializes each call, records a future under a new task id in
   its ``TaskTable`` and writes ``task | header | function | arguments`` to the interchange. Its link
   thread receives batches of results, resolves futures, and watches the interchange process; if it
   dies or falls silent, every outstanding future fails at once. Its control thread asks the interchange
   about blocks (``blocks``) and tells it when to hold a block or that one ended (notices, no reply).
2. The interchange (this module, started by fork+exec) keeps the priority queue and the table of
   managers. It forwards task frames without opening them, to managers with free capacity
   (workers + prefetch), in batches. It forwards results in batches, expires managers whose heartbeats
   stop (failing their tasks with ``ManagerLost``), applies holds and ended blocks, and answers queries.
3. A manager (``htex_ref.worker_pool``, started on each node by a provider's launcher) probes the
   interchange addresses, registers (protocol and Python versions are checked here), starts one
   process per worker, hands each idle worker one task at a time (lowest priority value first),
   batches results back, heartbeats, replaces dead workers (their task fails with ``WorkerLost``) and
   exits when the interchange goes silent or tells it to.
4. A worker (``htex_ref.worker``) deserializes the function and arguments, runs the call, and returns
   the pickled value or the exception with its traceback.

Every decision lives in the pure cores; this module only moves frames and reads the clock. The
executor's messages are decoded by ``htex_ref.protocol`` (one decoder for queries, one for notices).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

import zmq

from htex_ref.core.interchange import (
    AcceptRegistration,
    AckResults,
    BlockCancelled,
    CancelOnManager,
    CancelTasks,
    DropOnManager,
    ForwardResults,
    HoldBlock,
    HoldManager,
    InterchangeState,
    ManagerChanged,
    ManagerGoodbye,
    ManagerHeartbeat,
    ManagerRegistered,
    QueuedTask,
    Recovered,
    RecoverTask,
    RecoveryStart,
    RegisterAgain,
    RejectRegistration,
    ReplyHeartbeat,
    ResultsReceived,
    SendTasks,
    ShutdownAll,
    StopManager,
    TaskSubmitted,
)
from htex_ref.core.notes import Note
from htex_ref.core.selectors import CustomSelector, ManagerSelector, selector_from_name
from htex_ref.errors import ProtocolError
from htex_ref.framing import MAX_FRAMES, Frame, encode_joined, encode_parts
from htex_ref.netutil import Contexts, recv_message, send_message, tcp_url
from htex_ref.protocol import (
    MAX_CANCEL_IDS,
    MAX_TASK_IDS,
    BadCommand,
    Command,
    Kind,
    Notice,
    Query,
    Registration,
    decode_command,
    decode_notice,
    dump_json,
    join_results,
    join_tasks,
    load_json_object,
    pack_cancel,
    pack_ids,
    pack_request_id,
    split_results,
    unpack_cancel,
    unpack_task_header,
)
from htex_ref.streams import BIG_BUFFERS, NonBlockingWriter, StreamReader
from htex_ref.version import PROTOCOL_VERSION, PYTHON_VERSION, __version__

logger = logging.getLogger("htex_ref.interchange")


#: Results made here (lost with their manager) per message to the executor: its frame limit, two frames each.
RESULTS_PER_MESSAGE = MAX_FRAMES // 2
#: Result batches per ``result_batches`` message to the executor. Each is a buffer of its own in the one
#: ``sendmsg`` that writes the message (with the head and the kind), and the kernel takes at most 1,024
#: (IOV_MAX; more fail with EMSGSIZE), well below the message's frame limit.
BATCHES_PER_MESSAGE = 1000
#: Messages drained from one socket per loop pass, so one busy peer cannot starve the others.
DRAIN_LIMIT = 2000
#: With monitoring: seconds between monitor messages to the executor, and between queue snapshots.
MONITOR_PERIOD = 0.25
SNAPSHOT_PERIOD = 1.0
#: ... and at least one second per this many managers between snapshots: a snapshot lists every manager,
#: and 10,000 of them every second (3 MB of JSON, parsed and stored by the executor's monitoring thread)
#: starved the executor's link thread until its queries to this process timed out.
SNAPSHOT_MANAGERS_PER_S = 1000


#: The cyclic garbage collector's thresholds in this process (Python's default: 700, 10, 10). Its heap is
#: the queued tasks and the managers' records, hundreds of thousands of long-lived objects that the default
#: thresholds had it scan over and over: 0.48 s of collections (0.32 s of them full ones) in one run of
#: the 10,000-manager benchmark, 0.07 s with these; the interchange's CPU in that run's throughput window
#: fell from 1.35 s to 0.93 s. What it holds is acyclic and freed by reference counting; the collector only
#: has the rare cycle to find, and finds it later.
GC_THRESHOLDS = (50_000, 20, 100)


#: Listen backlog of the managers' port (the kernel caps it at net.core.somaxconn): ZeroMQ's default of
#: 100 drops connections when a large block's pools start together, and each dropped one waits 1 s, then
#: 3 s, ... for the kernel's next SYN retry.
LISTEN_BACKLOG = 65535


def raise_fd_limit() -> int:
    """Raise this process' soft limit on open files to its hard limit: every manager's connection is a
    descriptor, and a soft limit of 1,024 (a common default) would refuse the 1,000th node. Returns the
    soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def _selector(cfg: dict[str, Any]) -> ManagerSelector:
    pickled = cfg.get("manager_selector_pickle")
    if pickled:
        import base64

        import cloudpickle

        return CustomSelector(cloudpickle.loads(base64.b64decode(pickled)))
    return selector_from_name(cfg.get("manager_selector", "random"))


class Interchange:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.contexts = Contexts(cfg.get("cert_dir"))
        # The executor is our parent on this host: a socketpair it made is our private channel.
        self.exec_sock = socket.socket(fileno=int(cfg["executor_fd"]))
        self.exec_sock.setblocking(False)
        self.exec_reader = StreamReader(self.exec_sock)
        self.exec_writer = NonBlockingWriter(self.exec_sock)
        self.router = self.contexts.socket(zmq.ROUTER, server=True)
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.router.setsockopt(zmq.RCVHWM, 0)
        # A pool whose connection dropped and came back may reconnect before this side has noticed the
        # old connection's end: the new connection takes over its identity instead of being ignored.
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.router.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
        self.worker_port = self._bind_router()
        self.state = InterchangeState(
            heartbeat_threshold=float(cfg["heartbeat_threshold"]),
            selector=_selector(cfg),
            check_python_version=bool(cfg.get("check_python_version", True)),
            auto_prefetch=bool(cfg.get("auto_prefetch", False)),
        )
        self.poll_ms = max(1, int(cfg.get("poll_period", 10)))
        # The registration answer carries the pools' task-control settings (whatever their launch command).
        #: Seconds between the pools' samples of their workers, when the executor monitors (None: it does not).
        self.monitoring: float | None = cfg.get("monitoring")
        self._probe_ok = str(PROTOCOL_VERSION).encode()
        self.registered_body = dump_json({
            "interchange_version": __version__,
            "kill_grace": float(cfg.get("task_kill_grace", 2.0)),
            "enforce_memory": bool(cfg.get("enforce_memory", False)),
            "monitoring": self.monitoring,
            "reconnect_timeout": cfg.get("reconnect_timeout"),
            "max_payload_bytes": cfg.get("max_payload_bytes"),
        })
        # Rule 9 of the core: acknowledgements wait until the executor has the results they cover. Each
        # entry is (the executor writer's byte count once those results were written, {manager: ids}).
        self._acks: list[tuple[int, dict[bytes, list[int]]]] = []
        # Monitoring records gathered for the executor, sent at most every MONITOR_PERIOD seconds.
        self._mon: dict[str, list[Any]] = {"dispatch": [], "managers": []}
        self._mon_sent = 0.0
        self._snapshot_sent = 0.0
        self.running = True
        self.stop_requested = ""
        self.bad_frames = 0
        # Queries are answered after the events read with them are applied, so a reply reflects
        # every task, hold and notice that the executor sent before it.
        self._commands: list[Command] = []

    def _bind_router(self) -> int:
        address = self.cfg.get("address") or "*"
        port = self.cfg.get("worker_port")
        if port:
            self.router.bind(tcp_url(address, port))
            return int(port)
        lo, hi = self.cfg.get("worker_port_range", (54000, 55000))
        base = tcp_url(address, "0")[: -len(":0")]
        return int(self.router.bind_to_random_port(base, min_port=lo, max_port=hi, max_tries=200))

    # ------------------------------------------------------------------------------------ loop

    def to_exec(self, frames: list[bytes] | list[Frame]) -> None:
        self.to_exec_parts(encode_parts(frames))

    def to_exec_parts(self, parts: list[Any]) -> None:
        try:
            self.exec_writer.write_parts(parts)
        except OSError as e:
            logger.error("The executor channel is broken (%s); shutting down", e)
            self.stop_requested = "the executor went away"

    def run(self) -> None:
        self.to_exec([Kind.READY, dump_json({"worker_port": self.worker_port, "pid": os.getpid()})])
        logger.info("Interchange %s (protocol %d) listening for managers on port %d",
                    __version__, PROTOCOL_VERSION, self.worker_port)
        poller = zmq.Poller()
        exec_fd = self.exec_sock.fileno()
        poller.register(exec_fd, zmq.POLLIN)
        poller.register(self.router, zmq.POLLIN)
        clock = time.monotonic
        started = clock()
        writing = False
        while self.running:
            if self.exec_writer.pending != writing:
                writing = self.exec_writer.pending
                poller.modify(exec_fd, zmq.POLLIN | (zmq.POLLOUT if writing else 0))
            deadline = self.state.next_deadline()
            timeout = self.poll_ms
            if deadline is not None:
                timeout = min(timeout, max(0, int((deadline - clock()) * 1000) + 1))
            socks = dict(poller.poll(timeout))
            events: list[Any] = []
            if self.stop_requested:
                events.append(ShutdownAll(self.stop_requested))
                self.running = False
            flags = socks.get(exec_fd, 0)
            if flags & zmq.POLLOUT:
                self.exec_writer.flush()
            if flags & zmq.POLLIN:
                self._read_executor(events)
            if self.router in socks:
                self._read_managers(events)
            now = clock()
            self._execute(self.state.handle(*events, now=now))
            if BIG_BUFFERS:
                BIG_BUFFERS.trim(now)  # maps of big messages no longer coming (streams.BigBuffers)
            if self._acks:
                self._send_acks()
            if self.monitoring is not None:
                self._send_monitoring(clock())
            if self._commands:
                commands, self._commands = self._commands, []
                for command in commands:
                    self._reply(command)
        logger.info("Interchange dispatched %d tasks in %.1f s", self.state.tasks_dispatched, clock() - started)

    def _read_executor(self, events: list[Any]) -> None:
        try:
            messages = self.exec_reader.read_available()
        except ProtocolError as e:
            # The stream from our own parent is corrupt: nothing after this point can be trusted.
            logger.error("Corrupt stream from the executor: %s", e)
            messages, self.exec_reader.closed = [], True
        if self.exec_reader.closed:
            logger.info("The executor closed its channel; shutting down")
            events.append(ShutdownAll("the executor went away"))
            self.running = False
        for frames in messages:
            kind = frames[0]
            try:
                if kind == Kind.TASK and len(frames) == 4:
                    task_id, priority = unpack_task_header(frames[1])
                    events.append(TaskSubmitted(QueuedTask(task_id, priority, (frames[1], frames[2], frames[3]))))
                elif kind == Kind.RECOVER_TASK and len(frames) == 4:
                    task_id, priority = unpack_task_header(frames[1])
                    events.append(RecoverTask(QueuedTask(task_id, priority, (frames[1], frames[2], frames[3]))))
                elif kind == Kind.RECOVER and len(frames) == 2:
                    body = load_json_object(frames[1])
                    window, managers = body.get("window"), body.get("managers")
                    if not isinstance(window, int | float) or not (managers is None or isinstance(managers, int)):
                        raise ProtocolError(f"bad recover body {body!r:.200}")
                    events.append(RecoveryStart(float(window), managers))
                elif kind == Kind.CANCEL and len(frames) == 2:
                    task_ids, kill = unpack_cancel(frames[1])
                    last = events[-1] if events else None
                    if isinstance(last, CancelTasks) and last.kill_running == kill:
                        # Cancels read together are applied together: one pass over the queue.
                        events[-1] = CancelTasks(last.task_ids + task_ids, kill)
                    else:
                        events.append(CancelTasks(task_ids, kill))
                elif kind == Kind.CMD:
                    command = decode_command(frames)
                    if command.query is Query.HOLD_MANAGER:
                        events.append(HoldManager(command.args[0].encode()))
                    self._commands.append(command)
                elif kind == Kind.NOTICE:
                    notice = decode_notice(frames)
                    if notice.notice is Notice.HOLD_BLOCK:
                        events.append(HoldBlock(notice.args[0]))
                    else:
                        events.append(BlockCancelled(notice.args[0], notice.args[1]))
                elif kind == Kind.STOP:
                    events.append(ShutdownAll("the executor shut down"))
                    self.running = False
                else:
                    raise ProtocolError(f"unknown message kind {kind[:32]!r} with {len(frames)} frames")
            except BadCommand as e:
                self._bad_frame("executor", e)
                self.to_exec([Kind.REPLY, pack_request_id(e.request_id), dump_json({"error": str(e)})])
            except ProtocolError as e:
                self._bad_frame("executor", e)

    def _read_managers(self, events: list[Any]) -> None:
        sock = self.router
        for _ in range(DRAIN_LIMIT):
            try:
                frames = recv_message(sock)
            except zmq.Again:
                return
            if len(frames) < 2:
                self._bad_frame("manager", ProtocolError("empty message"))
                continue
            mid, kind = frames[0], frames[1]
            try:
                if kind == Kind.RESULTS:
                    events.append(ResultsReceived(mid, split_results(frames, 2), raw=frames[2]))
                elif kind == Kind.RESULTS_SPLIT and len(frames) > 3:
                    # Forwarded as the one batch frame it stands for, without joining the parts.
                    events.append(ResultsReceived(mid, split_results(frames, 2), raw=frames[2:]))
                elif kind == Kind.HEARTBEAT:
                    events.append(ManagerHeartbeat(mid))
                elif kind == Kind.PROBE:
                    send_message(sock, [mid, Kind.PROBE_OK, self._probe_ok])
                elif kind == Kind.REGISTER and len(frames) == 3:
                    events.append(ManagerRegistered(mid, Registration.decode(frames[2])))
                elif kind == Kind.MONITOR and len(frames) == 4:
                    if self.monitoring is not None:
                        # Forwarded unopened: the executor's monitoring thread reads and checks it.
                        self.to_exec([Kind.POOL_REPORT, mid, frames[2], frames[3]])
                elif kind == Kind.BYE and len(frames) == 3:
                    reason = load_json_object(frames[2]).get("reason", "")
                    events.append(ManagerGoodbye(mid, str(reason)))
                else:
                    raise ProtocolError(f"unknown message kind {kind[:32]!r} with {len(frames)} frames")
            except ProtocolError as e:
                self._bad_frame(f"manager {mid[:64]!r}", e)

    def _send_monitoring(self, now: float) -> None:
        if now - self._mon_sent < MONITOR_PERIOD:
            return
        self._mon_sent = now
        message: dict[str, Any] = {k: v for k, v in self._mon.items() if v}
        if now - self._snapshot_sent >= max(SNAPSHOT_PERIOD, len(self.state.managers) / SNAPSHOT_MANAGERS_PER_S):
            self._snapshot_sent = now
            message["snapshot"] = {
                "t": time.time(), "in_flight": self.state.in_flight_count,
                "pending": {("none" if p == float("inf") else repr(p)): n
                            for p, n in self.state.pending_by_priority().items()},
                "managers": self.state.managers_snapshot(now),
            }
        if message:
            self.to_exec([Kind.MONITOR, dump_json(message)])
            self._mon = {"dispatch": [], "managers": []}

    def _bad_frame(self, source: str, err: Exception) -> None:
        self.bad_frames += 1
        # Logged at warning for the first few, then every 1000th, so a flood cannot fill the disk.
        if self.bad_frames <= 20 or self.bad_frames % 1000 == 0:
            logger.warning("Dropped malformed message from %s (%d so far): %s", source, self.bad_frames, err)

    def _reply(self, command: Command) -> None:
        value = self._answers[command.query](self, command.args, time.monotonic())
        self.to_exec([Kind.REPLY, pack_request_id(command.request_id), dump_json({"ok": value})])

    def _managers(self, args: tuple[Any, ...], now: float) -> Any:
        return self.state.managers_snapshot(now)

    def _blocks(self, args: tuple[Any, ...], now: float) -> Any:
        return {"registered": self.state.connected_blocks(),
                "loads": {b: dataclasses.asdict(load) for b, load in self.state.block_loads(now).items()}}

    def _connected_blocks(self, args: tuple[Any, ...], now: float) -> Any:
        return self.state.connected_blocks()

    def _stats(self, args: tuple[Any, ...], now: float) -> Any:
        return {
            "pending": self.state.pending_count,
            "in_flight": self.state.in_flight_count,
            "dispatched": self.state.tasks_dispatched,
            "managers": len(self.state.managers),
            "bad_frames": self.bad_frames,
            # CLOCK_MONOTONIC is shared by the processes of one host, so the executor can compare.
            "last_dispatch_at": self.state.last_dispatch_at,
        }

    def _ping(self, args: tuple[Any, ...], now: float) -> Any:
        return "pong"

    def _held(self, args: tuple[Any, ...], now: float) -> Any:
        # The HoldManager event read with this query has been applied already.
        rec = self.state.managers.get(args[0].encode())
        return rec is not None and not rec.active

    _answers: dict[Query, Any] = {
        Query.MANAGERS: _managers,
        Query.BLOCKS: _blocks,
        Query.CONNECTED_BLOCKS: _connected_blocks,
        Query.STATS: _stats,
        Query.PING: _ping,
        Query.HOLD_MANAGER: _held,
    }

    # ------------------------------------------------------------------------------ instructions

    def _execute(self, instructions: list[Any]) -> None:
        router = self.router
        acks: dict[bytes, list[int]] | None = None
        for ins in instructions:
            # Compared by type, not isinstance (no instruction is subclassed): a pass can carry tens of
            # thousands of instructions, and the chain below was a visible share of the loop.
            t = type(ins)
            if t is SendTasks:
                if self.monitoring is not None:
                    # Stamped before the send: the pool may stamp the task's start before this thread runs on.
                    self._mon["dispatch"].append([time.time(), ins.manager_id.decode(errors="replace"),
                                                  [t.task_id for t in ins.tasks]])
                send_message(router, [ins.manager_id, *join_tasks([t.frames for t in ins.tasks])], copy=False)
            elif t is ForwardResults:
                # The batches of this pass go in one message (the executor's cost is per message, and
                # many small batches from many managers are the common case at scale); a split batch
                # goes on its own, written from its parts.
                batches: list[Any] = []
                for raw in ins.raw:
                    if isinstance(raw, list):
                        self.to_exec_parts(encode_joined(Kind.RESULTS, raw))
                    else:
                        batches.append(raw)
                if len(batches) == 1:
                    self.to_exec([Kind.RESULTS, batches[0]])
                else:
                    for i in range(0, len(batches), BATCHES_PER_MESSAGE):
                        self.to_exec([Kind.RESULT_BATCHES, *batches[i : i + BATCHES_PER_MESSAGE]])
                # At most MAX_FRAMES frames a message, two per result: a big block lost at once fails
                # more tasks than one message may carry.
                for i in range(0, len(ins.results), RESULTS_PER_MESSAGE):
                    msg = join_results(ins.results[i : i + RESULTS_PER_MESSAGE])
                    if msg[0] == Kind.RESULTS_SPLIT:  # the executor reads one batch frame
                        self.to_exec_parts(encode_joined(Kind.RESULTS, msg[1:]))
                    else:
                        self.to_exec(msg)
            elif t is ReplyHeartbeat:
                send_message(router, [ins.manager_id, Kind.HEARTBEAT])
            elif t is AcceptRegistration:
                send_message(router, [ins.manager_id, Kind.REGISTERED, self.registered_body])
            elif t is RejectRegistration:
                send_message(router, [ins.manager_id, Kind.REJECTED, dump_json({"reason": ins.reason})])
                if ins.mismatch is not None:
                    fatal = {"kind": "version_mismatch", "manager": ins.mismatch[0],
                             "interchange": ins.mismatch[1], "message": ins.reason}
                    self.to_exec([Kind.FATAL, dump_json(fatal)])
            elif t is CancelOnManager:
                for i in range(0, len(ins.task_ids), MAX_CANCEL_IDS):
                    body = pack_cancel(ins.task_ids[i:i + MAX_CANCEL_IDS], ins.kill_running)
                    send_message(router, [ins.manager_id, Kind.CANCEL, body])
            elif t is AckResults:
                if acks is None:
                    acks = {}
                acks.setdefault(ins.manager_id, []).extend(ins.task_ids)
            elif t is StopManager:
                send_message(router, [ins.manager_id, Kind.SHUTDOWN, dump_json({"reason": ins.reason})])
            elif t is DropOnManager:
                for i in range(0, len(ins.task_ids), MAX_TASK_IDS):
                    send_message(router, [ins.manager_id, Kind.DROP, pack_ids(ins.task_ids[i:i + MAX_TASK_IDS])])
            elif t is RegisterAgain:
                send_message(router, [ins.manager_id, Kind.REGISTER_AGAIN, dump_json({"reason": ins.reason})])
            elif t is Recovered:
                self.to_exec([Kind.RECOVERED, dump_json({"requeued": ins.requeued, "adopted": ins.adopted,
                                                         "managers": ins.managers})])
            elif t is ManagerChanged:
                if self.monitoring is not None:
                    self._mon["managers"].append([ins.uid, ins.block_id, ins.host, ins.workers, time.time(),
                                                  ins.event, ins.detail])
            elif t is Note:
                logger.log(ins.level, "%s", ins.text)
        if acks is not None:
            self._ack_later(acks)

    def _ack_later(self, acks: dict[bytes, list[int]]) -> None:
        # Stamped after this pass's forwards were written: once the kernel has taken that many bytes,
        # the executor's end of the socketpair holds the results, and they survive this process.
        self._acks.append((self.exec_writer.written, acks))

    def _send_acks(self) -> None:
        """Acknowledge to the managers the results the executor's end of the socketpair now holds."""
        writer = self.exec_writer
        done = writer.written - writer.unsent
        router = self.router
        while self._acks and self._acks[0][0] <= done:
            for mid, ids in self._acks.pop(0)[1].items():
                for i in range(0, len(ids), MAX_TASK_IDS):
                    send_message(router, [mid, Kind.ACK, pack_ids(ids[i:i + MAX_TASK_IDS])])

    def close(self) -> None:
        if self.monitoring is not None:
            self._mon_sent = self._snapshot_sent = -1e9
            self._send_monitoring(time.monotonic())
        # Let the shutdown notices to managers and the last results reach their peers.
        self.router.setsockopt(zmq.LINGER, 1000)
        self.router.close()
        # Best effort: hand the executor what is still queued, for at most a second.
        deadline = time.monotonic() + 1.0
        while self.exec_writer.pending and self.exec_writer.broken is None and time.monotonic() < deadline:
            self.exec_writer.flush()
            time.sleep(0.001)
        self.exec_sock.close()
        self.contexts.close()


def main() -> None:
    cfg = json.loads(sys.stdin.read())
    # No parent-death signal here: Linux sends it when the *thread* that started us exits, and the
    # executor may be started from a short-lived thread. The end of the executor's socketpair (its
    # process exited) is what stops us.
    logdir = cfg["logdir"]
    os.makedirs(logdir, exist_ok=True)
    logging.basicConfig(
        filename=os.path.join(logdir, "interchange.log"),
        level=logging.DEBUG if cfg.get("debug") else logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    logger.info("Starting interchange pid %d python %s, open files limit %d", os.getpid(), PYTHON_VERSION,
                raise_fd_limit())
    gc.set_threshold(*GC_THRESHOLDS)
    interchange = Interchange(cfg)

    def _term(signum: int, frame: Any) -> None:
        interchange.stop_requested = "the interchange received SIGTERM"

    signal.signal(signal.SIGTERM, _term)
    # For performance work: HTEX_INTERCHANGE_PROFILE=PATH writes a cProfile of the loop to PATH at exit.
    profile_path = os.environ.get("HTEX_INTERCHANGE_PROFILE")
    profiler = None
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        interchange.run()
    except Exception:
        logger.exception("Interchange crashed")
        raise
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{profile_path}.{os.getpid()}")
        interchange.close()


if __name__ == "__main__":
    main()
