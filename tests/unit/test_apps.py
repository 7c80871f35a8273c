"""The workflow layer without worker processes: dependency tracking, failure propagation, cancellation,
join apps, retries, configuration checks, and the bash runner (run here, in this process).

Dependencies here are plain ``concurrent.futures.Future`` objects resolved by the test, and the
dependents are join apps, which run in this process; python and bash apps on real workers are tested
in tests/e2e/test_apps.py.
"""

from __future__ import annotations

import logging
import pickle
import random
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any

import pytest

import htex_ref
from htex_ref import config as config_module
from htex_ref.apps import (
    MAX_SEARCH_DEPTH,
    AppFuture,
    BashExitFailure,
    DependencyError,
    JoinError,
    NoConfigLoaded,
    _collect,
    _substitute,
    bash_app,
    check_std_spec,
    join_app,
    python_app,
    run_bash_app,
    set_current_session,
)
from htex_ref.config import Config, Session
from htex_ref.errors import ExecutorShutdown
from htex_ref.executor import HighThroughputExecutor
from htex_ref.providers.local import LocalProvider

WAIT = 10  # seconds; every result below is expected at once, this only keeps a bug from hanging the run


def resolved(value: Any) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_result(value)
    return f


def failed(exc: BaseException) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_exception(exc)
    return f


@join_app
def value_of(x: Any) -> Future[Any]:
    """A dependent that runs in this process: its future resolves with its argument."""
    return resolved(x)


@join_app
def total(*xs: int) -> Future[Any]:
    return resolved(sum(xs))


@pytest.fixture
def session() -> Iterator[Session]:
    """A loaded session whose executors are never started (join apps need no executor)."""
    s = Session(Config(executors=[HighThroughputExecutor(label="a"), HighThroughputExecutor(label="b")]))
    assert config_module._current is None
    config_module._current = s
    set_current_session(s)  # as htex_ref.load() registers it, without starting the executors
    try:
        yield s
    finally:
        htex_ref.clear()
    assert config_module._current is None


# ------------------------------------------------------------------------------ argument search


def test_futures_are_found_inside_lists_tuples_and_dicts_and_replaced_by_their_values() -> None:
    a, b, c = resolved(1), resolved("two"), resolved([3])
    args = (a, [b, {"k": (c, 4)}], "plain")
    found: dict[int, Future[Any]] = {}
    _collect(args, found)
    assert set(found.values()) == {a, b, c}
    assert _substitute(args) == (1, ["two", {"k": ([3], 4)}], "plain")


def test_arguments_without_futures_keep_their_identity_where_nothing_changes() -> None:
    marker = object()
    assert _substitute(marker) is marker
    s = {resolved(1)}  # sets are not searched: their members are not arguments anyone can reach in order
    found: dict[int, Future[Any]] = {}
    _collect(s, found)
    assert found == {}


def test_search_stops_at_the_depth_limit() -> None:
    inner = resolved(5)
    nested: Any = inner
    for _ in range(MAX_SEARCH_DEPTH + 1):
        nested = [nested]
    found: dict[int, Future[Any]] = {}
    _collect(nested, found)
    assert found == {}
    shallow: Any = inner
    for _ in range(MAX_SEARCH_DEPTH):
        shallow = [shallow]
    _collect(shallow, found)
    assert list(found.values()) == [inner]


# -------------------------------------------------------------------------------- dependencies


def test_an_app_waits_for_its_dependencies_and_receives_their_values(session: Session) -> None:
    x: Future[Any] = Future()
    y: Future[Any] = Future()
    out = total(x, y, 10)
    assert not out.done()
    assert out.waiting_on == 2
    assert "waiting on 2 dependencies" in repr(out)
    x.set_result(1)
    assert not out.done()
    y.set_result(2)
    assert out.result(timeout=WAIT) == 13
    assert repr(out) == f"<AppFuture total#{out.task_id} state=finished returned int>"


def test_keyword_and_nested_dependencies(session: Session) -> None:
    x: Future[Any] = Future()
    out = value_of(x={"a": [x, (x,)]})
    x.set_result(7)
    assert out.result(timeout=WAIT) == {"a": [7, (7,)]}


