"""Apps: ``python_app``, ``bash_app`` and ``join_app`` on htex_ref executors, with futures as dependencies.

This module owns what happens between calling an app and its ``AppFuture`` resolving: finding the futures
among the arguments, waiting for them without a thread (``Future.add_done_callback`` and a counter per
call), failing dependents of a failed dependency with ``DependencyError``, choosing an executor by label,
retries, running join-app bodies in the loading process and following the futures they return, and the
worker-side runner of bash apps (which is why its module-level imports stay light: workers import it).

Callbacks never run each other recursively: a callback that resolves a future whose callbacks would run
more of ours queues that work on its thread, and the outermost callback drains the queue. A chain of
ten thousand apps therefore resolves in a loop, not ten thousand frames deep.

The loaded configuration (executors, join threads, the set of outstanding apps) is
``htex_ref.config.AppSession``; this module knows it only as an ``AppSession`` (what an app call needs),
which ``htex_ref.config.load`` registers here (``set_current_session``), so the dependency runs one
way: config uses apps.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError
from typing import TYPE_CHECKING, Any, Protocol, overload

from htex_ref.core.manager import check_walltime
from htex_ref.errors import HtexError

if TYPE_CHECKING:
    # Only for annotations: workers import this module (bash apps) and must not load the executor.
    from htex_ref.executor import HighThroughputExecutor

logger = logging.getLogger(__name__)

#: How deep into nested lists, tuples and dicts the arguments are searched for futures.
MAX_SEARCH_DEPTH = 32

StdSpec = str | os.PathLike[str] | tuple[str | os.PathLike[str], str] | None

_STD_MODES = frozenset({"w", "a", "w+", "a+", "x"})


# ----------------------------------------------------------------------------------------- errors


class DependencyError(HtexError):
    """An app was not run because one of the futures it was given failed (or was cancelled).

    ``dependency`` names that future (``app#id`` for an app); ``origin`` names the app whose own failure
    started the chain (the same as ``dependency`` unless that one failed for the same reason). The
    original exception is ``__cause__``, so a traceback shows it directly however long the chain was.
    """

    def __init__(self, app: str, dependency: str, origin: str, reason: str) -> None:
        super().__init__(app, dependency, origin, reason)
        self.app = app
        self.dependency = dependency
        self.origin = origin
        self.reason = reason

    def __str__(self) -> str:
        via = "" if self.origin == self.dependency else f" (because {self.origin} failed)"
        return f"{self.app} was not run: its dependency {self.dependency} failed{via}: {self.reason}"


class BashExitFailure(HtexError):
    """A bash app's command exited with a non-zero code (negative: killed by that signal)."""

    def __init__(self, app_name: str, exitcode: int, command: str) -> None:
        super().__init__(app_name, exitcode, command)
        self.app_name = app_name
        self.exitcode = exitcode
        self.command = command

    def __str__(self) -> str:
        shown = self.command if len(self.command) <= 300 else self.command[:300] + "..."
        how = f"was killed by signal {-self.exitcode}" if self.exitcode < 0 else f"exited with code {self.exitcode}"
        return f"bash_app {self.app_name}: command {shown!r} {how}"


class JoinError(HtexError):
    """A future that a join app returned failed; ``__cause__`` is its exception."""

    def __init__(self, app: str, inner: str, reason: str) -> None:
        super().__init__(app, inner, reason)
        self.app = app
        self.inner = inner
        self.reason = reason

    def __str__(self) -> str:
        return f"join_app {self.app}: the future {self.inner} it returned failed: {self.reason}"


class NoConfigLoaded(HtexError, RuntimeError):
    """An app was called while no configuration is loaded."""


# ------------------------------------------------------------------------- the loaded configuration


class AppSession(Protocol):
    """What an app call needs of the loaded configuration (``htex_ref.config.Session`` is one)."""

    @property
    def closed(self) -> bool: ...

    @property
    def retries(self) -> int: ...

    @property
    def retry_handler(self) -> Callable[[BaseException, dict[str, Any]], float] | None: ...

    def new_future(self, app_name: str) -> AppFuture: ...

    def choose_executor(self, labels: tuple[str, ...] | None, app_name: str) -> HighThroughputExecutor: ...

    def join_pool(self) -> concurrent.futures.ThreadPoolExecutor: ...

    def closed_error(self, name: str) -> BaseException: ...


_current: AppSession | None = None


def set_current_session(session: AppSession | None) -> None:
    """Make ``session`` the configuration apps use (``htex_ref.config.load`` and ``clear`` call this)."""
    global _current
    _current = session


def current_session(what: str = "this app") -> AppSession:
    """The loaded session, or ``NoConfigLoaded`` naming ``what`` was called and how to load one."""
    session = _current
    if session is None or session.closed:
        raise NoConfigLoaded(f"{what} was called, but no configuration is loaded: call htex_ref.load() "
                             "first (e.g. `with htex_ref.load(): ...`)")
    return session


# ------------------------------------------------------------------------------------- futures


class AppFuture(Future[Any]):
    """The future of one app call: an ordinary ``concurrent.futures.Future`` that knows its app.

    ``task_id`` counts app calls within a loaded configuration (Parsl's ``tid``); ``attempts`` is how
    many times it has been handed to an executor (or, for a join app, run); ``executor_future`` is the
    executor's future of the latest attempt.
    """

    def __init__(self, app_name: str, task_id: int) -> None:
        super().__init__()
        self.app_name = app_name
        self.task_id = task_id
        self.attempts = 0
        self.waiting_on = 0
        self.executor_label: str | None = None
        self.executor_future: Future[Any] | None = None
        self.stdout: str | None = None
        self.stderr: str | None = None

    @property
    def tid(self) -> int:
        return self.task_id

    @property
    def name(self) -> str:
        return f"{self.app_name}#{self.task_id}"

    def __repr__(self) -> str:
        with self._condition:
            state = self._state
            if state == "FINISHED":
                if self._exception is not None:
                    detail = f"raised {type(self._exception).__name__}"
                else:
                    detail = f"returned {type(self._result).__name__}"
            elif state in ("CANCELLED", "CANCELLED_AND_NOTIFIED"):
                state, detail = "CANCELLED", ""
            elif self.waiting_on:
                detail = f"waiting on {self.waiting_on} dependencies"
            elif self.attempts:
                where = f" on {self.executor_label}" if self.executor_label else ""
                detail = f"attempt {self.attempts}{where}"
            else:
                detail = ""
        detail = f" {detail}" if detail else ""
        return f"<AppFuture {self.name} state={state.lower()}{detail}>"


def _describe(fut: Future[Any]) -> str:
    if isinstance(fut, AppFuture):
        return fut.name
    task_id = getattr(fut, "task_id", None)
    return f"{type(fut).__name__} task {task_id}" if task_id is not None else repr(fut)


def _settle(fut: Future[Any], value: Any = None, exc: BaseException | None = None) -> None:
    """Resolve ``fut`` unless it was cancelled (or resolved) meanwhile."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
    except InvalidStateError:
        pass


def _failure_of(fut: Future[Any]) -> BaseException | None:
    if fut.cancelled():
        return CancelledError(f"{_describe(fut)} was cancelled")
    return fut.exception()


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _dependency_error(app: str, dep: Future[Any], exc: BaseException) -> DependencyError:
    if isinstance(exc, DependencyError):
        # Name the app whose failure started the chain, and chain its exception, so that the error
        # stays one line and one cause however many apps it passed through.
        err = DependencyError(app, _describe(dep), exc.origin, exc.reason)
        err.__cause__ = exc.__cause__ if exc.__cause__ is not None else exc
    else:
        err = DependencyError(app, _describe(dep), _describe(dep), _reason(exc))
        err.__cause__ = exc
    return err


# ------------------------------------------------------------------------------ callback queue

_local = threading.local()


def _soon(fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` now, or, inside another of our callbacks on this thread, right after it."""
    queue: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] | None = getattr(_local, "queue", None)
    if queue is not None:
        queue.append((fn, args))
        return
    queue = _local.queue = collections.deque([(fn, args)])
    try:
        while queue:
            f, a = queue.popleft()
            try:
                f(*a)
            except BaseException:
                # Our handlers resolve their futures on every path; this only keeps the drain going.
                logger.exception("An app callback failed")
    finally:
        _local.queue = None


