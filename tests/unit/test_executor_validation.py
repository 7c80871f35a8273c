"""Every bad constructor value fails at construction, naming the parameter (no process is started)."""

from __future__ import annotations

import functools
import math
import shlex
from typing import Any

import pytest

from htex_ref import (
    BlockIdManagerSelector,
    HighThroughputExecutor,
    LocalProvider,
    simple_error_handler,
    windowed_error_handler,
)

BAD: list[tuple[str, Any, type[Exception]]] = [
    ("label", "", ValueError),
    ("label", "a/b", ValueError),
    ("provider", object(), TypeError),
    ("launch_cmd", "htex-worker-pool {no_such_field}", ValueError),
    ("launch_cmd", "htex-worker-pool {", ValueError),
    ("launch_cmd", "", TypeError),
    ("address", "550.0.0.0.0.bad host name", ValueError),
    ("loopback_address", "*", ValueError),
    ("worker_port", 0, ValueError),
    ("worker_port", 70000, ValueError),
    ("worker_port", "54000", ValueError),
    ("worker_port_range", (55000, 54000), ValueError),
    ("worker_port_range", (1, 2, 3), ValueError),
    ("interchange_port_range", (0, 10), ValueError),
    ("worker_debug", "yes", TypeError),
    ("cores_per_worker", 0, ValueError),
    ("cores_per_worker", "2", ValueError),
    ("cores_per_worker", math.nan, ValueError),
    ("mem_per_worker", -1, ValueError),
    ("max_workers_per_node", 2.5, ValueError),
    ("max_workers_per_node", -1, ValueError),
    ("cpu_affinity", "sideways", ValueError),
    ("available_accelerators", -1, ValueError),
    ("available_accelerators", ["0", ""], TypeError),
    ("available_accelerators", "0,1", TypeError),
    ("prefetch_capacity", -1, ValueError),
    ("prefetch_capacity", 1.5, ValueError),
    ("heartbeat_threshold", 0, ValueError),
    ("heartbeat_threshold", math.inf, ValueError),
    ("heartbeat_period", -1, ValueError),
    ("heartbeat_period", 200, ValueError),  # above the default threshold of 120
    ("drain_period", 0, ValueError),
    ("drain_period", math.inf, ValueError),
    ("poll_period", 0, ValueError),
    ("poll_period", 1.5, ValueError),
    ("address_probe_timeout", 0, ValueError),
    ("worker_logdir_root", 5, TypeError),
    ("manager_selector", "fastest", ValueError),
    ("manager_selector", object(), TypeError),
    ("block_error_handler", "sometimes", ValueError),
    ("block_error_handler", 3, TypeError),
    ("block_error_handler", functools.partial(windowed_error_handler, threshold=0), ValueError),
    ("block_error_handler", functools.partial(windowed_error_handler, threshold=2.5), ValueError),
    ("block_error_handler", functools.partial(simple_error_handler, threshold=-1), ValueError),
    ("encrypted", 1, TypeError),
    ("run_dir", 5, TypeError),
    ("strategy", "aggressive", ValueError),
    ("strategy_period", 0, ValueError),
    ("max_idletime", -1, ValueError),
    ("block_registration_timeout", 0, ValueError),
    ("block_registration_timeout", -5, ValueError),
    ("block_registration_timeout", math.inf, ValueError),
    ("block_registration_timeout", "120", ValueError),
    ("max_outstanding", 0, ValueError),
    ("max_outstanding", 10.0, ValueError),
    ("max_outstanding", True, ValueError),
    ("drain_before_walltime", 0, ValueError),
    ("drain_before_walltime", math.inf, ValueError),
    ("drain_before_walltime", "60", ValueError),
    ("drain_before_walltime", 60, ValueError),  # the default LocalProvider has no walltime
]