def test_diamond_and_chain(session: Session) -> None:
    root: Future[Any] = Future()
    left = total(root, 1)
    right = total(root, 2)
    bottom = total(left, right)
    chain = bottom
    for i in range(50):
        chain = total(chain, i)
    root.set_result(10)
    assert bottom.result(timeout=WAIT) == 23
    assert chain.result(timeout=WAIT) == 23 + sum(range(50))


def test_a_long_chain_resolves(session: Session) -> None:
    head: Future[Any] = Future()
    f: Any = head
    for _ in range(5000):
        f = total(f, 1)
    head.set_result(0)
    assert f.result(timeout=60) == 5000


def test_a_failed_dependency_fails_the_dependent_at_once_naming_it(session: Session) -> None:
    slow: Future[Any] = Future()
    bad: Future[Any] = Future()
    dep = value_of(bad)
    out = total(slow, dep)
    bad.set_exception(ZeroDivisionError("division by zero"))
    # ``slow`` has not resolved: the failure must not wait for it.
    with pytest.raises(DependencyError) as info:
        out.result(timeout=WAIT)
    err = info.value
    assert err.app == out.name
    assert err.dependency == dep.name
    assert f"its dependency {dep.name} failed" in str(err)
    assert "ZeroDivisionError: division by zero" in str(err)
    assert isinstance(err.__cause__, ZeroDivisionError)
    slow.set_result(1)  # a late dependency changes nothing
    assert isinstance(out.exception(), DependencyError)


def test_a_failure_chain_names_the_origin_and_keeps_one_cause(session: Session) -> None:
    gate: Future[Any] = Future()

    @join_app
    def broken(_: Any) -> Future[Any]:
        raise KeyError("missing")

    first = broken(gate)
    f: Any = first
    for _ in range(2000):
        f = value_of(f)
    gate.set_result(None)
    err = f.exception(timeout=WAIT)
    assert isinstance(err, DependencyError)
    assert err.origin == first.name
    assert f"because {first.name} failed" in str(err)
    assert len(str(err)) < 300  # one line however long the chain
    assert isinstance(err.__cause__, KeyError)
    assert err.__cause__.__cause__ is None


def test_a_plain_future_dependency_is_named_by_its_repr(session: Session) -> None:
    bad = failed(ValueError("nope"))
    out = value_of(bad)
    err = out.exception(timeout=WAIT)
    assert isinstance(err, DependencyError)
    assert "Future" in err.dependency and "ValueError: nope" in str(err)


def test_cancelling_a_waiting_app_fails_its_dependents_and_never_runs_it(session: Session) -> None:
    dep: Future[Any] = Future()
    ran = threading.Event()

    @join_app
    def mark(x: Any) -> Future[Any]:
        ran.set()
        return resolved(x)

    waiting = mark(dep)
    dependent = value_of(waiting)
    assert waiting.cancel()
    assert waiting.cancelled()
    err = dependent.exception(timeout=WAIT)
    assert isinstance(err, DependencyError)
    assert waiting.name in str(err) and isinstance(err.__cause__, CancelledError)
    dep.set_result(1)  # the dependency resolving later runs nothing and raises nothing
    assert not ran.is_set()
    assert session.wait_for_current_tasks(timeout=WAIT)
    assert session.outstanding == []


def test_a_dependency_failing_after_its_dependent_was_cancelled_is_harmless(session: Session) -> None:
    dep: Future[Any] = Future()
    out = value_of(dep)
    assert out.cancel()
    dep.set_exception(RuntimeError("late"))
    assert out.cancelled()
    assert session.wait_for_current_tasks(timeout=WAIT)


def test_random_dependency_graph_matches_a_sequential_computation(session: Session) -> None:
    rng = random.Random(1234)
    futures: list[Any] = []
    expected: list[int] = []
    sources = [Future() for _ in range(20)]
    for i in range(3000):
        picks = rng.sample(range(len(futures)), k=min(len(futures), rng.randint(0, 3)))
        src = rng.randrange(len(sources))
        futures.append(total(i, sources[src], *[futures[p] for p in picks]))
        expected.append(i + src + sum(expected[p] for p in picks))
    for n, s in enumerate(sources):
        s.set_result(n)
    assert [f.result(timeout=WAIT) for f in futures] == expected


