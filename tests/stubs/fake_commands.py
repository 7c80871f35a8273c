"""Executables on PATH whose behaviour a test writes as a few lines of bash, for driving a provider's real
command runner without a scheduler: every call is appended to ``calls.log`` as one line ``name args...``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


class FakeCommands:
    def __init__(self, root: Path) -> None:
        self.bin = root / "fake-bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.calls_log = root / "calls.log"
        self.calls_log.touch()

    def command(self, name: str, body: str) -> None:
        """(Re)define ``name``: bash that runs after the call is logged."""
        path = self.bin / name
        path.write_text(f'#!/bin/bash\necho "{name} $*" >> "{self.calls_log}"\n{body}\n')
        path.chmod(0o755)

    def prints(self, name: str, stdout: str = "", stderr: str = "", code: int = 0) -> None:
        """(Re)define ``name`` to print fixed text and exit with ``code``."""
        stdout, stderr = (t if not t or t.endswith("\n") else t + "\n" for t in (stdout, stderr))
        self.command(name, f"cat <<'HTEX_OUT'\n{stdout}HTEX_OUT\ncat >&2 <<'HTEX_ERR'\n{stderr}HTEX_ERR\nexit {code}")

    def calls(self, name: str | None = None) -> list[str]:
        lines = self.calls_log.read_text().splitlines()
        return [x for x in lines if name is None or x.split()[0] == name]


def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCommands:
    fake = FakeCommands(tmp_path)
    monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ['PATH']}")
    return fake
