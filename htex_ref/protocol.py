"""The wire protocol: typed messages, their frame layout, and decoders that reject anything malformed.

Every message is one ZeroMQ multipart message whose first frame names its kind. Control messages carry
one JSON body frame, checked field by field on arrival. The hot path (tasks and results) carries a small
fixed ``struct`` header per task and the opaque payload frames that only the worker and the executor
open: the interchange and the manager never unpickle user data, so a malformed payload can only fail
its own task.

Layouts (``|`` separates frames)::

    executor -> interchange   task | TaskHeader | function bytes | arguments bytes
                              cmd | request id (u64) | JSON {"op": Query, "args": [...]}
                              notice | JSON {"op": Notice, "args": [...]}
                              cancel | CancelBody
                              recover_task | TaskHeader | function bytes | arguments bytes
                              recover | JSON {"window": seconds, "managers": int}
                              stop
    interchange -> executor   ready | JSON {"worker_port": int, "pid": int}
                              results | batch(ResultHeader, payload, ResultHeader, payload, ...)
                              reply | request id | JSON {"ok": value} or {"error": str}
                              fatal | JSON {"kind": str, "message": str}
                              monitor | JSON {dispatch, managers, snapshot} (htex_ref.monitoring)
                              pool_report | manager id | the pool's two monitor frames, as they came
                              recovered | JSON {"requeued": [task id, ...], "adopted": int, "managers": int}
    manager -> interchange    probe | protocol version
                              register | JSON Registration
                              hb
                              results | batch(ResultHeader, payload, ...)
                              bye | JSON {"reason": str}
                              monitor | JSON {host, t, workers: [[worker, pid, cpu, rss]]} | JSON
                                        [[task id, worker, start, end], ...] (only when the executor monitors)
    interchange -> manager    probe_ok | protocol version
                              registered | JSON {"interchange_version": str}
                              rejected | JSON {"reason": str}
                              hb
                              tasks | batch(TaskHeader, function, arguments, TaskHeader, ...)
                              shutdown | JSON {"reason": str}
                              cancel | CancelBody
                              ack | TaskIds (results the executor has: the pool may forget them)
                              drop | TaskIds (tasks this pool must stop and never report)
                              register_again | JSON {"reason": str}
    manager -> worker         task | TaskHeader | function | arguments [| JSON {variable: value}]
                              stop
    worker -> manager         ready | JSON {"pid": int}
                              result | ResultHeader | payload

A TaskHeader is ``struct "<qd"`` (task id, priority), followed only for MPI tasks by their resource
specification as a JSON object, which the pool in MPI mode reads to place the task on nodes. The
optional last frame to a worker holds the variables that worker sets for that one task.

TaskIds is the ids as ``struct "<q"`` each. A ``register`` carries the ids of the tasks the pool holds
(queued, running, or finished with the result not yet acknowledged), so that after a lost connection
or a restarted interchange the pool's tasks are matched instead of lost (``htex_ref.core.interchange``).

A CancelBody is one byte (1: stop the tasks' workers if they are running, 0: only drop queued tasks)
followed by the task ids as ``struct "<q"`` each. The ``registered`` answer also carries the pool's
task-control settings (``kill_grace``, ``enforce_memory``), so that they reach a pool whatever its launch
command.

A ``batch(...)`` is one frame holding many (``htex_ref.framing.encode_body``): handing ZeroMQ one frame
per message instead of three per task is what keeps the interchange's cost per task low.

The executor's control vocabulary is two enums, each with one decoder: a ``Query`` (``cmd``) is answered
with a ``reply``; a ``Notice`` (``notice``: hold a block, a block ended) is not. Their arguments are
checked against ``QUERY_ARGS`` / ``NOTICE_ARGS`` on arrival.

There are no magic values inside the task stream: a heartbeat, a shutdown and a batch of tasks are
different kinds. A registration carries ``protocol_version``; a pool speaking another version, or a
Python of another minor release, is refused with a message that names both sides.
"""

from __future__ import annotations

import enum
import json
import math
import struct
from dataclasses import asdict, dataclass
from typing import Any

from htex_ref.errors import ProtocolError
from htex_ref.framing import (
    Chunked,
    Frame,
    decode_body,
    encode_body,
    encode_table,
    frame_table,
    lengths_table,
    piece_count,
    pieces,
    table_lengths,
)