# ----------------------------------------------------------------------------------- join apps


def test_join_app_with_a_list_of_futures_and_nesting(session: Session) -> None:
    @join_app
    def pair(x: Any) -> list[Future[Any]]:
        return [value_of(x), resolved(x * 2)]

    @join_app
    def fib(n: int) -> Any:
        if n < 2:
            return value_of(n)
        return total(fib(n - 1), fib(n - 2))

    assert pair(3).result(timeout=WAIT) == [3, 6]
    assert fib(15).result(timeout=WAIT) == 610


def test_join_app_runs_in_this_process_on_a_join_thread(session: Session) -> None:
    @join_app
    def where() -> Future[Any]:
        return resolved(threading.current_thread().name)

    assert where().result(timeout=WAIT).startswith("htex-join")


def test_join_app_returning_no_future_is_a_type_error(session: Session) -> None:
    @join_app
    def wrong() -> int:
        return 5

    @join_app
    def empty() -> list[Future[Any]]:
        return []

    err = wrong().exception(timeout=WAIT)
    assert isinstance(err, TypeError) and "must return a future or a list of futures, got int" in str(err)
    assert empty().result(timeout=WAIT) == []


def test_join_app_whose_future_fails_raises_join_error(session: Session) -> None:
    inner: Future[Any] = Future()

    @join_app
    def outer() -> list[Future[Any]]:
        return [resolved(1), inner]

    out = outer()
    inner.set_exception(OSError("disk"))
    err = out.exception(timeout=WAIT)
    assert isinstance(err, JoinError) and isinstance(err.__cause__, OSError)
    assert out.name in str(err) and "OSError: disk" in str(err)


def test_join_body_retries(session: Session, tmp_path: Path) -> None:
    calls: list[int] = []

    @join_app(retries=2)
    def flaky(fail_times: int) -> Future[Any]:
        calls.append(1)
        if len(calls) <= fail_times:
            raise RuntimeError(f"failure {len(calls)}")
        return resolved(len(calls))

    ok = flaky(2)
    assert ok.result(timeout=WAIT) == 3
    assert ok.attempts == 3
    calls.clear()
    bad = flaky(3)
    err = bad.exception(timeout=WAIT)
    assert isinstance(err, RuntimeError) and str(err) == "failure 3"
    assert bad.attempts == 3


def test_dependency_errors_are_not_retried(session: Session) -> None:
    calls: list[int] = []

    @join_app(retries=5)
    def counted(x: Any) -> Future[Any]:
        calls.append(1)
        return resolved(x)

    out = counted(failed(RuntimeError("upstream")))
    assert isinstance(out.exception(timeout=WAIT), DependencyError)
    assert calls == [] and out.attempts == 0


