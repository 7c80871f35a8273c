"""Turning calls, results and exceptions into bytes and back.

A task travels as two opaque frames: the function and the ``(args, kwargs)`` pair, both cloudpickled.
Function bytes are cached per function object on the submit side and per byte string on the worker, so
a workflow that calls one function many times pays for pickling it once.

Exceptions travel as an ``ExceptionPackage``: the exception itself when it pickles, else a
``RemoteError`` with its type name and message, plus the formatted remote traceback. On the submit side
the original exception is re-raised with a ``RemoteTraceback`` as its ``__cause__``, the same way
``concurrent.futures.ProcessPoolExecutor`` shows a worker's traceback.
"""

from __future__ import annotations

import json
import math
import pickle
import traceback
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any

import cloudpickle

from htex_ref.errors import (
    DeserializationError,
    InvalidResourceSpecification,
    ManagerLost,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    TaskMemoryExceeded,
    TaskTimeout,
    WorkerLost,
)
from htex_ref.protocol import Outcome

_fn_cache: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def dumps_function(fn: Callable[..., Any]) -> bytes:
    try:
        return _fn_cache[fn]
    except (KeyError, TypeError):
        pass
    try:
        data: bytes = cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        raise SerializationError(f"function {_name(fn)}", f"{type(e).__name__}: {e}") from e
    try:
        _fn_cache[fn] = data
    except TypeError:
        pass  # not weak-referenceable (e.g. some builtins): just don't cache
    return data


def dumps_arguments(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    try:
        data: bytes = cloudpickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        raise SerializationError(f"arguments of {_name(fn)}", f"{type(e).__name__}: {e}") from e
    return data


class FunctionCache:
    """Worker-side cache of deserialized functions keyed by their bytes (bounded, LRU)."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._cache: OrderedDict[bytes, Callable[..., Any]] = OrderedDict()

    def load(self, data: bytes | memoryview) -> Callable[..., Any]:
        if not isinstance(data, bytes):
            data = bytes(data)  # a large function arrives as a view; the cache needs a hashable key
        fn = self._cache.get(data)
        if fn is None:
            fn = cloudpickle.loads(data)
            self._cache[data] = fn
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(data)
        return fn


@dataclass
class ExceptionPackage:
    exception: BaseException
    traceback: str


def dumps_result(value: Any) -> tuple[Outcome, bytes]:
    try:
        return Outcome.OK, cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        err = SerializationError(f"result of type {type(value).__name__}", f"{type(e).__name__}: {e}")
        return Outcome.EXCEPTION, dumps_exception(err)


def dumps_exception(exc: BaseException) -> bytes:
    tb = "".join(traceback.format_exception(exc))
    try:
        data: bytes = cloudpickle.dumps(ExceptionPackage(exc, tb), protocol=pickle.HIGHEST_PROTOCOL)
        # An exception that pickles but cannot be rebuilt (custom __init__ signatures) is caught on
        # the submit side; this check catches the common case here, where the type name is known.
        pickle.loads(data)
        return data
    except Exception:
        stand_in = RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc))
        return cloudpickle.dumps(ExceptionPackage(stand_in, tb), protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]


def decode_outcome(outcome: Outcome, payload: bytes | memoryview) -> tuple[bool, Any]:
    """Return ``(True, value)`` or ``(False, exception)`` for a result that came back."""
    if outcome is Outcome.OK:
        try:
            return True, pickle.loads(payload)
        except Exception as e:
            return False, DeserializationError(f"result could not be deserialized: {type(e).__name__}: {e}")
    if outcome is Outcome.EXCEPTION:
        try:
            pkg = pickle.loads(payload)
            exc = pkg.exception
            exc.__cause__ = RemoteTraceback(pkg.traceback)
            return False, exc
        except Exception as e:
            return False, DeserializationError(
                f"task raised an exception that could not be deserialized: {type(e).__name__}: {e}"
            )
    try:
        info = json.loads(bytes(payload))
    except (ValueError, RecursionError):
        info = {}
    if not isinstance(info, dict):
        info = {}
    if outcome is Outcome.REFUSED:
        return False, InvalidResourceSpecification(set(), str(info.get("detail", "the worker pool refused the task")))
    if outcome is Outcome.WORKER_LOST:
        return False, WorkerLost(info.get("worker", "?"), info.get("host", "?"), info.get("detail", ""))
    if outcome is Outcome.TIMEOUT:
        limit = info.get("limit")
        return False, TaskTimeout(float(limit) if isinstance(limit, int | float) else math.nan,
                                  info.get("worker", "?"), info.get("host", "?"), info.get("detail", ""))
    if outcome is Outcome.MEMORY_EXCEEDED:
        limit, peak = info.get("limit"), info.get("peak_rss")
        return False, TaskMemoryExceeded(limit if isinstance(limit, int) else None,
                                         peak if isinstance(peak, int) else None,
                                         info.get("worker", "?"), info.get("host", "?"), info.get("detail", ""))
    if outcome is Outcome.CANCELLED:
        return False, CancelledError(str(info.get("detail", "the task was cancelled")))
    return False, ManagerLost(info.get("manager", "?"), info.get("host", "?"), info.get("detail", ""))
