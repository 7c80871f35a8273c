"""The configuration reference is generated from the code: every parameter documented, every bad value refused."""

from __future__ import annotations

import importlib.util
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
    documented = set(subject.documented())
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


#: Pages the MkDocs hook adds at build time (scripts/mkdocs_hooks.py): links to them are fine.
GENERATED = {ROOT / "docs" / "reference" / "configuration.md"}
#: ``[text](target)`` and ``![alt](target)``, outside code; the target ends at the first space or ``)``.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCED = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCED.sub("", path.read_text()))
    return [t for t in LINK.findall(text) if "://" not in t and not t.startswith("mailto:")]


_anchor_cache: dict[Path, set[str]] = {}


def _anchors(path: Path) -> set[str]:
    """The ids MkDocs gives the headings of ``path`` (its toc extension, as configured in mkdocs.yml)."""
    if path not in _anchor_cache:
        import markdown

        md = markdown.Markdown(extensions=["toc", "tables", "fenced_code"])
        md.convert(path.read_text())
        ids: set[str] = set()
        stack = list(md.toc_tokens)
        while stack:
            token = stack.pop()
            ids.add(token["id"])
            stack.extend(token["children"])
        _anchor_cache[path] = ids
    return _anchor_cache[path]


def broken_links(path: Path) -> list[str]:
    """Relative links in ``path`` whose file does not exist, or whose ``#anchor`` no heading there makes."""
    broken = []
    for link in _links(path):
        target, _, anchor = link.partition("#")
        dest = (path.parent / target).resolve() if target else path
        shown = dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest
        if dest not in GENERATED and not dest.exists():
            broken.append(f"{link}: no file {shown}")
        elif anchor and dest.suffix == ".md" and dest not in GENERATED and anchor not in _anchors(dest):
            broken.append(f"{link}: no heading with id {anchor!r} in {shown}")
    return broken


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files_and_headings_that_exist(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_check_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md) [ok](other.md#a-section) [ok](#page) [ext](https://example.org/x)\n"
                    "[gone](missing.md) [bad anchor](other.md#no-such) `[in code](nowhere.md)`\n\n"
                    "```\n[in a fence](nowhere.md)\n```\n")
    _anchor_cache.clear()
    found = broken_links(page)
    assert [b.split(":")[0] for b in found] == ["missing.md", "other.md#no-such"], found


def test_readme_links_to_the_docs() -> None:
    assert any(link.startswith("docs/") for link in _links(ROOT / "README.md"))


def test_every_no_run_example_says_why() -> None:
    for page in _pages():
        for reason in re.findall(r"<!-- no-run(.*?)-->", page.read_text()):
            assert reason.strip(" :"), f"{page.relative_to(ROOT)}: a no-run marker without a reason"


def test_every_parsl_test_that_cannot_run_on_the_adapter_is_listed_with_its_reason() -> None:
    from tests.parsl_suite.run import CANNOT_RUN

    rows = [line for line in (Path(__file__).resolve().parents[2] / "docs" / "differences-from-parsl.md")
            .read_text().splitlines() if line.startswith("| test_")]
    listed = {row.split("|")[1].strip(): row.split("|")[2].strip() for row in rows}
    assert set(listed) == set(CANNOT_RUN)
    for test, why in CANNOT_RUN.items():
        # The page formats names as code; the words are the same.
        assert listed[test].replace("`", "") == why, test