@pytest.mark.parametrize(("name", "value", "error"), BAD, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD)])
def test_bad_value_names_the_parameter(name: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        HighThroughputExecutor(**{name: value})
    assert name in str(info.value)


def test_accepted_forms() -> None:
    ex = HighThroughputExecutor(
        label="ok", provider=LocalProvider(init_blocks=0), address="127.0.0.1", loopback_address="::1",
        worker_port=54321, max_workers_per_node=0, cpu_affinity="LIST:0-1:2", available_accelerators=2,
        prefetch_capacity=0, heartbeat_period=10, heartbeat_threshold=10, drain_period=3600,
        manager_selector=BlockIdManagerSelector(), block_error_handler=lambda ex, st: None,
        launch_cmd="htex-worker-pool --block-id={{block_id}} --port={worker_port}",
    )
    assert ex.available_accelerators == ["0", "1"]
    assert ex.cpu_affinity == "LIST:0-1:2"
    assert "{block_id}" in ex.launch_cmd and "{{" not in ex.launch_cmd
    assert ex.workers_per_node == 2  # capped by the accelerators
    assert HighThroughputExecutor(manager_selector="block_id").settings.selector_name == "block_id"
    for handler in (True, False, "simple", "windowed", "none", functools.partial(windowed_error_handler, threshold=2),
                    functools.partial(simple_error_handler, threshold=None)):
        HighThroughputExecutor(block_error_handler=handler)
    assert HighThroughputExecutor(block_registration_timeout=None).block_registration_timeout is None
    assert HighThroughputExecutor(block_registration_timeout=2).block_registration_timeout == 2.0
    assert HighThroughputExecutor().block_registration_timeout == 120.0


@pytest.mark.parametrize(
    ("kwargs", "provider", "expected"),
    [
        ({"max_workers_per_node": 3}, {}, 3),
        ({"cores_per_worker": 4}, {"cores_per_node": 8}, 2),
        ({"mem_per_worker": 16}, {"mem_per_node": 16}, 1),
        ({"available_accelerators": 3}, {"cores_per_node": 64}, 3),
        ({}, {}, 1),
    ],
)
def test_workers_per_node_for_scaling(kwargs: dict[str, Any], provider: dict[str, Any], expected: int) -> None:
    assert HighThroughputExecutor(provider=LocalProvider(**provider), **kwargs).workers_per_node == expected


def test_submit_before_start_is_a_clear_error() -> None:
    ex = HighThroughputExecutor(provider=LocalProvider(init_blocks=0))
    with pytest.raises(RuntimeError, match="not started"):
        ex.submit(abs, -1)


def slurm(walltime: str = "00:10:00") -> Any:
    from htex_ref.providers.slurm import SlurmProvider

    return SlurmProvider(walltime=walltime, init_blocks=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"drain_before_walltime": 600}, r"drain_before_walltime \(600 s\) must be less than the provider's walltime"),
    ({"drain_before_walltime": 60, "launch_cmd": "htex-worker-pool --block-id={block_id}"},
     r"drain_before_walltime needs the \{walltime_drain\} placeholder in launch_cmd"),
    ({"drain_before_walltime": 60, "strategy": "none"},
     r"drain_before_walltime needs a scaling strategy .* strategy='none'"),
])
def test_drain_before_walltime_checks_what_it_needs(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HighThroughputExecutor(provider=slurm(), **kwargs)


def test_drain_before_walltime_reaches_the_pool_command() -> None:
    ex = HighThroughputExecutor(provider=slurm("01:00:00"), drain_before_walltime=90, strategy="simple")
    ex.interchange_worker_port = 54000  # what start() sets
    command = ex._launch_command("3")
    assert command.endswith(" --walltime=3600 --drain-before-walltime=90")
    # The pool parses what the executor writes.
    from htex_ref.worker_pool import build_parser

    args = build_parser().parse_args(shlex.split(command)[1:])
    assert (args.walltime, args.drain_before_walltime) == (3600.0, 90.0)
    plain = HighThroughputExecutor(provider=slurm())
    plain.interchange_worker_port = 54000
    assert "walltime" not in plain._launch_command("3")


def test_the_executor_takes_exactly_the_settings_parameters_with_the_same_defaults() -> None:
    # ExecutorSettings holds the defaults and the checks; the executor's signature must not drift from it.
    import dataclasses
    import inspect

    from htex_ref.settings import ExecutorSettings

    params = inspect.signature(HighThroughputExecutor).parameters
    fields = {f.name: f.default for f in dataclasses.fields(ExecutorSettings) if f.init}
    assert list(params) == list(fields)
    assert {n: p.default for n, p in params.items()} == fields


def test_every_parameter_is_an_attribute_of_the_executor() -> None:
    ex = HighThroughputExecutor(max_workers_per_node=3, available_accelerators=2, strategy="simple")
    assert (ex.max_workers_per_node, ex.available_accelerators, ex.strategy) == (3, ["0", "1"], "simple")
    assert ex.launch_cmd.startswith("{worker_pool}") and ex.provider.__class__.__name__ == "LocalProvider"
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        ex.nonsense  # noqa: B018


def test_parsl_placeholders_render_with_parsl_meanings() -> None:
    ex = HighThroughputExecutor(max_workers_per_node=3, available_accelerators=["a", "b"], address_probe_timeout=7,
                                launch_cmd="process_worker_pool.py {max_workers_per_node} "
                                           "--available-accelerators {accelerators} {address_probe_timeout_string} "
                                           "--poll {poll_period} --logconf={logconf} {enable_mpi_mode} "
                                           "--mpi-launcher={mpi_launcher} --task_url={task_url} {nodes_per_block}")
    ex.interchange_worker_port = 5555
    words = ex._launch_command("4").split()
    assert words[0] == "htex-worker-pool"
    assert words[1:5] == ["--max_workers_per_node=3", "--available-accelerators", "a", "b"]
    assert "--address_probe_timeout=7.0" in words and "--logconf=None" in words and "--mpi-launcher=mpiexec" in words
    assert "--task_url=tcp://127.0.0.1:5555" in words and words[-1] == "1"
    # No cap and no accelerators: the option and the names are empty, as in Parsl.
    plain = HighThroughputExecutor(launch_cmd="x {max_workers_per_node}| --available-accelerators {accelerators}|")
    plain.interchange_worker_port = 5555
    assert plain._launch_command("0") == "x | --available-accelerators |"


@pytest.mark.parametrize("argv", [
    ["--task_url=tcp://10.1.2.3:5000", "--cert_dir", "None"],
    ["-a", "10.1.2.3", "--port=5000", "--logconf=None", "--mpi-launcher=srun", "--poll", "10"],
])
def test_the_pool_takes_parsls_options(argv: list[str]) -> None:
    from htex_ref.worker_pool import build_parser, check_args

    p = build_parser()
    args = check_args(p, p.parse_args(argv))
    assert (args.addresses, args.port) == ("10.1.2.3", 5000)


@pytest.mark.parametrize(("argv", "message"), [
    (["--cert_dir", "None"], "--addresses and --port"),
    (["-a", "x", "--port=1", "--mpi-nodes=n1"], "need --enable_mpi_mode"),
    (["-a", "x", "--port=1", "--logconf=/tmp/log.pkl"], "log configurations"),
    (["--task_url=http://x:1"], "tcp://address:port"),
])
def test_the_pool_refuses_what_it_cannot_do(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from htex_ref.worker_pool import build_parser, check_args

    p = build_parser()
    with pytest.raises(SystemExit) as info:
        check_args(p, p.parse_args(argv))
    assert info.value.code == 2 and message in capsys.readouterr().err