def _on_done(fut: Future[Any], fn: Callable[..., None], *args: Any) -> None:
    fut.add_done_callback(lambda f: _soon(fn, f, *args))


# ----------------------------------------------------------------------------- argument search


def _collect(obj: Any, found: dict[int, Future[Any]], depth: int = 0) -> None:
    if isinstance(obj, Future):
        found.setdefault(id(obj), obj)
    elif depth < MAX_SEARCH_DEPTH:
        t = type(obj)
        if t is list or t is tuple:
            for item in obj:
                _collect(item, found, depth + 1)
        elif t is dict:
            for item in obj.values():
                _collect(item, found, depth + 1)


def _substitute(obj: Any, depth: int = 0) -> Any:
    """``obj`` with every future (all resolved, successfully) replaced by its result."""
    if isinstance(obj, Future):
        return obj.result()
    if depth < MAX_SEARCH_DEPTH:
        t = type(obj)
        if t is list:
            return [_substitute(item, depth + 1) for item in obj]
        if t is tuple:
            return tuple(_substitute(item, depth + 1) for item in obj)
        if t is dict:
            return {k: _substitute(v, depth + 1) for k, v in obj.items()}
    return obj


# -------------------------------------------------------------------------------------- calls


class _Call:
    """One app call: waits for its dependencies, then runs (and re-runs, on failure) until resolved."""

    __slots__ = ("app", "args", "budget", "extra", "fail_cost", "fail_count", "future", "kwargs", "lock", "remaining",
                 "session", "spec")

    def __init__(self, app: _App, session: AppSession, future: AppFuture, args: tuple[Any, ...],
                 kwargs: dict[str, Any], spec: dict[str, Any] | None, extra: Any) -> None:
        self.app = app
        self.extra = extra
        self.session = session
        self.future = future
        self.args = args
        self.kwargs = kwargs
        self.spec = spec
        #: Failures cost 1 each (or what the configuration's ``retry_handler`` says); a call is retried while
        #: the cost so far is within ``budget``, as in Parsl.
        self.budget: float = app.retries if app.retries is not None else session.retries
        self.fail_cost = 0.0
        self.fail_count = 0
        self.lock = threading.Lock()
        self.remaining = 0

    def start(self) -> None:
        found: dict[int, Future[Any]] = {}
        _collect(self.args, found)
        _collect(self.kwargs, found)
        deps = [d for d in found.values() if d is not self.future]
        if not deps:
            _soon(self._ready)
            return
        self.remaining = self.future.waiting_on = len(deps)
        # Cancelling this future while it waits drops the call: every callback below then sees it done.
        for dep in deps:
            _on_done(dep, self._dependency_done)

    def _dependency_done(self, dep: Future[Any]) -> None:
        exc = _failure_of(dep)
        with self.lock:
            if self.remaining <= 0:
                return  # already failed by an earlier dependency, or cancelled
            if exc is not None:
                self.remaining = 0
            else:
                self.remaining -= 1
            self.future.waiting_on = self.remaining
            go = self.remaining == 0
        if exc is not None:
            self._drop()
            _settle(self.future, exc=_dependency_error(self.future.name, dep, exc))
        elif go:
            self._ready()

    def _drop(self) -> None:
        self.args, self.kwargs = (), {}

    def _ready(self) -> None:
        fut = self.future
        try:
            running = fut.set_running_or_notify_cancel()
        except RuntimeError:
            running = False  # already failed: its configuration was closed while it waited
        if not running:
            self._drop()
            return
        if self.session.closed:
            self._drop()
            _settle(fut, exc=self.session.closed_error(fut.name))
            return
        try:
            self.args = _substitute(self.args)
            self.kwargs = _substitute(self.kwargs)
        except BaseException as e:  # a dependency resolved, but reading its value failed
            self._drop()
            _settle(fut, exc=e)
            return
        self._attempt()

    def _attempt(self) -> None:
        fut = self.future
        fut.attempts += 1
        try:
            inner = self.app._run(self)
        except BaseException as e:
            # The executor refused the task (shut down, bad state, unpicklable arguments): no retry
            # can do better.
            self._drop()
            _settle(fut, exc=e)
            return
        fut.executor_future = inner
        _on_done(inner, self._attempt_done)

    def _attempt_done(self, inner: Future[Any]) -> None:
        exc = _failure_of(inner)
        if exc is None:
            self._drop()
            self.app._finish(self, inner.result())
            return
        if self.session.closed and isinstance(exc, CancelledError):
            exc = self.session.closed_error(self.future.name)  # a join body dropped from the join threads
        if not self.session.closed and not isinstance(exc, JoinError | DependencyError):
            exc = self._charge(exc)
            if self.fail_cost <= self.budget:
                logger.info("%s failed on attempt %d (%s); retrying", self.future.name, self.future.attempts,
                            _reason(exc))
                self._attempt()
                return
        self._drop()
        _settle(self.future, exc=exc)

    def _charge(self, exc: BaseException) -> BaseException:
        """Add this failure's cost; returns the exception to report (the retry handler's, if it raised)."""
        self.fail_count += 1
        handler = self.session.retry_handler
        if handler is None:
            self.fail_cost += 1
            return exc
        try:
            self.fail_cost += float(handler(exc, self.record()))
        except Exception as e:
            logger.exception("retry_handler raised an exception for %s: no more retries", self.future.name)
            self.fail_cost = self.budget + 1
            return e
        return exc

    def record(self) -> dict[str, Any]:
        """What a ``retry_handler`` is given about the call (the keys of Parsl's task record it reads)."""
        fut = self.future
        return {"id": fut.task_id, "func_name": self.app.__name__, "fail_count": self.fail_count,
                "fail_cost": self.fail_cost, "try_id": fut.attempts - 1, "args": self.args, "kwargs": self.kwargs,
                "executor": fut.executor_label, "resource_specification": self.spec or {}}