def test_config_retries_apply_to_apps_without_their_own(session: Session) -> None:
    session.config.retries = 1
    calls: list[int] = []

    @join_app
    def once_broken() -> Future[Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first")
        return resolved("second")

    assert once_broken().result(timeout=WAIT) == "second"


# ----------------------------------------------------------------------- python apps, selection


def test_an_executor_that_refuses_the_task_fails_the_future(session: Session) -> None:
    @python_app
    def f() -> int:
        return 1

    out = f()  # the session's executors were never started
    err = out.exception(timeout=WAIT)
    assert isinstance(err, RuntimeError) and "not started" in str(err)
    assert out.attempts == 1


def test_executor_labels_are_checked_when_the_app_is_called(session: Session) -> None:
    @python_app(executors=["b"])
    def on_b() -> int:
        return 1

    @python_app(executors=["c"])
    def on_c() -> int:
        return 1

    assert on_b().exception(timeout=WAIT) is not None  # b exists (not started)
    with pytest.raises(ValueError, match=r"names executors \['c'\].*its executors are \['a', 'b'\]"):
        on_c()
    assert session.choose_executor(("b",), "x").label == "b"
    assert {session.choose_executor(None, "x").label for _ in range(100)} == {"a", "b"}


def test_calling_an_app_with_nothing_loaded_names_htex_ref_load() -> None:
    assert config_module._current is None

    @python_app
    def f() -> int:
        return 1

    with pytest.raises(NoConfigLoaded, match=r"python_app f was called.*htex_ref\.load\(\)"):
        f()


def test_decorator_arguments_are_checked() -> None:
    def f() -> None:
        pass

    with pytest.raises(ValueError, match="executors"):
        python_app(f, executors="htex_local")
    with pytest.raises(ValueError, match="executors"):
        python_app(f, executors=[])
    with pytest.raises(ValueError, match="retries"):
        python_app(f, retries=-1)
    with pytest.raises(TypeError, match=r"python_app\.function must be the function to decorate .*got int 5"):
        python_app(5)  # type: ignore[call-overload]
    app = python_app(retries=3)(f)
    assert app.retries == 3 and app.__name__ == "f" and app.__wrapped__ is f


@pytest.mark.parametrize("executors", [[""], ["a", ""], [3], ("a", None)])
def test_executor_labels_that_no_executor_can_have_are_refused_on_the_decorator_line(executors: Any) -> None:
    def f() -> None:
        pass

    for decorator in (python_app, bash_app):
        with pytest.raises(ValueError, match=r"_app\.executors must list executor labels as non-empty strings"):
            decorator(f, executors=executors)
        # With options only, the decorator itself refuses them, before it is applied to a function.
        with pytest.raises(ValueError, match=r"_app\.executors"):
            decorator(executors=executors)


def test_bad_options_of_a_decorator_used_with_options_fail_before_decoration() -> None:
    with pytest.raises(ValueError, match=r"join_app\.retries must be None"):
        join_app(retries=-1)
    with pytest.raises(ValueError, match=r"bash_app\.executors must be 'all' or a list"):
        bash_app(executors="gpu")
    assert python_app(executors=("a", "b"))(lambda: None).executors == ("a", "b")


# ------------------------------------------------------------------------------ configuration


def test_config_checks_its_parameters() -> None:
    ex = HighThroughputExecutor(label="x")
    with pytest.raises(TypeError, match="executors"):
        Config(executors=ex)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="executors"):
        Config(executors=[])
    with pytest.raises(TypeError, match="HighThroughputExecutor"):
        Config(executors=[object()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"distinct labels; repeated: \['x'\]"):
        Config(executors=[ex, HighThroughputExecutor(label="x")])
    with pytest.raises(ValueError, match="retries"):
        Config(executors=[ex], retries=-1)
    with pytest.raises(ValueError, match="join_threads"):
        Config(executors=[ex], join_threads=0)
    with pytest.raises(ValueError, match="exit_mode"):
        Config(executors=[ex], exit_mode="later")
    with pytest.raises(TypeError, match="Config"):
        htex_ref.load({"executors": []})  # type: ignore[arg-type]


def test_local_default_is_sized_to_the_machine() -> None:
    cfg = htex_ref.local_config()
    (ex,) = cfg.executors
    assert ex.label == "htex_local"
    assert ex.max_workers_per_node == config_module.machine_workers()
    assert ex.address == "127.0.0.1"
    assert ex.provider.init_blocks == 1 and ex.provider.max_blocks == 1
    assert htex_ref.local_config(max_workers_per_node=3).executors[0].max_workers_per_node == 3


def test_closing_a_session_fails_apps_still_waiting(session: Session) -> None:
    never: Future[Any] = Future()
    waiting = value_of(never)
    htex_ref.clear()
    err = waiting.exception(timeout=WAIT)
    assert isinstance(err, ExecutorShutdown) and waiting.name in str(err)
    with pytest.raises(NoConfigLoaded):
        value_of(1)
    never.set_result(1)  # changes nothing, raises nothing


def test_app_future_is_a_plain_future() -> None:
    f = AppFuture("app", 3)
    assert isinstance(f, Future)
    assert repr(f) == "<AppFuture app#3 state=pending>"
    assert f.tid == 3
    f.set_exception(ValueError())
    assert repr(f) == "<AppFuture app#3 state=finished raised ValueError>"


# ------------------------------------------------------------------------------------ bash apps


def test_std_specs() -> None:
    assert check_std_spec("stdout", None) == (None, "a")
    assert check_std_spec("stdout", "x.out") == ("x.out", "a")
    assert check_std_spec("stdout", Path("x.out")) == ("x.out", "a")
    assert check_std_spec("stderr", ("x.err", "w")) == ("x.err", "w")
    with pytest.raises(TypeError, match="stderr must be a path or a"):
        check_std_spec("stderr", ("x.err", "r"))
    with pytest.raises(TypeError, match="stdout"):
        check_std_spec("stdout", 5)


def test_bash_runner_writes_output_files_and_returns_zero(tmp_path: Path) -> None:
    out, err = tmp_path / "sub" / "o.txt", tmp_path / "e.txt"

    def cmd(word: str) -> str:
        return f"echo {word}; echo oops >&2"

    assert run_bash_app(cmd, "cmd", str(out), str(err), ("hi",), {}) == 0
    assert run_bash_app(cmd, "cmd", str(out), str(err), ("again",), {}) == 0
    assert out.read_text() == "hi\nagain\n"  # appends by default, as Parsl
    assert err.read_text() == "oops\noops\n"
    assert run_bash_app(cmd, "cmd", (str(out), "w"), (str(out), "w"), ("once",), {}) == 0
    assert sorted(out.read_text().split()) == ["once", "oops"]  # one file for both streams


def test_bash_runner_raises_on_nonzero_exit_with_code_and_command() -> None:
    def fail() -> str:
        return "exit 3"

    with pytest.raises(BashExitFailure) as info:
        run_bash_app(fail, "fail", None, None, (), {})
    assert info.value.exitcode == 3 and info.value.command == "exit 3"
    assert "bash_app fail: command 'exit 3' exited with code 3" in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))  # it travels back from a worker
    assert (copy.app_name, copy.exitcode, copy.command) == ("fail", 3, "exit 3")

    def killed() -> str:
        return "kill -9 $$"

    with pytest.raises(BashExitFailure, match="killed by signal 9"):
        run_bash_app(killed, "killed", None, None, (), {})


