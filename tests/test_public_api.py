"""Plugin code uses only public tlkit names: the example plugin, the built-in plugins (``tlkit_plugins``)
and the plugin page (docs/plugins.md) are held to it, so each is an example a plugin author can copy.

Public: the names in ``tlkit.__all__`` and the modules ``tlkit.backbones``, ``tlkit.errors``,
``tlkit.fitting`` and ``tlkit.testing`` (their ``__all__`` where they have one, else their
non-underscore names). Never ``tlkit_plugins`` (the built-ins' own package) or a ``_`` name.
"""

from __future__ import annotations

import ast
import importlib
import re
import types
from pathlib import Path

import pytest

import tlkit
import tlkit.testing

REPO = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = ("backbones", "errors", "fitting", "testing")
EXAMPLES = sorted((REPO / "examples").rglob("*.py"))
BUILTINS = sorted((REPO / "tlkit_plugins").rglob("*.py"))


def _public_names(module: str) -> set[str]:
    mod = importlib.import_module(f"tlkit.{module}")
    return set(getattr(mod, "__all__", None) or (n for n in vars(mod) if not n.startswith("_")))


def _check_chain(parts: list[str], where: str) -> list[str]:
    """``tlkit.a.b``: ``a`` public at the top, ``b`` public in module ``a``."""
    if not parts:
        return []
    head = parts[0]
    if head.startswith("_") or (head not in tlkit.__all__ and head not in PUBLIC_MODULES):
        return [f"{where}: tlkit.{head} is not public"]
    if head in PUBLIC_MODULES and len(parts) > 1 and parts[1] not in _public_names(head):
        return [f"{where}: tlkit.{head}.{parts[1]} is not public"]
    return []


def _attribute_chain(node: ast.Attribute) -> list[str] | None:
    parts: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    if isinstance(current, ast.Name) and current.id == "tlkit":
        return parts[::-1]
    return None


def private_uses(source: str, where: str) -> list[str]:
    """Every import or attribute use of a name plugin code must not rely on."""
    problems: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, *rest = alias.name.split(".")
                if top == "tlkit_plugins":
                    problems.append(f"{where}: imports {alias.name}")
                elif top == "tlkit":
                    problems += _check_chain(rest, where)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top, *rest = node.module.split(".")
            if top == "tlkit_plugins":
                problems.append(f"{where}: imports from {node.module}")
            elif top == "tlkit":
                for alias in node.names:
                    problems += _check_chain([*rest, alias.name], where)
        elif isinstance(node, ast.Attribute):
            chain = _attribute_chain(node)
            if chain and isinstance(getattr(node, "ctx", None), ast.Load):
                problems += _check_chain(chain, where)
    return sorted(set(problems))


def readme_plugin_blocks() -> list[str]:
    """The python blocks of the plugin-writing page (once the README's "Writing a plugin" section)."""
    text = (REPO / "docs" / "plugins.md").read_text()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def test_the_checker_catches_private_names() -> None:
    bad = (
        "import tlkit_plugins.backbones.timm_models\n"
        "from tlkit_plugins.backbones.efficientnet_lite import build_lite0\n"
        "from tlkit.sources.weights import load_into\n"
        "from tlkit.backbones import _reinitialise\n"
        "import tlkit\n"
        "x = tlkit.run.engine.run\n"
    )
    assert len(private_uses(bad, "bad.py")) == 5
    good = "import tlkit\nimport tlkit.testing\nfrom tlkit.errors import DataError\nspec = tlkit.backbones.derived_spec\nr = tlkit.WeightsRequest.random()\n"
    assert private_uses(good, "good.py") == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_the_example_plugin_uses_only_public_names(path: Path) -> None:
    assert private_uses(path.read_text(), str(path.relative_to(REPO))) == []


@pytest.mark.parametrize("path", BUILTINS, ids=lambda p: str(p.relative_to(REPO)))
def test_the_builtin_plugins_use_only_public_names(path: Path) -> None:
    """Importing a sibling built-in would count as private too: each built-in stands alone, as a third-party plugin does."""
    assert private_uses(path.read_text(), str(path.relative_to(REPO))) == []


def test_every_builtin_plugin_module_is_checked() -> None:
    from tlkit.contract.plugin_manager import DEFAULT_PLUGINS

    checked = {".".join(p.relative_to(REPO).with_suffix("").parts) for p in BUILTINS}
    assert set(DEFAULT_PLUGINS) <= checked


def test_the_readme_plugin_code_uses_only_public_names() -> None:
    blocks = readme_plugin_blocks()
    assert len(blocks) >= 5
    problems = [p for i, block in enumerate(blocks) for p in private_uses(block, f"docs/plugins.md block {i + 1}")]
    assert problems == []


def test_every_public_name_exists() -> None:
    for name in tlkit.__all__:
        assert hasattr(tlkit, name), name
    for module in PUBLIC_MODULES:
        mod = importlib.import_module(f"tlkit.{module}")
        for name in getattr(mod, "__all__", []):
            assert hasattr(mod, name), f"tlkit.{module}.{name}"


def test_the_readme_backbone_helpers_example_runs(plugins) -> None:
    """The second register_backbones example (derived_spec, timm_backbone) builds real backbones."""
    (block,) = [b for b in readme_plugin_blocks() if "derived_spec(" in b]
    module = types.ModuleType("readme_helpers")
    exec(compile(block, "README", "exec"), module.__dict__)
    loaded = tlkit.testing.load_plugin(module)
    assert tlkit.testing.check_backbone("resnet18_layer3", plugins=loaded, images=2).feature_dim == 256
    assert tlkit.testing.check_backbone("atto", plugins=loaded, images=2).feature_dim == 320
