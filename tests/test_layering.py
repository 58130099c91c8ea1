"""The library (hfkd/ outside hfkd/app/) never imports the application layer (hfkd.app)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hfkd"
# `python -m hfkd` (__main__.py) is the command line, the application layer's entry point.
LIBRARY = sorted(p for p in PACKAGE.rglob("*.py")
                 if "app" not in p.relative_to(PACKAGE).parts[:1] and p.relative_to(PACKAGE) != Path("__main__.py"))


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # from hfkd import app
    return names


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_module_does_not_import_app(path: Path) -> None:
    assert not {m for m in _imported_modules(path) if m == "hfkd.app" or m.startswith("hfkd.app.")}
