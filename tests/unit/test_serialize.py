"""Unit tests for htex_ref.serialize: functions, arguments, results and exceptions to bytes and back."""

from __future__ import annotations

import json
import pickle
import threading

import cloudpickle
import pytest

from htex_ref.core.interchange import lost_payload
from htex_ref.errors import (
    DeserializationError,
    ManagerLost,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    WorkerLost,
)
from htex_ref.protocol import Outcome
from htex_ref.serialize import (
    FunctionCache,
    decode_outcome,
    dumps_arguments,
    dumps_exception,
    dumps_function,
    dumps_result,
)


def run_remote(fn_bytes: bytes, arg_bytes: bytes):
    """What a worker does with the two task frames."""
    fn = FunctionCache().load(fn_bytes)
    args, kwargs = pickle.loads(arg_bytes)
    return fn(*args, **kwargs)


def add(a, b=0):
    return a + b


# -------------------------------------------------------------------------------- functions


def test_function_bytes_cached_per_function():
    first = dumps_function(add)
    assert dumps_function(add) is first

    def other(x):
        return x

    assert dumps_function(other) is dumps_function(other)
    assert dumps_function(other) != first


def test_distinct_closures_get_distinct_bytes():
    def make(k):
        def f(x):
            return x * k

        return f

    f2, f3 = make(2), make(3)
    b2, b3 = dumps_function(f2), dumps_function(f3)
    assert b2 is dumps_function(f2)
    assert run_remote(b2, dumps_arguments(f2, (5,), {})) == 10
    assert run_remote(b3, dumps_arguments(f3, (5,), {})) == 15


def test_lambda_round_trip():
    fn = lambda x, y=1: (x, y)  # noqa: E731
    assert run_remote(dumps_function(fn), dumps_arguments(fn, (1,), {"y": "z"})) == (1, "z")


def test_closure_round_trip():
    captured = {"base": 100}

    def closure(x):
        return captured["base"] + x

    data = dumps_function(closure)
    assert run_remote(data, dumps_arguments(closure, (5,), {})) == 105
    # The bytes carry the captured value, not a reference to this process.
    restored = cloudpickle.loads(data)
    assert restored(1) == 101


def test_module_function_round_trip_with_kwargs():
    assert run_remote(dumps_function(add), dumps_arguments(add, (2,), {"b": 40})) == 42


def test_builtin_and_unhashable_callables_serialize():
    assert run_remote(dumps_function(len), dumps_arguments(len, ([1, 2, 3],), {})) == 3

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, x):
            return -x

    u = Unhashable()
    assert run_remote(dumps_function(u), dumps_arguments(u, (4,), {})) == -4


def test_function_cache_on_worker_side():
    cache = FunctionCache(size=2)
    # Local functions pickle by value, so every real load makes a new object.
    fns = [lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b]
    data = [dumps_function(f) for f in fns]
    f0 = cache.load(data[0])
    assert cache.load(data[0]) is f0
    cache.load(data[1])
    cache.load(data[2])  # evicts data[0], the least recently used
    assert cache.load(data[0]) is not f0
    assert cache.load(data[0])(1, 2) == 3


def test_unpicklable_arguments_name_the_function():
    def my_task(x):
        return x

    with pytest.raises(SerializationError) as info:
        dumps_arguments(my_task, (threading.Lock(),), {})
    assert "my_task" in str(info.value)
    assert "arguments" in str(info.value)
    with pytest.raises(SerializationError) as info:
        dumps_arguments(my_task, (), {"gen": (i for i in range(3))})
    assert "my_task" in str(info.value)


def test_unpicklable_function_names_the_function():
    lock = threading.Lock()

    def uses_lock():
        with lock:
            return 1

    with pytest.raises(SerializationError) as info:
        dumps_function(uses_lock)
    assert "uses_lock" in str(info.value)
    assert info.value.what.startswith("function")


# ---------------------------------------------------------------------------------- results


def test_result_round_trip():
    outcome, payload = dumps_result({"a": [1, 2.5, None]})
    assert outcome is Outcome.OK
    assert decode_outcome(outcome, payload) == (True, {"a": [1, 2.5, None]})


def test_unpicklable_result_becomes_serialization_error():
    outcome, payload = dumps_result(threading.Lock())
    assert outcome is Outcome.EXCEPTION
    okflag, exc = decode_outcome(outcome, payload)
    assert not okflag
    assert isinstance(exc, SerializationError)
    assert "lock" in str(exc).lower()