# --------------------------------------------------------------------------------------- apps


def _check_options(kind: str, executors: object = "all",
                   retries: object = None) -> tuple[tuple[str, ...] | None, int | None]:
    """The executor labels (None: any executor) and retries of an app, or a ValueError naming the option."""
    labels: tuple[str, ...] | None
    if isinstance(executors, str):
        if executors != "all":
            raise ValueError(f"{kind}.executors must be 'all' or a list of executor labels, got {executors!r}")
        labels = None
    elif isinstance(executors, Sequence) and executors:
        if not all(isinstance(x, str) and x for x in executors):
            # Labels are matched against the loaded executors only when the app is called; a label that
            # no executor can have is refused now.
            raise ValueError(f"{kind}.executors must list executor labels as non-empty strings, got {executors!r}")
        labels = tuple(executors)
    else:
        raise ValueError(f"{kind}.executors must be 'all' or a non-empty list of executor labels, got {executors!r}")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
        raise ValueError(f"{kind}.retries must be None (the config's) or an int >= 0, got {retries!r}")
    return labels, retries


class _App:
    """What the decorators return: calling it returns an ``AppFuture`` at once."""

    kind = "app"

    def __init__(self, func: Callable[..., Any], executors: str | Sequence[str] = "all",
                 retries: int | None = None) -> None:
        if not callable(func):
            raise TypeError(f"{self.kind}.function must be the function to decorate (a callable), got "
                            f"{type(func).__name__} {func!r}")
        labels, retries = _check_options(self.kind, executors, retries)
        self.func = func
        self.executors = labels
        self.retries = retries
        self.__name__: str = getattr(func, "__name__", type(func).__name__)
        self.__qualname__: str = getattr(func, "__qualname__", self.__name__)
        self.__doc__ = getattr(func, "__doc__", None)
        self.__module__ = getattr(func, "__module__", __name__)
        self.__wrapped__ = func
        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        #: A function that declares ``parsl_resource_specification`` (as Parsl's MPI apps do, to read
        #: their ranks) gets it as well as the executor; others do not see it.
        self.takes_spec = "parsl_resource_specification" in params
        #: Parsl's convention: a function that declares ``walltime`` gets a time limit from it (its
        #: default, or the call's value), which the worker pool enforces by stopping the task's worker.
        self.takes_walltime = "walltime" in params
        default = params["walltime"].default if self.takes_walltime else None
        self.walltime_default = None if default is inspect.Parameter.empty else default

    def __repr__(self) -> str:
        return f"<{self.kind} {self.__qualname__}>"

    def __call__(self, *args: Any, **kwargs: Any) -> AppFuture:
        session = current_session(f"{self.kind} {self.__name__}")
        spec = kwargs.get("parsl_resource_specification") if self.takes_spec else (
            kwargs.pop("parsl_resource_specification", None))
        if spec is not None and not isinstance(spec, dict):
            raise TypeError(f"parsl_resource_specification must be a dict, got {type(spec).__name__}")
        if self.takes_walltime:
            walltime = kwargs.get("walltime", self.walltime_default)
            if walltime is not None:
                spec = dict(spec or {}, walltime=check_walltime(walltime))
        # Bad labels and bad stdout= values fail here, in the caller, not later on a future.
        extra = self._prepare(session, kwargs)
        future = session.new_future(self.__name__)
        self._created(future, extra)
        _Call(self, session, future, args, kwargs, spec, extra).start()
        return future

    def _created(self, future: AppFuture, extra: Any) -> None:
        pass

    def _prepare(self, session: AppSession, kwargs: dict[str, Any]) -> Any:
        """Check the call before its future exists; what it returns is kept as ``_Call.extra``."""
        session.choose_executor(self.executors, self.__name__)
        return None

    def _run(self, call: _Call) -> Future[Any]:
        raise NotImplementedError

    def _finish(self, call: _Call, value: Any) -> None:
        _settle(call.future, value)

    def _submit(self, call: _Call, target: Callable[..., Any], args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Future[Any]:
        executor: HighThroughputExecutor = call.session.choose_executor(self.executors, self.__name__)
        call.future.executor_label = executor.label
        # Parsl's form: the specification has a place of its own, so every keyword (even one named
        # resource_specification) reaches the function.
        return executor.parsl_submit(target, call.spec, *args, **kwargs)


class PythonApp(_App):
    """A Python function run on a worker of one of the loaded executors."""

    kind = "python_app"

    def _run(self, call: _Call) -> Future[Any]:
        return self._submit(call, self.func, call.args, call.kwargs)


class BashApp(_App):
    """A function that returns a shell command; the command runs with bash on a worker.

    ``stdout=`` and ``stderr=`` (from the call, else the function's defaults) are file paths, or
    ``(path, mode)`` pairs; the default mode appends, as in Parsl. They are passed on to the function
    only when it declares them (or takes ``**kwargs``).
    """

    kind = "bash_app"

    def __init__(self, func: Callable[..., Any], executors: str | Sequence[str] = "all",
                 retries: int | None = None) -> None:
        super().__init__(func, executors, retries)
        params: Mapping[str, inspect.Parameter]
        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError):
            params = {}
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._passes = {n for n in ("stdout", "stderr") if takes_any or n in params}
        self._defaults = {n: params[n].default for n in ("stdout", "stderr")
                          if n in params and params[n].default is not inspect.Parameter.empty}
        # One runner object per app, so the executor pickles the function once, not once per call.
        self._runner = functools.partial(run_bash_app, func, self.__name__)

    def _prepare(self, session: AppSession, kwargs: dict[str, Any]) -> tuple[StdSpec, StdSpec]:
        super()._prepare(session, kwargs)
        specs: list[StdSpec] = []
        for name in ("stdout", "stderr"):
            spec = kwargs[name] if name in kwargs else self._defaults.get(name)
            if name not in self._passes:
                kwargs.pop(name, None)
            check_std_spec(name, spec)
            specs.append(spec)
        return specs[0], specs[1]

    def _created(self, future: AppFuture, extra: Any) -> None:
        future.stdout = check_std_spec("stdout", extra[0])[0]
        future.stderr = check_std_spec("stderr", extra[1])[0]

    def _run(self, call: _Call) -> Future[Any]:
        stdout, stderr = call.extra
        return self._submit(call, self._runner, (stdout, stderr, call.args, call.kwargs), {})


