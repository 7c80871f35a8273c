"""Python examples in the README and the docs run, so they stay true.

Every fenced ``python`` block runs in a fresh interpreter, unless the line just before it is an HTML
comment ``<!-- no-run: reason -->`` (for code that needs a real cluster, say). It runs in a scratch
directory that holds a link to the repository's ``examples/``, so an example may name
``examples/scenarios/smoke.toml`` as a reader in the repository root would, and whatever it writes is
thrown away.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)


def examples() -> list[tuple[str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = "\n" + path.read_text()
        for n, match in enumerate(FENCE.finditer(text)):
            if match.group("before").strip().startswith("<!-- no-run"):
                continue
            found.append((f"{path.relative_to(ROOT)}-{n}", match.group("code")))
    return found


@pytest.mark.e2e
@pytest.mark.parametrize(("where", "code"), examples(), ids=[w for w, _ in examples()])
def test_documented_example_runs(where: str, code: str, tmp_path: Path) -> None:
    # Examples are written to run from the repository root; their own output stays in tmp_path.
    (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{where} failed:\n{proc.stdout}\n{proc.stderr}"


def test_examples_are_found() -> None:
    assert any(w.startswith("README.md") for w, _ in examples())
