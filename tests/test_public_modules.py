"""Each public module declares its surface with ``__all__``, and docs/plugin-api.md lists exactly it.

``tlkit.fitting`` once exposed ``torch``, ``math`` and ``dataclass`` as if they were its own: a
module's imports are not its API. Held here: ``__all__`` names exist, everything the module itself
defines without a leading underscore is in ``__all__``, and the table on the plugin API page agrees.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODULES = ("backbones", "errors", "fitting", "testing")


def _documented() -> dict[str, set[str]]:
    text = (REPO / "docs" / "plugin-api.md").read_text()
    rows = re.findall(r"^\| `tlkit\.(\w+)` \| (.+) \|$", text, flags=re.MULTILINE)
    return {module: set(re.findall(r"`(\w+)`", names)) for module, names in rows}


@pytest.mark.parametrize("name", MODULES)
def test_a_public_module_declares_its_names(name: str) -> None:
    module = importlib.import_module(f"tlkit.{name}")
    declared = getattr(module, "__all__", None)
    assert isinstance(declared, list) and declared and len(set(declared)) == len(declared)
    assert [n for n in declared if not hasattr(module, n)] == []
    own = {n for n, v in vars(module).items() if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__}
    assert sorted(own - set(declared)) == [], f"tlkit.{name} defines public-looking names missing from __all__"
    assert not {"torch", "math", "dataclass", "annotations"} & set(declared)


@pytest.mark.parametrize("name", MODULES)
def test_the_plugin_api_page_lists_each_module_exactly(name: str) -> None:
    module = importlib.import_module(f"tlkit.{name}")
    assert _documented().get(name) == set(module.__all__)


def test_shardmember_named_in_the_docs_is_public() -> None:
    import tlkit

    assert "ShardMember" in tlkit.__all__ and tlkit.ShardMember.__name__ == "ShardMember"