class JoinApp(_App):
    """A function run in this process (on the loaded configuration's join threads) that returns a
    future or a list of futures; its ``AppFuture`` resolves with their value(s)."""

    kind = "join_app"

    def _prepare(self, session: AppSession, kwargs: dict[str, Any]) -> Any:
        return None

    def _created(self, future: AppFuture, extra: Any) -> None:
        future.executor_label = "join"

    def _run(self, call: _Call) -> Future[Any]:
        return call.session.join_pool().submit(self.func, *call.args, **call.kwargs)

    def _finish(self, call: _Call, value: Any) -> None:
        fut = call.future
        if isinstance(value, Future):
            inner: list[Future[Any]] = [value]
        elif type(value) is list and all(isinstance(v, Future) for v in value):
            inner = value
        else:
            _settle(fut, exc=TypeError(
                f"join_app {fut.name} must return a future or a list of futures, got {type(value).__name__}"))
            return
        if not inner:
            _settle(fut, [])
            return
        _JoinWait(fut, value, inner).start()


class _JoinWait:
    """Resolves a join app's future once the futures its body returned have resolved."""

    __slots__ = ("future", "inner", "lock", "remaining", "returned")

    def __init__(self, future: AppFuture, returned: Any, inner: list[Future[Any]]) -> None:
        self.future = future
        self.returned = returned
        self.inner = inner
        self.lock = threading.Lock()
        self.remaining = len({id(f) for f in inner})
        future.waiting_on = self.remaining

    def start(self) -> None:
        seen: set[int] = set()
        for f in self.inner:
            if id(f) not in seen:
                seen.add(id(f))
                _on_done(f, self._done)

    def _done(self, inner: Future[Any]) -> None:
        exc = _failure_of(inner)
        with self.lock:
            if self.remaining <= 0:
                return
            self.remaining = 0 if exc is not None else self.remaining - 1
            self.future.waiting_on = self.remaining
            go = self.remaining == 0
        if exc is not None:
            err = JoinError(self.future.name, _describe(inner), _reason(exc))
            err.__cause__ = exc
            _settle(self.future, exc=err)
        elif go:
            if isinstance(self.returned, Future):
                _settle(self.future, self.returned.result())
            else:
                _settle(self.future, [f.result() for f in self.returned])


