"""The pure cores are pure by test: importing one in a fresh interpreter loads no provider, no process,
thread, socket, ZeroMQ or clock module, and their import statements name only the standard library,
the wire format (``htex_ref.protocol``, ``version``, ``framing``, ``errors``) and each other. The
interchange process' entry module may load ZeroMQ, but no provider."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = sorted(p.stem for p in (ROOT / "htex_ref" / "core").glob("*.py") if p.stem != "__init__")
#: What a pure core must not load (``logging`` brings ``threading``; a core returns ``Note``s instead).
FORBIDDEN = ("threading", "time", "socket", "subprocess", "zmq", "logging", "selectors")
#: The htex_ref modules a core may import besides other cores: the wire format and its errors.
ALLOWED = {"htex_ref.protocol", "htex_ref.version", "htex_ref.framing", "htex_ref.errors"}

PROBE = """
import json, sys
# Some of these are loaded by the interpreter itself (zipimport loads time): drop them, so that an
# import by the module under test shows up as a new entry.
for name in {forbidden!r}:
    sys.modules.pop(name, None)
before = set(sys.modules)
import {module}
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def loaded_by(module: str) -> list[str]:
    out = subprocess.run([sys.executable, "-I", "-c", PROBE.format(forbidden=FORBIDDEN, module=module)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    result: list[str] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("name", CORE)
def test_a_core_loads_no_io_module(name: str) -> None:
    loaded = loaded_by(f"htex_ref.core.{name}")
    assert f"htex_ref.core.{name}" in loaded  # the probe works
    bad = [m for m in loaded if m.split(".")[0] in FORBIDDEN or m.startswith("htex_ref.providers")]
    assert bad == [], f"importing htex_ref.core.{name} loads {bad}"


def test_the_probe_sees_a_forbidden_import() -> None:
    # The check above can fail: a module that imports time and threading is caught.
    assert {"time", "threading"} <= set(loaded_by("htex_ref.link"))


def test_the_interchange_process_loads_no_provider() -> None:
    loaded = loaded_by("htex_ref.interchange")
    assert "zmq" in loaded
    assert [m for m in loaded if m.startswith(("htex_ref.providers", "htex_ref.executor", "htex_ref.launchers"))] == []


@pytest.mark.parametrize("name", CORE)
def test_a_core_imports_only_the_standard_library_the_wire_format_and_other_cores(name: str) -> None:
    tree = ast.parse((ROOT / "htex_ref" / "core" / f"{name}.py").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
    ours = {m for m in imported if m.split(".")[0] == "htex_ref"}
    assert {m for m in ours if not m.startswith("htex_ref.core.") and m not in ALLOWED} == set()
    third_party = {m for m in imported - ours if m.split(".")[0] not in sys.stdlib_module_names}
    assert third_party == set()
    assert {m for m in imported if m.split(".")[0] in FORBIDDEN} == set()