def test_bash_runner_needs_a_string() -> None:
    def not_a_command() -> list[str]:
        return ["echo", "hi"]

    with pytest.raises(TypeError, match="bash_app nc must return the command to run as a str, but it returned list"):
        run_bash_app(not_a_command, "nc", None, None, (), {})


def test_bash_app_passes_stdout_only_to_functions_that_declare_it(session: Session, tmp_path: Path) -> None:
    @bash_app
    def declares(stdout: Any = str(tmp_path / "default.out")) -> str:
        return "true"

    @bash_app
    def does_not(x: int) -> str:
        return "true"

    a = declares()
    assert a.stdout == str(tmp_path / "default.out")
    assert declares._passes == {"stdout"} and does_not._passes == set()
    b = does_not(1, stdout=("b.out", "w"), stderr="b.err")
    assert (b.stdout, b.stderr) == ("b.out", "b.err")
    with pytest.raises(TypeError, match="stdout must be"):
        does_not(1, stdout=3)


# ------------------------------------------------------------------------------ Parsl's Config keywords


def test_config_scaling_settings_apply_to_its_executors_and_conflicts_are_refused() -> None:
    cfg = Config(executors=[HighThroughputExecutor(label="a"), HighThroughputExecutor(label="b")], strategy="none",
                 strategy_period=2, max_idletime=30)
    assert [(e.strategy, e.strategy_period, e.max_idletime) for e in cfg.executors] == [("none", 2.0, 30.0)] * 2
    assert Config(executors=[HighThroughputExecutor(label="a")], strategy=None).executors[0].strategy == "none"
    # An executor's own setting applies when the Config leaves it at its default ...
    own = Config(executors=[HighThroughputExecutor(label="a", strategy="htex_auto_scale")])
    assert own.executors[0].strategy == "htex_auto_scale"
    # ... and two different settings in two places are refused.
    with pytest.raises(ValueError, match=r"executor a has strategy='htex_auto_scale' but the Config has "
                                         r"strategy='none'; set strategy in one place"):
        Config(executors=[HighThroughputExecutor(label="a", strategy="htex_auto_scale")], strategy="none")
    with pytest.raises(ValueError, match="strategy must be one of"):
        Config(executors=[HighThroughputExecutor(label="a")], strategy="auto")
    with pytest.raises(ValueError, match="max_idletime"):
        Config(executors=[HighThroughputExecutor(label="a")], max_idletime=-1)