# ---------------------------------------------------------------------------------- decorators

def _decorator(cls: type[_App], function: Callable[..., Any] | None, **options: Any) -> Any:
    if function is not None:
        return cls(function, **options)
    # Bad options fail on the decorator's own line, before any function is decorated.
    _check_options(cls.kind, **options)
    return lambda f: cls(f, **options)


@overload
def python_app(function: Callable[..., Any], *, executors: str | Sequence[str] = ...,
               retries: int | None = ...) -> PythonApp: ...
@overload
def python_app(function: None = ..., *, executors: str | Sequence[str] = ...,
               retries: int | None = ...) -> Callable[[Callable[..., Any]], PythonApp]: ...
def python_app(function: Callable[..., Any] | None = None, *, executors: str | Sequence[str] = "all",
               retries: int | None = None) -> Any:
    """Make ``function`` an app that runs on a worker: ``@python_app`` or ``@python_app(executors=[...])``.

    Calling the app returns an ``AppFuture`` at once; futures among its arguments are waited for first.
    A function that declares a ``walltime`` parameter (Parsl's convention) gets a time limit from it, its
    default or the call's value: past it, the task's worker is stopped and replaced, and the future fails
    with ``TaskTimeout`` (the value still reaches the function).

    Parameters
    ----------
    function : Callable | None
        The function; ``None`` when the decorator is used with options (``@python_app(retries=2)``).
    executors : str | Sequence[str]
        ``"all"``: any loaded executor, chosen at random for each call (as Parsl does); or a list of
        executor labels (non-empty strings), which are checked against the loaded configuration when the
        app is called.
    retries : int | None
        How many times a failed call is run again; ``None``: the loaded ``Config.retries``. A call whose
        dependency failed is never retried, nor one the executor refused.
    """
    return _decorator(PythonApp, function, executors=executors, retries=retries)


