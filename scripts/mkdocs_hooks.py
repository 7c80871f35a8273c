"""MkDocs hooks: add the generated configuration reference as a page (nothing is written to docs/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

_HERE = Path(__file__).resolve().parent


def _docgen() -> Any:
    spec = importlib.util.spec_from_file_location("htex_docgen", _HERE / "docgen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["htex_docgen"] = module
    spec.loader.exec_module(module)
    return module


def on_files(files: Files, config: Any) -> Files:
    content = _docgen().render_all()
    files.append(File.generated(config, "reference/configuration.md", content=content))
    return files
