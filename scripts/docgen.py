"""Generates the configuration reference from the code itself, so it cannot drift from it.

For every public configurable class: each constructor parameter with its default (from the signature),
its description (from the ``Parameters`` section of the class docstring) and, for a sample of bad values,
the exact error the constructor raises (by calling it). Functions (the app decorators) are subjects too:
their parameters come from the function's signature and docstring, and their bad values are tried by
calling the function. Used by the MkDocs hook (``scripts/mkdocs_hooks.py``) and by
``tests/unit/test_docs.py``, which fails when a parameter is undocumented or a documented one is gone.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Subject:
    path: str  # "module:Class" or "module:function"
    title: str
    intro: str
    #: Bad values to try, per parameter; each must make the constructor (or function) raise.
    bad: dict[str, list[Any]] = field(default_factory=dict)
    #: Keyword arguments every call needs (required parameters, or what makes a function check the rest).
    required: dict[str, Any] = field(default_factory=dict)
    #: Where the parameters are described, when not in the subject's own docstring ("module:Class").
    doc_from: str | None = None

    def load(self) -> Callable[..., Any]:
        return _load(self.path)

    def documented(self) -> dict[str, tuple[str, str]]:
        """The subject's parameters as its docstring (or ``doc_from``'s) describes them."""
        return parse_parameters(inspect.getdoc(_load(self.doc_from or self.path)) or "")


def _load(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    obj: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return obj


_INF = float("inf")
_NAN = float("nan")


class _PodApiStandIn:
    """Stands in for the Kubernetes API, so that KubernetesProvider's reference is built without the kubernetes
    package or a cluster (construction makes no call)."""

    def create_namespaced_pod(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    list_namespaced_pod = delete_namespaced_pod = create_namespaced_pod


def _example_function(x: int) -> int:
    """What the decorator subjects decorate, so that their options are checked."""
    return x


SUBJECTS: list[Subject] = [
    Subject(
        "htex_ref.executor:HighThroughputExecutor", "HighThroughputExecutor",
        "The executor. Construction only checks and stores the configuration (an `ExecutorSettings`, whose "
        "docstring describes each parameter); `start()` (or `with`) starts the interchange and the first blocks.",
        doc_from="htex_ref.settings:ExecutorSettings",
        bad={
            "label": ["", "a/b"],
            "provider": ["local"],
            "launch_cmd": ["{nope} --x"],
            "cores_per_worker": [0, "2"],
            "mem_per_worker": [-1],
            "max_workers_per_node": [2.5, -1],
            "cpu_affinity": ["blok", "list:0-3:1"],
            "available_accelerators": [-1, ["a b"]],
            "prefetch_capacity": [-1],
            "heartbeat_threshold": [0],
            "heartbeat_period": [0],
            "drain_period": [0],
            "drain_before_walltime": [0, 60],
            "poll_period": [0, 1.5],
            "manager_selector": ["fastest"],
            "block_error_handler": ["sometimes"],
            "encrypted": ["yes"],
            "strategy": ["auto"],
            "strategy_period": [0],
            "max_idletime": [-1],
            "block_registration_timeout": [0],
            "max_outstanding": [0, 2.5],
            "worker_port": [70000],
            "worker_port_range": [(5, 1)],
            "interchange_launch_cmd": ["python -m htex_ref.interchange"],
            "max_workers": [-1],
            "worker_ports": [(0, 1)],
            "managed": [False],
            "storage_access": [["staging"]],
            "working_dir": ["/scratch"],
            "remote_monitoring_radio": ["udp"],
            "enable_mpi_mode": ["yes"],
            "mpi_launcher": ["jsrun"],
            "mpi_nodes": ["n1", ["n1", "n1"]],
            "mpi_share_nodes": ["no", True],
            "mpi_policy": ["lottery"],
            "cancel_running": ["yes"],
            "task_kill_grace": [-1, "2"],
            "max_retries_on_system_failure": [-1, 1.5],
            "crash_limit": [-2],
            "enforce_memory": [1, True],
            "max_payload_bytes": [0, 1.5],
            "restart_interchange": [1, "yes"],
            "max_interchange_restarts": [-1, 1.5],
            "reconnect_timeout": [0, "60"],
        },
    ),
    Subject(
        "htex_ref.providers.local:LocalProvider", "LocalProvider",
        "Blocks are bash scripts run on this machine, each in its own session.",
        bad={"init_blocks": [-1, 2], "max_blocks": [-1], "nodes_per_block": [0], "parallelism": [2, True],
             "launcher": ["srun"], "worker_init": [3], "cmd_timeout": [0, _INF], "label": [""],
             "cores_per_node": [-1, 2.5], "mem_per_node": [0, _INF], "cancel_grace": [-1, _NAN],
             "walltime": ["1h", "00:61:00", 60]},
    ),
    Subject(
        "htex_ref.providers.slurm:SlurmProvider", "SlurmProvider",
        "Each block is one Slurm batch job submitted with `sbatch`; its state comes from `sacct` or `squeue`. "
        "Construction runs no Slurm command.",
        bad={
            "partition": ["debug ", "", "debug queue"],
            "account": ["", "my account"],
            "qos": ["normal\n", "high prio"],
            "constraint": [" haswell", "knl quad"],
            "clusters": ["c1,c2", "c 1"],
            "nodes_per_block": [0, "2"],
            "cores_per_node": [-1, 0, 2.5],
            "mem_per_node": [0, "4G", _INF],
            "gpus_per_node": [0, "", "a100:2 x"],
            "gres": ["gpu:2 ", "gpu:1 tmp:1"],
            "init_blocks": [-1, 2],
            "min_blocks": [2],
            "max_blocks": [-1],
            "parallelism": [2, -0.5, True],
            "walltime": ["1 hour", "00:61:00", 3600],
            "scheduler_options": ["--exclusive", "#SBATCH --mem=0\nmodule load gcc", "#PBS -l mem=4gb",
                                  "# SBATCH --mem=0", "  #SBATCH --mem=0"],
            "worker_init": [["module load gcc"]],
            "cmd_timeout": [0, _INF, _NAN],
            "exclusive": ["yes"],
            "launcher": ["srun"],
            "label": [""],
            "status_source": ["scontrol"],
            "status_polling_interval": [0],
            "absent_grace": [-1, _NAN],
            "query_failure_limit": [0, -1, _NAN, _INF],
            "regex_job_id": ["Submitted batch job (\\d+)", "(?P<id>"],
            "status_batch_size": [0],
        },
    ),
    Subject(
        "htex_ref.providers.pbspro:PBSProProvider", "PBSProProvider",
        "Each block is one PBS Pro (OpenPBS) job submitted with `qsub`; its state comes from `qstat -f -F json` "
        "(and the job history, `qstat -x`). Construction runs no PBS command.",
        bad={
            "account": ["my project", ""],
            "queue": ["debug queue"],
            "scheduler_options": [["#PBS -l mem=4gb"], "module load gcc", "#SBATCH --mem=4G"],
            "worker_init": [None],
            "nodes_per_block": [0],
            "cpus_per_node": [0, "64"],
            "select_options": ["ngpus=4 mem=100gb"],
            "init_blocks": [-1, 2],
            "min_blocks": [2],
            "max_blocks": [-1],
            "parallelism": [1.5, True],
            "launcher": ["mpiexec"],
            "walltime": ["20 minutes", "00:00:00"],
            "cmd_timeout": [0, _INF],
            "label": [""],
            "status_polling_interval": [0],
            "absent_grace": [-1, _NAN],
            "query_failure_limit": [0, -1, _NAN, _INF],
        },
    ),
    Subject(
        "htex_ref.providers.gridengine:GridEngineProvider", "GridEngineProvider",
        "Each block is one Grid Engine (Son of Grid Engine, Univa/Altair) job submitted with `qsub -terse`; its "
        "state comes from `qstat -xml`, and how it ended from `qacct -j`. Construction runs no Grid Engine command.",
        bad={
            "queue": ["all q", ""],
            "scheduler_options": ["-pe smp 4", " #$ -pe smp 4", "#PBS -l mem=4gb", ["#$ -pe smp 4"]],
            "worker_init": [None],
            "nodes_per_block": [0],
            "init_blocks": [-1, 2],
            "min_blocks": [2],
            "max_blocks": [-1],
            "parallelism": [1.5, True],
            "launcher": ["mpiexec"],
            "walltime": ["20 minutes", "00:00:00"],
            "cmd_timeout": [0, _INF],
            "label": [""],
            "status_polling_interval": [0],
            "absent_grace": [-1, _NAN],
            "query_failure_limit": [0, _NAN],
            "accounting_grace": [-1, _INF],
        },
    ),
    Subject(
        "htex_ref.providers.torque:TorqueProvider", "TorqueProvider",
        "Each block is one Torque job submitted with `qsub` (`-l nodes=N:ppn=P`); its state comes from `qstat -f`. "
        "Construction runs no Torque command.",
        bad={
            "account": ["my project", ""],
            "queue": ["batch queue"],
            "scheduler_options": [["#PBS -l mem=4gb"], "module load gcc", "#SBATCH --mem=4G"],
            "worker_init": [None],
            "nodes_per_block": [0],
            "cpus_per_node": [0, "16"],
            "init_blocks": [-1, 2],
            "min_blocks": [2],
            "max_blocks": [-1],
            "parallelism": [1.5, True],
            "launcher": ["aprun"],
            "walltime": ["20 minutes", "00:00:00"],
            "cmd_timeout": [0, _INF],
            "label": [""],
            "status_polling_interval": [0],
            "absent_grace": [-1, _NAN],
            "query_failure_limit": [0, _NAN],
        },
    ),
    Subject(
        "htex_ref.providers.condor:CondorProvider", "CondorProvider",
        "Each block is one HTCondor vanilla-universe job (a submit description and the job's shell script) submitted "
        "with `condor_submit`; its state comes from `condor_q -json`, and `condor_history -json` once it left the "
        "queue. Construction runs no HTCondor command.",
        bad={
            "nodes_per_block": [2],
            "cores_per_slot": [0, 2.5],
            "mem_per_slot": [0, "4G"],
            "init_blocks": [-1, 2],
            "min_blocks": [2],
            "max_blocks": [-1],
            "parallelism": [1.5],
            "environment": [["A=1"], {"A B": "1"}, {"A": "two\nlines"}],
            "project": ["a\nb"],
            "scheduler_options": ["queue 4", 3],
            "transfer_input_files": ["in.csv", ["a,b"]],
            "walltime": ["10 minutes"],
            "worker_init": [None],
            "launcher": ["srun"],
            "requirements": ["x\ny"],
            "cmd_timeout": [0],
            "label": [""],
            "status_polling_interval": [0],
            "absent_grace": [-1],
            "query_failure_limit": [0],
        },
    ),
    Subject(
        "htex_ref.providers.kubernetes:KubernetesProvider", "KubernetesProvider",
        "Each block is one pod created through the Kubernetes API (the `kubernetes` package, an optional extra, "
        "or any object with the same three calls passed as `api`); its state comes from the pod's phase and "
        "container states. Construction makes no API call.",
        required={"image": "python:3.11", "api": _PodApiStandIn()},
        bad={
            "image": ["", "my image"],
            "namespace": ["Science", ""],
            "nodes_per_block": [2],
            "init_blocks": [-1, 11],
            "min_blocks": [11],
            "max_blocks": [-1],
            "max_cpu": [0, "2"],
            "max_mem": ["lots", "2 Gi"],
            "init_cpu": [0, 3],
            "init_mem": ["1Gi", "0"],
            "parallelism": [2],
            "worker_init": [None],
            "pod_name": ["a b"],
            "user_id": ["root", -1],
            "group_id": ["users"],
            "run_as_non_root": ["yes"],
            "secret": [""],
            "incluster_config": [None],
            "persistent_volumes": [["claim:/data"], [("claim", "data")]],
            "service_account_name": ["a b"],
            "annotations": [{"a": 1}],
            "extra_labels": [{"app": "has spaces"}, {"htex-ref/provider": "x"}],
            "cmd_timeout": [0],
            "label": [""],
            "status_polling_interval": [0],
            "absent_grace": [-1],
            "query_failure_limit": [0],
            "api": [object()],
        },
    ),
    Subject(
        "htex_ref.launchers:SingleNodeLauncher", "SingleNodeLauncher",
        "Starts every worker pool of the block on the node that runs the job script (the `LocalProvider`, "
        "`PBSProProvider` and `GridEngineProvider` default).",
        bad={"fail_on_any": ["yes", 1], "debug": ["yes"]},
    ),
    Subject(
        "htex_ref.launchers:SrunLauncher", "SrunLauncher",
        "One `srun` job step with one task per worker pool (the `SlurmProvider` default).",
        bad={"overrides": [3, "--mpi=none\nhostname"]},
    ),
    Subject(
        "htex_ref.launchers:SrunMPILauncher", "SrunMPILauncher",
        "Concurrent `srun` job steps that share the allocation, each an MPI-style launch (as in Parsl).",
        bad={"overrides": [["--mpi=pmi2"]]},
    ),
    Subject(
        "htex_ref.launchers:MpiExecLauncher", "MpiExecLauncher",
        "One MPICH-style `mpiexec` (Hydra, Intel MPI, Cray PALS) over the job's hosts.",
        bad={"bind_cmd": [None, "--bind-to\nnone", "--bind-to none"], "overrides": [3]},
    ),
    Subject(
        "htex_ref.launchers:MpiRunLauncher", "MpiRunLauncher",
        "One Open MPI-style `mpirun -np N`.",
        bad={"bash_location": ["", "   ", None], "overrides": ["--map-by node\n"]},
    ),
    Subject(
        "htex_ref.launchers:AprunLauncher", "AprunLauncher",
        "One Cray ALPS `aprun`.",
        bad={"overrides": [3]},
    ),
    Subject(
        "htex_ref.launchers:JsrunLauncher", "JsrunLauncher",
        "One IBM LSF `jsrun`.",
        bad={"overrides": [3]},
    ),
    Subject(
        "htex_ref.launchers:WrappedLauncher", "WrappedLauncher",
        "Runs the worker-pool command once, behind a prefix (a container runtime, a wrapper script).",
        bad={"prepend": [None, "module load apptainer\napptainer exec image.sif"]},
    ),
    Subject(
        "htex_ref.config:Config", "Config",
        "What `htex_ref.load(config)` starts for apps. Construction only checks and stores; `load` starts "
        "the executors.",
        bad={
            "executors": [[], ["htex_local"]],
            "retries": [-1, "3"],
            "join_threads": [0],
            "internal_tasks_max_threads": [0],
            "exit_mode": ["kill"],
            "retry_handler": [3],
            "strategy": ["auto"],
            "strategy_period": [0],
            "max_idletime": [-1],
            "run_dir": [""],
            "initialize_logging": ["yes"],
            "app_cache": [True],
            "checkpoint_mode": ["task_exit"],
            "monitoring": ["hub"],
            "usage_tracking": [3],
        },
    ),
    Subject(
        "htex_ref.apps:python_app", "python_app",
        "Decorator: `@python_app` or `@python_app(executors=[...], retries=...)`. Bad options are refused "
        "where the decorator is written, before any call.",
        bad={"function": [3], "executors": ["gpu", [], [""], [3]], "retries": [-1, 1.5]},
        required={"function": _example_function},
    ),
    Subject(
        "htex_ref.apps:bash_app", "bash_app",
        "Decorator for functions that return a command line: `@bash_app` or `@bash_app(executors=[...], "
        "retries=...)`. Bad options are refused where the decorator is written, before any call.",
        bad={"function": [3], "executors": ["gpu", [], [""]], "retries": [-1]},
        required={"function": _example_function},
    ),
    Subject(
        "htex_ref.apps:join_app", "join_app",
        "Decorator for functions that run in this process and return futures: `@join_app` or "
        "`@join_app(retries=...)`. Bad options are refused where the decorator is written, before any call.",
        bad={"function": [3], "retries": [-1]},
        required={"function": _example_function},
    ),
]


def parse_parameters(doc: str) -> dict[str, tuple[str, str]]:
    """The numpy-style ``Parameters`` section of a docstring: name -> (type, description)."""
    lines = doc.splitlines()

    def underline(i: int) -> bool:
        return i < len(lines) and bool(lines[i].strip()) and set(lines[i].strip()) == {"-"}

    out: dict[str, tuple[str, str]] = {}
    starts = [i for i, line in enumerate(lines) if line.strip() == "Parameters" and underline(i + 1)]
    if not starts:
        return out
    name = ""
    i = starts[0] + 2
    while i < len(lines) and not underline(i + 1):
        line = lines[i]
        head = re.match(r"^(\w+) : (.+)$", line)
        if head:
            name = head.group(1)
            out[name] = (head.group(2).strip(), "")
        elif name and line.strip():
            kind, text = out[name]
            out[name] = (kind, f"{text} {line.strip()}".strip())
        i += 1
    return out


def constructor_parameters(cls: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls).parameters
    return {n: p for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def error_for(subject: Subject, name: str, value: Any) -> str:
    cls = subject.load()
    try:
        obj = cls(**{**subject.required, name: value})
    except Exception as e:  # the point is to show whatever the constructor raises
        return f"{type(e).__name__}: {e}"
    shutdown = getattr(obj, "shutdown", None)
    if callable(shutdown):
        shutdown()
    return "(accepted)"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(subject: Subject) -> str:
    cls = subject.load()
    documented = subject.documented()
    rows = ["| parameter | type | default | meaning |", "|---|---|---|---|"]
    for name, param in constructor_parameters(cls).items():
        default = "required" if param.default is inspect.Parameter.empty else f"`{param.default!r}`"
        kind, text = documented.get(name, ("", "(undocumented)"))
        rows.append(f"| `{name}` | {_cell(kind)} | {_cell(default)} | {_cell(text)} |")
    parts = [f"## {subject.title}", "", f"`{subject.path.replace(':', '.')}`. {subject.intro}", "", *rows, ""]
    if subject.bad:
        called = "the constructor" if inspect.isclass(cls) else f"`{subject.title}`"
        errors = ["| parameter | bad value | error raised |", "|---|---|---|"]
        for name, values in subject.bad.items():
            for value in values:
                errors.append(f"| `{name}` | `{value!r}` | `{_cell(error_for(subject, name, value))}` |")
        parts += [f"Bad values, and the error each one gets (produced by calling {called} when these docs "
                  "were built):", "", *errors, ""]
    return "\n".join(parts)


def render_all() -> str:
    head = ("# Configuration reference\n\nGenerated from the code when the docs are built: defaults come from "
            "the signatures, meanings from the docstrings, and every error message below was raised by the "
            "constructor itself.\n\n")
    return head + "\n".join(render(s) for s in SUBJECTS)


if __name__ == "__main__":
    print(render_all())