@pytest.mark.parametrize(("keyword", "value"), [
    ("app_cache", True), ("checkpoint_mode", "task_exit"), ("checkpoint_files", ["x"]),
    ("checkpoint_period", "01:00:00"), ("memoizer", object()), ("monitoring", object()),
    ("dependency_resolver", object()), ("std_autopath", print), ("usage_tracking", 3), ("project_name", "p"),
])
def test_parsl_features_left_to_parsl_are_refused_naming_them_and_the_adapter(keyword: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"Config\.{keyword}=.*htex_ref\.parsl_adapter"):
        Config(executors=[HighThroughputExecutor(label="a")], **{keyword: value})


def test_parsl_config_keywords_at_their_harmless_values_are_accepted() -> None:
    cfg = Config(executors=[HighThroughputExecutor(label="a")], app_cache=False, checkpoint_mode=None,
                 usage_tracking=0, garbage_collect=False, initialize_logging=False, internal_tasks_max_threads=4,
                 exit_mode="skip", run_dir="elsewhere")
    assert (cfg.join_threads, cfg.exit_mode, cfg.run_dir, cfg.initialize_logging) == (4, "skip", "elsewhere", False)
    with pytest.raises(ValueError, match="join_threads or internal_tasks_max_threads"):
        Config(executors=[HighThroughputExecutor(label="b")], join_threads=3, internal_tasks_max_threads=4)


def test_load_numbers_runs_under_run_dir_and_logs_there(tmp_path: Path) -> None:
    (tmp_path / "runs" / "007").mkdir(parents=True)
    with htex_ref.load(Config(executors=[HighThroughputExecutor(label="a", provider=LocalProvider(init_blocks=0),
                                                               strategy="none")],
                              run_dir=str(tmp_path / "runs"))) as session:
        assert session.run_dir == str(tmp_path / "runs" / "008")
        assert session.executors["a"].logdir == str(tmp_path / "runs" / "008" / "a")
        logging.getLogger("htex_ref.test").info("hello from the test")
    assert "hello from the test" in (tmp_path / "runs" / "008" / "htex_ref.log").read_text()
    assert not any(isinstance(h, config_module._LogHandlers) for h in logging.getLogger("htex_ref").handlers)
    assert session.log_handler is not None


def test_retry_handler_sets_the_cost_of_each_failure(session: Session) -> None:
    seen: list[dict[str, Any]] = []

    def cost(exc: BaseException, record: dict[str, Any]) -> float:
        seen.append(dict(record))
        return 0.5 if isinstance(exc, KeyError) else 10

    session.config.retries = 1
    session.config.retry_handler = cost
    calls: list[int] = []

    @join_app
    def flaky(kind: str) -> Future[Any]:
        calls.append(1)
        raise KeyError("k") if kind == "key" else ValueError("v")

    # KeyError costs 0.5: tries while the cost so far is <= 1, so three attempts (costs 0.5, 1.0, 1.5).
    assert isinstance(flaky("key").exception(timeout=WAIT), KeyError) and len(calls) == 3
    assert [(r["fail_count"], r["fail_cost"], r["try_id"]) for r in seen] == [(1, 0.0, 0), (2, 0.5, 1), (3, 1.0, 2)]
    assert seen[0]["func_name"] == "flaky" and seen[0]["args"] == ("key",)
    calls.clear()
    assert isinstance(flaky("value").exception(timeout=WAIT), ValueError) and len(calls) == 1  # cost 10 > 1


def test_a_retry_handler_that_raises_ends_the_retries_with_its_exception(session: Session) -> None:
    def broken(exc: BaseException, record: dict[str, Any]) -> float:
        raise RuntimeError("handler broke")

    session.config.retries = 5
    session.config.retry_handler = broken

    @join_app
    def fails() -> Future[Any]:
        raise ValueError("task")

    out = fails()
    err = out.exception(timeout=WAIT)
    assert isinstance(err, RuntimeError) and str(err) == "handler broke" and out.attempts == 1