@overload
def bash_app(function: Callable[..., Any], *, executors: str | Sequence[str] = ...,
             retries: int | None = ...) -> BashApp: ...
@overload
def bash_app(function: None = ..., *, executors: str | Sequence[str] = ...,
             retries: int | None = ...) -> Callable[[Callable[..., Any]], BashApp]: ...
def bash_app(function: Callable[..., Any] | None = None, *, executors: str | Sequence[str] = "all",
             retries: int | None = None) -> Any:
    """Make ``function`` (which returns a command line) an app that runs the command with bash on a worker.

    Its future's result is 0; a non-zero exit raises ``BashExitFailure`` with the exit code and command.
    ``stdout=`` and ``stderr=`` of a call (or the function's defaults for them) are files that the
    command's output is appended to, or ``(path, mode)`` pairs. A ``walltime`` parameter limits the run as
    for ``python_app``: the command and every process it started are stopped with its worker.

    Parameters
    ----------
    function : Callable | None
        The function; ``None`` when the decorator is used with options (``@bash_app(retries=2)``).
    executors : str | Sequence[str]
        ``"all"``: any loaded executor, chosen at random for each call (as Parsl does); or a list of
        executor labels (non-empty strings), which are checked against the loaded configuration when the
        app is called.
    retries : int | None
        How many times a failed call is run again; ``None``: the loaded ``Config.retries``. A call whose
        dependency failed is never retried, nor one the executor refused.
    """
    return _decorator(BashApp, function, executors=executors, retries=retries)


