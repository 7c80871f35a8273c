"""Python, bash and join apps on real executors: chains, diamonds, failures, retries, bash exit codes and
output files, join nesting, executor labels, and 10,000 apps with random dependencies.

One loaded configuration serves the whole module (two executors: "a" with two workers, "b" with one).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import htex_ref
from htex_ref import (
    BashExitFailure,
    Config,
    DependencyError,
    HighThroughputExecutor,
    InvalidResourceSpecification,
    LocalProvider,
    bash_app,
    join_app,
    python_app,
)
from htex_ref.config import Session
from htex_ref.errors import RemoteTraceback
from tests.conftest import processes_mentioning, wait_until

pytestmark = pytest.mark.e2e

WAIT = 60


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Session, Path]]:
    run = tmp_path_factory.mktemp("apps")
    common: dict[str, Any] = {"encrypted": False, "address": "127.0.0.1", "heartbeat_period": 2,
                              "heartbeat_threshold": 10}
    executors = [
        HighThroughputExecutor(label=label, max_workers_per_node=workers, run_dir=str(run / label),
                               provider=LocalProvider(worker_init=f"export HTEX_WHICH={label}"), **common)
        for label, workers in (("a", 2), ("b", 1))
    ]
    with htex_ref.load(Config(executors=executors)) as session:
        yield session, run
    assert wait_until(lambda: not processes_mentioning(str(run)), 10), (
        f"processes left behind: {[p.info['cmdline'] for p in processes_mentioning(str(run))]}")


@pytest.fixture
def session(loaded: tuple[Session, Path]) -> Session:
    return loaded[0]


@python_app
def add(*xs: int) -> int:
    return sum(xs)


@python_app
def div(x: float, y: float) -> float:
    return x / y


@python_app
def echo(x: Any) -> Any:
    return x


@python_app
def combine(i: int, *deps: int) -> int:
    return (i * 31 + sum(deps)) % 1_000_003


@python_app
def which() -> tuple[str | None, int]:
    import os

    return os.environ.get("HTEX_WHICH"), os.getpid()


@python_app(executors=["b"])
def which_on_b() -> str | None:
    import os

    return os.environ.get("HTEX_WHICH")


@python_app
def fail_until(counter: str, failures: int) -> int:
    """Fails ``failures`` times (counted in a file, which every worker sees), then returns the attempt."""
    with open(counter, "a+") as f:
        f.seek(0)
        seen = len(f.read())
        f.write("x")
    if seen < failures:
        raise RuntimeError(f"attempt {seen + 1} fails on purpose")
    return seen + 1


@join_app
def fib(n: int) -> Any:
    if n < 2:
        return add(n)
    return add(fib(n - 1), fib(n - 2))


@bash_app
def shell(command: str) -> str:
    return command


@bash_app
def not_a_command() -> Any:
    return 42


def test_chain_and_diamond(session: Session) -> None:
    top = add(1, 2)
    left, right = add(top, 10), add(top, 20)
    bottom = add(left, right, top)
    chain = bottom
    for i in range(20):
        chain = add(chain, i)
    assert bottom.result(timeout=WAIT) == 13 + 23 + 3
    assert chain.result(timeout=WAIT) == 39 + sum(range(20))
    assert chain.attempts == 1 and chain.executor_label in ("a", "b")


def test_dependencies_inside_containers_and_keywords(session: Session) -> None:
    x, y = add(1), add(2)
    assert echo({"k": [x, (y, "s")]}).result(timeout=WAIT) == {"k": [1, (2, "s")]}
    assert echo(x=[x, (y,)]).result(timeout=WAIT) == [1, (2,)]


def test_a_failed_app_fails_its_dependents_naming_it(session: Session) -> None:
    bad = div(1, 0)
    mid = add(bad, 1)
    last = add(mid, add(5))
    with pytest.raises(ZeroDivisionError):
        bad.result(timeout=WAIT)
    err = last.exception(timeout=WAIT)
    assert isinstance(err, DependencyError)
    assert err.dependency == mid.name and err.origin == bad.name
    assert f"its dependency {mid.name} failed (because {bad.name} failed): ZeroDivisionError" in str(err)
    # The original exception, with the worker's traceback behind it.
    assert isinstance(err.__cause__, ZeroDivisionError)
    assert isinstance(err.__cause__.__cause__, RemoteTraceback)
    assert mid.attempts == 0 and last.attempts == 0


def test_retries_resubmit_until_success(session: Session, tmp_path: Path) -> None:
    retrying = python_app(fail_until.__wrapped__, retries=2)
    ok = retrying(str(tmp_path / "ok"), 2)
    assert ok.result(timeout=WAIT) == 3
    assert ok.attempts == 3
    too_few = python_app(fail_until.__wrapped__, retries=1)(str(tmp_path / "bad"), 2)
    with pytest.raises(RuntimeError, match="attempt 2 fails on purpose"):
        too_few.result(timeout=WAIT)
    assert too_few.attempts == 2


def test_bash_exit_codes_and_output_files(session: Session, tmp_path: Path) -> None:
    out, err = tmp_path / "logs" / "out.txt", tmp_path / "err.txt"
    ok = shell("echo to-out; echo to-err >&2", stdout=str(out), stderr=(str(err), "w"))
    assert ok.result(timeout=WAIT) == 0
    assert ok.stdout == str(out)
    assert out.read_text() == "to-out\n" and err.read_text() == "to-err\n"
    assert shell("echo more", stdout=str(out)).result(timeout=WAIT) == 0
    assert out.read_text() == "to-out\nmore\n"

    failing = shell("echo partial; exit 7", stdout=(str(out), "w"))
    with pytest.raises(BashExitFailure) as info:
        failing.result(timeout=WAIT)
    assert info.value.exitcode == 7 and info.value.command == "echo partial; exit 7"
    assert out.read_text() == "partial\n"

    with pytest.raises(TypeError, match="bash_app not_a_command must return the command to run as a str"):
        not_a_command().result(timeout=WAIT)


def test_bash_app_reads_stdout_from_its_signature(session: Session, tmp_path: Path) -> None:
    target = tmp_path / "hello-stdout"

    @bash_app
    def hello(message: str, stdout: Any = str(target)) -> str:
        return f'echo "Hello {message}"'

    first = hello("World")
    assert first.result(timeout=WAIT) == 0
    assert target.read_text() == "Hello World\n"
    # A bash app that depends on another sees its output file.
    copied = tmp_path / "copy"

    @bash_app
    def copy(src: str, after: Any) -> str:
        return f"cp {src} {copied}"

    assert copy(str(target), hello("again")).result(timeout=WAIT) == 0
    assert copied.read_text() == "Hello World\nHello again\n"


def test_join_app_nesting(session: Session) -> None:
    assert fib(12).result(timeout=WAIT) == 144

    @join_app
    def fan_out(n: int) -> list[Any]:
        return [add(i, i) for i in range(n)]

    @join_app
    def outer(sizes: list[int]) -> list[Any]:
        return [fan_out(k) for k in sizes]

    assert outer([2, 3]).result(timeout=WAIT) == [[0, 2], [0, 2, 4]]


def test_apps_choose_executors_by_label(session: Session) -> None:
    assert {which_on_b().result(timeout=WAIT) for _ in range(5)} == {"b"}
    assert which_on_b().executor_label == "b"
    # "all": any loaded executor, chosen at random per call.
    seen = {which().result(timeout=WAIT)[0] for _ in range(40)}
    assert seen == {"a", "b"}


def test_loading_twice_is_an_error(session: Session) -> None:
    other = HighThroughputExecutor(label="other")
    with pytest.raises(RuntimeError, match=r"already loaded \(executors \['a', 'b'\]\).*htex_ref.clear\(\)"):
        htex_ref.load(Config(executors=[other]))
    assert other.run_dir == ""  # never started


def test_ten_thousand_apps_with_random_dependencies(session: Session) -> None:
    rng = random.Random(20240607)
    n = 10_000
    futures: list[Any] = []
    expected: list[int] = []
    for i in range(n):
        picks = rng.sample(range(max(0, i - 200), i), k=min(i, rng.randint(0, 3)))
        futures.append(combine(i, *[futures[p] for p in picks]))
        expected.append((i * 31 + sum(expected[p] for p in picks)) % 1_000_003)
    # Waiting apps hold callbacks, not threads.
    assert threading.active_count() < 50
    assert [f.result(timeout=300) for f in futures] == expected
    assert session.wait_for_current_tasks(timeout=WAIT)
    assert session.outstanding == []


@python_app
def takes_spec(resource_specification: Any) -> Any:
    return resource_specification


@python_app
def reads_parsl_spec(parsl_resource_specification: dict[str, Any]) -> Any:
    return parsl_resource_specification


def test_resource_specifications(session: Session) -> None:
    # Parsl's keyword for per-call resource specifications reaches the executor, not the function.
    assert echo(1, parsl_resource_specification={"priority": 5}).result(timeout=WAIT) == 1
    for key in ("cores", "not_a_spec_key"):
        err = echo(1, parsl_resource_specification={key: 2}).exception(timeout=WAIT)
        assert isinstance(err, InvalidResourceSpecification) and key in str(err)
    with pytest.raises(TypeError, match="parsl_resource_specification must be a dict"):
        echo(1, parsl_resource_specification=5)
    # A function's own parameter of the executor's keyword name still gets its value.
    assert takes_spec(resource_specification={"mine": 1}).result(timeout=WAIT) == {"mine": 1}
    # A function that declares parsl_resource_specification (Parsl's MPI apps read their ranks from it)
    # gets it too, and the executor still checks it.
    assert reads_parsl_spec(parsl_resource_specification={"priority": 2}).result(timeout=WAIT) == {"priority": 2}
    err = reads_parsl_spec(parsl_resource_specification={"cores": 2}).exception(timeout=WAIT)
    assert isinstance(err, InvalidResourceSpecification)
