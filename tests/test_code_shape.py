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


def _calls(path: Path) -> set[str]:
    """Dotted names of everything ``path`` calls (``engine.run``, ``stages.fit``, ``run_dir.commit``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            names.add(ast.unparse(node.func))
    return names


def test_the_run_is_composed_once() -> None:
    """The CLI calls engine.run, which alone enters the ranks' path; fit/evaluate/write/commit happen in finish only,
    which the one-process path, the ranks and compare all call."""
    assert "engine.run" in _calls(REPO / "tlkit" / "cli" / "app.py")
    tail = {"stages.fit", "stages.evaluate", "run_dir.commit"}
    for path in SOURCES:
        calls = _calls(path)
        name = str(path.relative_to(REPO))
        if name != "tlkit/run/engine.py":
            assert "run_ranks" not in calls, f"{name} enters the ranks' path past engine.run"
        if name != "tlkit/run/finish.py" and path.parent.name == "run":
            assert not calls & tail, f"{name} has its own copy of the run's tail: {sorted(calls & tail)}"
            assert "from tlkit.run.write import" not in path.read_text(encoding="utf-8"), f"{name} writes a run directory itself"
    for name in ("engine.py", "launch.py", "compare.py"):
        assert "finish" in _calls(REPO / "tlkit" / "run" / name), name


def test_no_any_on_the_engine_to_plugin_path() -> None:
    """What the engine hands a plugin, and the records it hands them through, are typed (generic specs and Choice)."""
    from tlkit.contract.specs import BackboneSpec, DatasetSpec, HeadSpec, TrainedHead
    from tlkit.extract.cache import CacheIdentity, open_store
    from tlkit.extract.runtimes.stage import RuntimeRequest, runtime_for
    from tlkit.recipe.loader import Choice, Recipe
    from tlkit.saved.manifest import RunManifest

    annotations = {
        **{f"BackboneSpec.{k}": v for k, v in BackboneSpec.__annotations__.items()},
        **{f"DatasetSpec.{k}": v for k, v in DatasetSpec.__annotations__.items()},
        **{f"HeadSpec.{k}": v for k, v in HeadSpec.__annotations__.items()},
        **{f"TrainedHead.{k}": v for k, v in TrainedHead.__annotations__.items()},
        **{f"RunManifest.{k}": v for k, v in RunManifest.__annotations__.items()},
        **{f"Choice.{k}": v for k, v in Choice.__annotations__.items()},
        **{f"Recipe.{k}": v for k, v in Recipe.__annotations__.items() if k in ("dataset", "backbone", "head")},
        **{f"CacheIdentity.{k}": v for k, v in CacheIdentity.__annotations__.items()},
        **{f"RuntimeRequest.{k}": v for k, v in RuntimeRequest.__annotations__.items()},
        **{f"runtime_for.{k}": v for k, v in runtime_for.__annotations__.items()},
        **{f"open_store.{k}": v for k, v in open_store.__annotations__.items()},
    }
    assert len(annotations) > 30
    untyped = {name: text for name, text in annotations.items() if "Any" in str(text)}
    assert not untyped, untyped
