"""The configuration reference is generated from the code: every parameter documented, every bad value refused."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _docgen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("htex_docgen_test", ROOT / "scripts" / "docgen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["htex_docgen_test"] = module
    spec.loader.exec_module(module)
    return module


docgen = _docgen()


@pytest.mark.parametrize("subject", docgen.SUBJECTS, ids=lambda s: s.title)
def test_every_parameter_is_documented_and_every_documented_one_exists(subject: Any) -> None:
    cls = subject.load()
    documented = set(docgen.parse_parameters(inspect.getdoc(cls) or ""))
    actual = set(docgen.constructor_parameters(cls))
    assert actual - documented == set(), f"{subject.title}: parameters without a docstring entry"
    assert documented - actual == set(), f"{subject.title}: docstring documents parameters that do not exist"


@pytest.mark.parametrize("subject", docgen.SUBJECTS, ids=lambda s: s.title)
def test_every_listed_bad_value_is_refused_with_a_message_naming_the_parameter(subject: Any) -> None:
    for name, values in subject.bad.items():
        for value in values:
            message = docgen.error_for(subject, name, value)
            assert message != "(accepted)", f"{subject.title}({name}={value!r}) was accepted"
            assert name in message or name.rstrip("s") in message, message


def test_parameters_parser_reads_a_numpy_section() -> None:
    doc = ("Summary.\n\nParameters\n----------\na : int\n    First\n    line two.\nb : str\n    Second.\n\n"
           "Notes\n-----\nx\n")
    assert docgen.parse_parameters(doc) == {"a": ("int", "First line two."), "b": ("str", "Second.")}


def test_readme_links_to_files_that_exist() -> None:
    text = (ROOT / "README.md").read_text()
    targets = [t for t in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text) if "://" not in t]
    assert targets, "the README should link to the docs"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert missing == []