class Kind:
    """Frame-0 tags. Plain bytes so that a decoder compares without allocating."""

    TASK = b"task"
    CMD = b"cmd"
    NOTICE = b"notice"
    STOP = b"stop"
    READY = b"ready"
    RESULTS = b"results"
    #: A ``results`` batch with a large payload, split like ``tasks_split`` (manager -> interchange).
    RESULTS_SPLIT = b"results_split"
    #: Several ``results`` batch bodies in one message, one frame each (interchange -> executor): the batches
    #: of one loop pass forwarded together, so the executor reads and resolves them as one message.
    RESULT_BATCHES = b"result_batches"
    RESULT = b"result"
    REPLY = b"reply"
    FATAL = b"fatal"
    PROBE = b"probe"
    PROBE_OK = b"probe_ok"
    REGISTER = b"register"
    REGISTERED = b"registered"
    REJECTED = b"rejected"
    HEARTBEAT = b"hb"
    BYE = b"bye"
    TASKS = b"tasks"
    #: A ``tasks`` batch with a large frame, split: the frame table, then each frame as its own part.
    TASKS_SPLIT = b"tasks_split"
    SHUTDOWN = b"shutdown"
    CANCEL = b"cancel"
    MONITOR = b"monitor"
    POOL_REPORT = b"pool_report"
    ACK = b"ack"
    DROP = b"drop"
    REGISTER_AGAIN = b"register_again"
    RECOVER_TASK = b"recover_task"
    RECOVER = b"recover"
    RECOVERED = b"recovered"


class Outcome(enum.IntEnum):
    """How a task ended; travels in every ResultHeader."""

    OK = 0  # payload: the pickled return value
    EXCEPTION = 1  # payload: a pickled htex_ref.serialize.ExceptionPackage
    WORKER_LOST = 2  # payload: JSON {"worker": rank, "host": str, "detail": str}
    MANAGER_LOST = 3  # payload: JSON {"manager": id, "host": str, "detail": str}
    REFUSED = 4  # payload: JSON {"host": str, "detail": str}: a pool that could never run the task
    #: The task ran past its ``walltime`` and its worker was stopped. Payload: JSON StopReport.
    TIMEOUT = 5
    #: The task was cancelled (dropped from a queue, or its worker stopped). Payload: JSON StopReport.
    CANCELLED = 6
    #: The task went over its worker's memory limit (or the kernel's OOM killer ended it). Payload: JSON
    #: {"worker", "host", "limit", "peak_rss", "detail"}.
    MEMORY_EXCEEDED = 7


_TASK_HEADER = struct.Struct("<qd")  # task id, priority (inf when none)
_RESULT_HEADER = struct.Struct("<qBd")  # task id, Outcome, seconds the call ran on the worker
_REQUEST_ID = struct.Struct("<Q")
TASK_FRAMES = 3  # header, function, arguments
RESULT_FRAMES = 2  # header, payload


_TASK_HEADER_SIZE = _TASK_HEADER.size
#: Longest resource specification a task header may carry.
MAX_TASK_SPEC = 4096


def pack_task_header(task_id: int, priority: float, spec: dict[str, Any] | None = None) -> bytes:
    """The fixed header, followed by the task's resource specification as JSON for MPI tasks only."""
    header = _TASK_HEADER.pack(task_id, priority)
    return header if spec is None else header + dump_json(spec)


def unpack_task_header(frame: Frame) -> tuple[int, float]:
    """(task id, priority); a header with a specification after it must carry a JSON object there."""
    size = len(frame)
    try:
        if size == _TASK_HEADER_SIZE:
            task_id, priority = _TASK_HEADER.unpack(frame)
        else:
            task_id, priority = _TASK_HEADER.unpack_from(frame)
    except struct.error as e:
        raise ProtocolError(f"bad task header ({size} bytes): {e}") from None
    if math.isnan(priority):
        raise ProtocolError("bad task header: priority is NaN")
    if size != _TASK_HEADER_SIZE:
        task_spec(frame)
    return task_id, priority


def task_spec(frame: Frame) -> dict[str, Any] | None:
    """The resource specification a task header carries (None: a plain task)."""
    size = len(frame)
    if size <= _TASK_HEADER_SIZE:
        return None
    if size > _TASK_HEADER_SIZE + MAX_TASK_SPEC:
        raise ProtocolError(f"bad task header: a specification of {size - _TASK_HEADER_SIZE} bytes")
    return load_json_object(memoryview(frame)[_TASK_HEADER_SIZE:])


