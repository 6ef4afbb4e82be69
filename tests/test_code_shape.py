"""The code's shape, held by a test: small functions in the engine and the built-in plugins."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
SOURCES = sorted([*(REPO / "tlkit").rglob("*.py"), *(REPO / "tlkit_plugins").rglob("*.py")])


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None
        if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_function_is_longer_than_the_limit(path: Path) -> None:
    assert not _long_functions(path), f"split these (limit {MAX_FUNCTION_LINES} lines): {_long_functions(path)}"


def test_the_engine_run_is_a_short_composition() -> None:
    tree = ast.parse((REPO / "tlkit" / "run" / "engine.py").read_text(encoding="utf-8"))
    (run,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"]
    assert run.end_lineno is not None and run.end_lineno - run.lineno + 1 <= 40