@overload
def join_app(function: Callable[..., Any], *, retries: int | None = ...) -> JoinApp: ...
@overload
def join_app(function: None = ..., *, retries: int | None = ...) -> Callable[[Callable[..., Any]], JoinApp]: ...
def join_app(function: Callable[..., Any] | None = None, *, retries: int | None = None) -> Any:
    """Make ``function`` an app that runs in this process and returns futures of other apps.

    Its future resolves with the value (or list of values) of the future (list of futures) the function
    returned, once they resolve; a failed one gives ``JoinError``.

    Parameters
    ----------
    function : Callable | None
        The function; ``None`` when the decorator is used with options (``@join_app(retries=2)``).
    retries : int | None
        How many times the function is run again when it raises (not when a future it returned fails);
        ``None``: the loaded ``Config.retries``. A call whose dependency failed is never retried.
    """
    return _decorator(JoinApp, function, retries=retries)


# ------------------------------------------------------------------------ worker side of bash


def check_std_spec(name: str, spec: Any) -> tuple[str | None, str]:
    """``(path, mode)`` of a ``stdout=``/``stderr=`` value, or a ``TypeError`` naming the parameter."""
    if spec is None:
        return None, "a"
    if isinstance(spec, str | os.PathLike):
        return os.fspath(spec), "a"
    if (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str | os.PathLike)
            and spec[1] in _STD_MODES):
        return os.fspath(spec[0]), str(spec[1])
    raise TypeError(f"{name} must be a path or a (path, mode) pair with mode in {sorted(_STD_MODES)}, "
                    f"got {spec!r}")


def run_bash_app(func: Callable[..., Any], app_name: str, stdout: StdSpec, stderr: StdSpec,
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Run on a worker: build the command by calling ``func``, run it with bash, return 0 or raise."""
    command = func(*args, **kwargs)
    if not isinstance(command, str):
        raise TypeError(f"bash_app {app_name} must return the command to run as a str, "
                        f"but it returned {type(command).__name__}")
    with contextlib.ExitStack() as stack:
        files: dict[tuple[str, str], Any] = {}
        handles: list[Any] = []
        for name, spec in (("stdout", stdout), ("stderr", stderr)):
            path, mode = check_std_spec(name, spec)
            if path is None:
                handles.append(None)
                continue
            key = (os.path.abspath(path), mode)
            if key not in files:
                parent = os.path.dirname(key[0])
                os.makedirs(parent, exist_ok=True)
                files[key] = stack.enter_context(open(key[0], mode))
            handles.append(files[key])
        proc = subprocess.run(["/bin/bash", "-c", command], stdin=subprocess.DEVNULL,
                              stdout=handles[0], stderr=handles[1], check=False)
    if proc.returncode != 0:
        raise BashExitFailure(app_name, proc.returncode, command)
    return 0