def test_undecodable_result_is_deserialization_error():
    okflag, exc = decode_outcome(Outcome.OK, b"definitely not a pickle")
    assert not okflag and isinstance(exc, DeserializationError)
    okflag, exc = decode_outcome(Outcome.EXCEPTION, b"\x80\x05garbage")
    assert not okflag and isinstance(exc, DeserializationError)


# ------------------------------------------------------------------------------- exceptions


def _raise_in_worker(exc_factory):
    def inner_failing_function():
        raise exc_factory()

    try:
        inner_failing_function()
    except BaseException as e:
        return dumps_exception(e)
    raise AssertionError("did not raise")


def test_exception_reraised_with_original_type_and_remote_traceback():
    payload = _raise_in_worker(lambda: KeyError("missing-key"))
    okflag, exc = decode_outcome(Outcome.EXCEPTION, payload)
    assert not okflag
    assert type(exc) is KeyError
    assert exc.args == ("missing-key",)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "inner_failing_function" in exc.__cause__.tb
    assert "KeyError" in exc.__cause__.tb
    # Raising it chains the remote traceback as the cause.
    with pytest.raises(KeyError) as info:
        raise exc
    assert info.value.__cause__ is exc.__cause__
    assert "inner_failing_function" in str(info.value.__cause__)


class CustomError(Exception):
    pass


def test_custom_exception_subclass_round_trip():
    payload = _raise_in_worker(lambda: CustomError("custom", 7))
    okflag, exc = decode_outcome(Outcome.EXCEPTION, payload)
    assert okflag is False
    assert type(exc) is CustomError and exc.args == ("custom", 7)


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")
        self.a = a
        self.b = b


class Unpicklable(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()


@pytest.mark.parametrize(
    ("factory", "type_name", "message"),
    [
        (lambda: NeedsTwoArgs(1, 2), f"{__name__}.NeedsTwoArgs", "1/2"),
        (lambda: Unpicklable("has a lock"), f"{__name__}.Unpicklable", "has a lock"),
    ],
)
def test_exception_that_cannot_be_rebuilt_comes_back_as_remote_error(factory, type_name, message):
    payload = _raise_in_worker(factory)
    okflag, exc = decode_outcome(Outcome.EXCEPTION, payload)
    assert not okflag
    assert isinstance(exc, RemoteError)
    assert exc.type_name == type_name
    assert exc.message == message
    assert type_name in str(exc)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "inner_failing_function" in exc.__cause__.tb


# ------------------------------------------------------------------------------ lost payloads


def test_worker_lost_payload():
    payload = json.dumps({"worker": 3, "host": "nodeA", "detail": "exit code -9"}).encode()
    okflag, exc = decode_outcome(Outcome.WORKER_LOST, payload)
    assert not okflag
    assert isinstance(exc, WorkerLost)
    assert exc.worker_id == 3
    assert exc.hostname == "nodeA"
    assert exc.detail == "exit code -9"
    assert "nodeA" in str(exc) and "exit code -9" in str(exc)


def test_manager_lost_payload():
    payload = lost_payload("mgr-1", "nodeB", "no heartbeat for 120.0 s")
    okflag, exc = decode_outcome(Outcome.MANAGER_LOST, payload)
    assert not okflag
    assert isinstance(exc, ManagerLost)
    assert exc.manager_id == "mgr-1"
    assert exc.hostname == "nodeB"
    assert exc.detail == "no heartbeat for 120.0 s"
    assert "nodeB" in str(exc)


@pytest.mark.parametrize("outcome", [Outcome.WORKER_LOST, Outcome.MANAGER_LOST])
def test_lost_payload_that_is_not_json_still_decodes(outcome):
    okflag, exc = decode_outcome(outcome, b"\xff not json")
    assert not okflag
    assert isinstance(exc, WorkerLost if outcome is Outcome.WORKER_LOST else ManagerLost)
    assert exc.hostname == "?"


@pytest.mark.parametrize("payload", [b"null", b"[1, 2]", b"7", b'"text"'])
@pytest.mark.parametrize("outcome", [Outcome.WORKER_LOST, Outcome.MANAGER_LOST])
def test_lost_payload_that_is_json_but_not_an_object_still_decodes(outcome, payload):
    okflag, exc = decode_outcome(outcome, payload)
    assert not okflag
    assert isinstance(exc, WorkerLost if outcome is Outcome.WORKER_LOST else ManagerLost)