def task_id_at(buf: bytes | memoryview, offset: int) -> int:
    """The task id of the task header that starts at ``offset`` in ``buf`` (no copy, no other checks)."""
    return int(_TASK_HEADER.unpack_from(buf, offset)[0])


_CANCEL_FLAG = struct.Struct("<B")
_TASK_ID = struct.Struct("<q")
#: Most task ids one cancel message carries (the sender splits longer lists).
MAX_CANCEL_IDS = 65536


def pack_cancel(task_ids: list[int] | tuple[int, ...], kill_running: bool) -> bytes:
    """A CancelBody: the flag byte, then the ids."""
    return _CANCEL_FLAG.pack(1 if kill_running else 0) + struct.pack(f"<{len(task_ids)}q", *task_ids)


def unpack_cancel(frame: Frame) -> tuple[tuple[int, ...], bool]:
    """(task ids, kill running) from a CancelBody; ``ProtocolError`` for any other layout."""
    size = len(frame)
    if size < 1 or (size - 1) % _TASK_ID.size or (size - 1) // _TASK_ID.size > MAX_CANCEL_IDS:
        raise ProtocolError(f"bad cancel body ({size} bytes)")
    flag = frame[0]
    if flag not in (0, 1):
        raise ProtocolError(f"bad cancel flag {flag}")
    count = (size - 1) // _TASK_ID.size
    return struct.unpack_from(f"<{count}q", frame, 1), flag == 1


#: Most task ids one ack, drop or registration carries (the sender splits longer lists).
MAX_TASK_IDS = 1 << 20


def pack_ids(task_ids: list[int] | tuple[int, ...]) -> bytes:
    """TaskIds: the ids as ``<q`` each."""
    return struct.pack(f"<{len(task_ids)}q", *task_ids)


def unpack_ids(frame: Frame) -> tuple[int, ...]:
    """The ids of a TaskIds frame; ``ProtocolError`` for any other layout."""
    size = len(frame)
    if size % _TASK_ID.size or size // _TASK_ID.size > MAX_TASK_IDS:
        raise ProtocolError(f"bad task id list ({size} bytes)")
    return struct.unpack_from(f"<{size // _TASK_ID.size}q", frame, 0)


def pack_result_header(task_id: int, outcome: Outcome, run_time: float = 0.0) -> bytes:
    return _RESULT_HEADER.pack(task_id, outcome, run_time)


def unpack_result_header(frame: Frame) -> tuple[int, Outcome, float]:
    try:
        task_id, code, run_time = _RESULT_HEADER.unpack(frame)
        if not math.isfinite(run_time) or run_time < 0:
            raise ValueError(f"run time {run_time}")
        return task_id, Outcome(code), run_time
    except (struct.error, ValueError) as e:
        raise ProtocolError(f"bad result header ({len(frame)} bytes): {e}") from None


def pack_request_id(request_id: int) -> bytes:
    return _REQUEST_ID.pack(request_id)


def unpack_request_id(frame: Frame) -> int:
    try:
        return int(_REQUEST_ID.unpack(frame)[0])
    except struct.error as e:
        raise ProtocolError(f"bad request id: {e}") from None


