"""Generates the configuration reference from the code itself, so it cannot drift from it.

For every public configurable class: each constructor parameter with its default (from the signature),
its description (from the ``Parameters`` section of the class docstring) and, for a sample of bad values,
the exact error the constructor raises (by calling it). Used by the MkDocs hook (``scripts/mkdocs_hooks.py``)
and by ``tests/unit/test_docs.py``, which fails when a parameter is undocumented or a documented one is gone.
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
    path: str  # "module:Class"
    title: str
    intro: str
    #: Bad values to try, per parameter; each must make the constructor raise.
    bad: dict[str, list[Any]] = field(default_factory=dict)
    #: Keyword arguments every call needs (required parameters).
    required: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Callable[..., Any]:
        module, _, name = self.path.partition(":")
        obj: Callable[..., Any] = getattr(importlib.import_module(module), name)
        return obj


SUBJECTS: list[Subject] = [
    Subject(
        "htex_ref.executor:HighThroughputExecutor", "HighThroughputExecutor",
        "The executor. Construction only checks and stores the configuration; `start()` (or the first "
        "`submit`, or `with`) starts the interchange and the first blocks.",
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
            "poll_period": [0, 1.5],
            "manager_selector": ["fastest"],
            "block_error_handler": ["sometimes"],
            "encrypted": ["yes"],
            "strategy": ["auto"],
            "strategy_period": [0],
            "max_idletime": [-1],
            "block_registration_timeout": [0],
            "worker_port": [70000],
            "worker_port_range": [(5, 1)],
        },
    ),
    Subject(
        "htex_ref.providers.local:LocalProvider", "LocalProvider",
        "Blocks are bash scripts run on this machine, each in its own session.",
        bad={"init_blocks": [-1], "max_blocks": [-1], "nodes_per_block": [0], "parallelism": [2],
             "launcher": ["srun"]},
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
    documented = parse_parameters(inspect.getdoc(cls) or "")
    rows = ["| parameter | type | default | meaning |", "|---|---|---|---|"]
    for name, param in constructor_parameters(cls).items():
        default = "required" if param.default is inspect.Parameter.empty else f"`{param.default!r}`"
        kind, text = documented.get(name, ("", "(undocumented)"))
        rows.append(f"| `{name}` | {_cell(kind)} | {_cell(default)} | {_cell(text)} |")
    errors = ["| parameter | bad value | error raised at construction |", "|---|---|---|"]
    for name, values in subject.bad.items():
        for value in values:
            errors.append(f"| `{name}` | `{value!r}` | `{_cell(error_for(subject, name, value))}` |")
    return "\n".join([
        f"## {subject.title}", "", f"`{subject.path.replace(':', '.')}`. {subject.intro}", "",
        *rows, "", "Bad values, and the error each one gets (produced by calling the constructor when these "
        "docs were built):", "", *errors, "",
    ])


def render_all() -> str:
    head = ("# Configuration reference\n\nGenerated from the code when the docs are built: defaults come from "
            "the signatures, meanings from the docstrings, and every error message below was raised by the "
            "constructor itself.\n\n")
    return head + "\n".join(render(s) for s in SUBJECTS)


if __name__ == "__main__":
    print(render_all())