def dump_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def load_json_object(frame: bytes | memoryview) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(frame) if isinstance(frame, memoryview) else frame)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ProtocolError(f"body is not JSON: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"body is a JSON {type(obj).__name__}, expected an object")
    return obj


#: (task id, outcome, payload, seconds the call ran)
ResultTuple = tuple[int, Outcome, Frame, float]


_OUTCOMES = tuple(Outcome)
_RESULT_HEADER_SIZE = _RESULT_HEADER.size


#: A batch holding a frame at least this large travels split (``tasks_split``, ``results_split``): its frame
#: table, then each frame as a ZeroMQ part of its own, sent and received without copying, so that no
#: process joins a large payload into a batch. Smaller batches stay one frame: one part is cheaper.
BIG_FRAME = 1 << 18


def _split_batch(frames: list[bytes] | list[Frame], start: int, what: str) -> list[Any]:
    """The frames of a split batch (``frames[start]`` is its table, the parts follow, a frame larger than
    ``CHUNK`` in several: it comes back as a ``Chunked``); all or nothing."""
    lengths = table_lengths(frames[start])
    parts = frames[start + 1:]
    if len(parts) != sum(piece_count(n) for n in lengths):
        raise ProtocolError(f"split {what} batch: {len(parts)} parts do not match its table of {len(lengths)}")
    out: list[Any] = []
    i = 0
    for n in lengths:
        k = piece_count(n)
        if k == 1:
            if len(parts[i]) != n:
                raise ProtocolError(f"split {what} batch: a part of {len(parts[i])} bytes, its table says {n}")
            out.append(parts[i])
        else:
            chunk = Chunked(list(parts[i:i + k]))
            if len(chunk) != n:
                raise ProtocolError(f"split {what} batch: pieces of {len(chunk)} bytes, its table says {n}")
            out.append(chunk)
        i += k
    return out


def split_results(frames: list[bytes] | list[Frame], start: int = 1) -> list[ResultTuple]:
    """Decode the batch of ``header, payload`` pairs in ``frames[start]`` (or, split, in the table
    ``frames[start]`` and the parts after it); all or nothing.

    This runs for every result in the interchange and the executor, so it reads the headers straight
    out of the batch and hands payloads on as views into it, without copying them.
    """
    if len(frames) > start + 1:
        return _split_results(_split_batch(frames, start, "results"))
    if len(frames) != start + 1:
        raise ProtocolError(f"results message has {len(frames)} frames, expected {start + 1}")
    out: list[ResultTuple] = []
    _split_body(frames[start], out)
    return out


def split_result_batches(frames: list[bytes] | list[Frame], start: int = 1) -> list[ResultTuple]:
    """Decode a ``result_batches`` message: each of ``frames[start:]`` is one ``results`` batch body (as
    ``split_results`` reads it); their results in order, all or nothing."""
    if len(frames) <= start:
        raise ProtocolError("result_batches message without a batch")
    out: list[ResultTuple] = []
    for i in range(start, len(frames)):
        _split_body(frames[i], out)
    return out


def _split_body(body: Frame, out: list[ResultTuple]) -> None:
    """Append the results of one batch body to ``out``."""
    lengths, offset = frame_table(body)
    if not lengths or len(lengths) % RESULT_FRAMES:
        raise ProtocolError(f"results message has {len(lengths)} body frames, expected pairs")
    view = memoryview(body)
    unpack_from = _RESULT_HEADER.unpack_from
    outcomes = _OUTCOMES
    n_outcomes = len(outcomes)
    append = out.append
    for i in range(0, len(lengths), RESULT_FRAMES):
        if lengths[i] != _RESULT_HEADER_SIZE:
            raise ProtocolError(f"bad result header ({lengths[i]} bytes)")
        task_id, code, run_time = unpack_from(body, offset)
        # The chained comparison is False for NaN and for infinity.
        if code >= n_outcomes or not 0.0 <= run_time < math.inf:
            raise ProtocolError(f"bad result header: outcome {code}, run time {run_time}")
        offset += _RESULT_HEADER_SIZE
        end = offset + lengths[i + 1]
        append((task_id, outcomes[code], view[offset:end], run_time))
        offset = end


def _split_results(parts: list[Frame]) -> list[ResultTuple]:
    if not parts or len(parts) % RESULT_FRAMES:
        raise ProtocolError(f"results message has {len(parts)} body frames, expected pairs")
    out: list[ResultTuple] = []
    for i in range(0, len(parts), RESULT_FRAMES):
        task_id, outcome, run_time = unpack_result_header(parts[i])
        out.append((task_id, outcome, parts[i + 1], run_time))
    return out


def join_results(results: list[ResultTuple]) -> list[Frame]:
    """A ``results`` message, or ``results_split`` when a payload is ``BIG_FRAME`` bytes or more."""
    frames: list[Frame] = []
    big = False
    for task_id, outcome, payload, run_time in results:
        frames.append(pack_result_header(task_id, outcome, run_time))
        frames.append(payload)
        if len(payload) >= BIG_FRAME:
            big = True
    if big:
        return [Kind.RESULTS_SPLIT, encode_table(frames), *[p for f in frames for p in pieces(f)]]
    return [Kind.RESULTS, encode_body(frames)]


def join_tasks(tasks: list[tuple[Frame, ...]]) -> list[Frame]:
    """A ``tasks`` message from each task's (header, function, arguments) frames; ``tasks_split`` when a
    frame is ``BIG_FRAME`` bytes or more."""
    frames: list[Frame] = []
    for t in tasks:
        frames.extend(t)
    lengths = [len(f) for f in frames]
    head = lengths_table(lengths)
    if max(lengths) >= BIG_FRAME:
        return [Kind.TASKS_SPLIT, head, *[p for f in frames for p in pieces(f)]]
    return [Kind.TASKS, b"".join([head, *frames])]


def split_tasks(frames: list[bytes] | list[Frame]) -> list[tuple[int, float, tuple[Frame, Frame, Frame]]]:
    """Decode a ``tasks`` (or ``tasks_split``) message into (task id, priority, (header, function,
    arguments)); all or nothing."""
    if len(frames) > 2:
        body = _split_batch(frames, 1, "tasks")
    elif len(frames) != 2:
        raise ProtocolError(f"tasks message has {len(frames)} frames, expected 2")
    else:
        body = decode_body(frames[1], share=True)
    if not body or len(body) % TASK_FRAMES:
        raise ProtocolError(f"tasks batch has {len(body)} frames, expected triples")
    return [
        (*unpack_task_header(body[i]), (body[i], body[i + 1], body[i + 2])) for i in range(0, len(body), TASK_FRAMES)
    ]


class Query(enum.Enum):
    """Executor -> interchange requests, each answered with a ``reply``."""

    #: -> one dict per registered manager (id, block, host, workers, tasks, idle time, state, versions)
    MANAGERS = "managers"
    #: -> {"registered": block ids in order of first registration, "loads": {block id: BlockLoad fields}}
    BLOCKS = "blocks"
    #: -> block ids in order of first registration
    CONNECTED_BLOCKS = "connected_blocks"
    #: -> counters: pending, in flight, dispatched, managers, bad frames, time of the last dispatch
    STATS = "stats"
    #: -> "pong" (the link's liveness check; any message from the interchange counts)
    PING = "ping"
    #: (manager id) -> whether that manager is registered and now held
    HOLD_MANAGER = "hold_manager"


class Notice(enum.Enum):
    """Executor -> interchange messages that need no answer."""

    #: (block id): send no more tasks to the block's managers
    HOLD_BLOCK = "hold_block"
    #: (block id, reason): the block's job ended or was cancelled (reason ""): its managers are gone
    BLOCK_ENDED = "block_ended"


#: The arguments each query and notice takes, by type, in order.
QUERY_ARGS: dict[Query, tuple[type, ...]] = {q: () for q in Query} | {Query.HOLD_MANAGER: (str,)}
NOTICE_ARGS: dict[Notice, tuple[type, ...]] = {Notice.HOLD_BLOCK: (str,), Notice.BLOCK_ENDED: (str, str)}
#: Longest string argument accepted (a block id, a manager id, a reason).
MAX_ARG = 1000


@dataclass(frozen=True, slots=True)
class Command:
    """A decoded ``cmd``: its request id, the query, and its checked arguments."""

    request_id: int
    query: Query
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class NoticeMessage:
    notice: Notice
    args: tuple[Any, ...]


def encode_command(request_id: int, query: Query, *args: Any) -> list[bytes]:
    return [Kind.CMD, pack_request_id(request_id), dump_json({"op": query.value, "args": list(args)})]


def encode_notice(notice: Notice, *args: Any) -> list[bytes]:
    return [Kind.NOTICE, dump_json({"op": notice.value, "args": list(args)})]


def _op_and_args(body: Frame, ops: type[enum.Enum],
                 schema: dict[Any, tuple[type, ...]]) -> tuple[Any, tuple[Any, ...]]:
    obj = load_json_object(body)
    try:
        op = ops(obj.get("op"))
    except ValueError:
        raise ProtocolError(f"unknown {ops.__name__.lower()} {str(obj.get('op'))[:64]!r}") from None
    args = obj.get("args", [])
    types = schema[op]
    if (not isinstance(args, list) or len(args) != len(types)
            or not all(isinstance(a, t) and not isinstance(a, bool) for a, t in zip(args, types, strict=False))):
        raise ProtocolError(f"{op.value}: arguments must be {[t.__name__ for t in types]}, got {str(args)[:200]}")
    if any(isinstance(a, str) and len(a) > MAX_ARG for a in args):
        raise ProtocolError(f"{op.value}: an argument is longer than {MAX_ARG} characters")
    return op, tuple(args)


def decode_command(frames: list[Frame]) -> Command:
    """A ``cmd`` message; ``ProtocolError`` for a bad layout, query or argument (its request id, when it
    could be read, is in ``BadCommand``, so that the sender can be answered with the error)."""
    if len(frames) != 3:
        raise ProtocolError(f"cmd message has {len(frames)} frames, expected 3")
    request_id = unpack_request_id(frames[1])
    try:
        query, args = _op_and_args(frames[2], Query, QUERY_ARGS)
    except ProtocolError as e:
        raise BadCommand(request_id, str(e)) from None
    return Command(request_id, query, args)


def decode_notice(frames: list[Frame]) -> NoticeMessage:
    if len(frames) != 2:
        raise ProtocolError(f"notice message has {len(frames)} frames, expected 2")
    notice, args = _op_and_args(frames[1], Notice, NOTICE_ARGS)
    return NoticeMessage(notice, args)


class BadCommand(ProtocolError):
    """A ``cmd`` whose request id could be read but whose query or arguments could not."""

    def __init__(self, request_id: int, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id


def _held_ids(value: Any) -> tuple[int, ...]:
    if (not isinstance(value, list) or len(value) > MAX_TASK_IDS
            or not all(type(v) is int for v in value)):
        raise ProtocolError("held must be a list of task ids")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class Registration:
    """What a worker pool tells the interchange about itself when it connects."""

    protocol_version: int
    htex_ref_version: str
    python_version: str
    uid: str
    block_id: str | None
    worker_count: int
    prefetch_capacity: int
    hostname: str
    pid: int
    cpu_count: int
    total_memory: int
    os: str
    drain_in: float | None = None  # seconds from registration until the pool should drain
    #: Tasks the pool holds when it registers again (queued, running, finished but not acknowledged).
    held: tuple[int, ...] = ()

    @property
    def capacity(self) -> int:
        return self.worker_count + self.prefetch_capacity

    def encode(self) -> bytes:
        body = asdict(self)
        body["held"] = list(self.held)
        return dump_json(body)

    @classmethod
    def decode(cls, frame: bytes) -> Registration:
        body = load_json_object(frame)
        # One pass over a table rather than a call per field: a block of 10,000 nodes registers at once.
        # A JSON value's type is exactly int, float, str, bool, list, dict or None, so ``type(v) in types``
        # is ``isinstance`` without a boolean where a number belongs.
        values: list[Any] = []
        get = body.get
        for name, types, optional in _REGISTRATION_FIELDS:
            value = get(name, _MISSING)
            if type(value) not in types and not (optional and value is None):
                if value is _MISSING:
                    if not optional:
                        raise ProtocolError(f"missing field {name!r}")
                    value = None
                else:
                    raise ProtocolError(f"field {name!r} has type {type(value).__name__}")
            values.append(value)
        values.append(_held_ids(get("held", [])))
        reg = cls(*values)
        if reg.worker_count < 0 or reg.prefetch_capacity < 0:
            raise ProtocolError("negative worker_count or prefetch_capacity")
        if reg.drain_in is not None and not (math.isfinite(reg.drain_in) and reg.drain_in >= 0):
            raise ProtocolError(f"drain_in must be a finite number of seconds >= 0, got {reg.drain_in}")
        return reg


_MISSING: Any = object()
#: ``Registration``'s fields but ``held``, in order: (name, the JSON types it may have, may it be null).
_REGISTRATION_FIELDS: tuple[tuple[str, tuple[type, ...], bool], ...] = (
    ("protocol_version", (int,), False),
    ("htex_ref_version", (str,), False),
    ("python_version", (str,), False),
    ("uid", (str,), False),
    ("block_id", (str,), True),
    ("worker_count", (int,), False),
    ("prefetch_capacity", (int,), False),
    ("hostname", (str,), False),
    ("pid", (int,), False),
    ("cpu_count", (int,), False),
    ("total_memory", (int,), False),
    ("os", (str,), False),
    ("drain_in", (int, float), True),
)
