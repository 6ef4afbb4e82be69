"""The house's arrows, held: the import-linter contracts (pyproject.toml) and a torch-free CLI and util.

Each check runs against a source tree given by its folder, so the same check is also run against a copy
with one arrow turned the wrong way: that copy must fail, naming the arrow (a check that cannot fail
holds nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Imported at module level by `tlkit --help` and `tlkit backbones`: none of them may bring in torch.
TORCH_FREE_PACKAGES = ("tlkit/cli", "tlkit/util")
TORCH_FREE_MODULES = ("tlkit", "tlkit.errors")

# Runs in a fresh interpreter: imports each named module and, at the first import of torch (or of a
# library that imports it), notes the last frame inside the source tree, so a failure names the line.
_PROBE = """
import importlib, sys, traceback
root, names = sys.argv[1], sys.argv[2:]
first = []

class Watch:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm") and not first:
            first.append([f for f in traceback.extract_stack() if f.filename.startswith(root)])
        return None

sys.meta_path.insert(0, Watch)
import tlkit
if not tlkit.__file__.startswith(root):
    sys.exit(f"tlkit came from {tlkit.__file__}, not from {root}")
for name in names:
    importlib.import_module(name)
    if first or "torch" in sys.modules:
        frame = (first[0] or [None])[-1] if first else None
        where = f"{frame.filename}:{frame.lineno} ({frame.line})" if frame else "unknown line"
        sys.exit(f"importing {name} imports torch at module level: {where}")
print(f"{len(names)} modules imported without torch")
"""


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root)}


def _torch_free_modules(root: Path) -> list[str]:
    names = list(TORCH_FREE_MODULES)
    for package in TORCH_FREE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _torch_free_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROBE, str(root), *_torch_free_modules(root)],
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", command, "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy_of_the_sources(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for package in ("tlkit", "tlkit_plugins"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def _add_line(path: Path, line: str) -> None:
    """Put ``line`` right after the module's ``from __future__`` import (module level, where it counts)."""
    text = path.read_text(encoding="utf-8")
    anchor = "from __future__ import annotations\n"
    assert anchor in text, f"{path} has no future import to anchor the line on"
    path.write_text(text.replace(anchor, anchor + line + "\n", 1), encoding="utf-8")


def test_the_import_contracts_hold() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_cli_and_util_modules_import_no_torch() -> None:
    result = _torch_free_check(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tlkit.cli.app" in _torch_free_modules(REPO) and "tlkit.util.units" in _torch_free_modules(REPO)


@pytest.mark.parametrize(
    ("module", "line", "named"),
    [
        ("tlkit/util/units.py", "import tlkit.cli.app", "tlkit.util is not allowed to import tlkit.cli"),
        ("tlkit/contract/specs.py", "from tlkit.sources import weights", "tlkit.contract is not allowed to import tlkit.sources"),
        ("tlkit/saved/splits.py", "import tlkit.recipe.loader", "tlkit.saved is not allowed to import tlkit.recipe"),
        ("tlkit/extract/decode.py", "import tlkit.finetune.settings", "tlkit.extract is not allowed to import tlkit.finetune"),
        ("tlkit/sources/weights.py", "import tlkit_plugins.heads.linear", "tlkit is not allowed to import tlkit_plugins"),
        ("tlkit/util/atomic.py", "import torch", "tlkit.util is not allowed to import torch"),
        ("tlkit_plugins/heads/linear.py", "from tlkit.sources import archives", "tlkit_plugins is not allowed to import tlkit.sources"),
    ],
)
def test_an_arrow_the_wrong_way_breaks_the_contracts(tmp_path: Path, module: str, line: str, named: str) -> None:
    root = _copy_of_the_sources(tmp_path)
    _add_line(root / module, line)
    result = _lint_imports(root)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert named in output, output
    importer = module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> " in output, output


def test_torch_at_module_level_in_the_cli_breaks_the_torch_free_check(tmp_path: Path) -> None:
    root = _copy_of_the_sources(tmp_path)
    _add_line(root / "tlkit" / "cli" / "console.py", "import torch")
    result = _torch_free_check(root)
    assert result.returncode != 0, result.stdout
    assert "imports torch at module level" in result.stderr, result.stderr
    assert f"{root / 'tlkit' / 'cli' / 'console.py'}:" in result.stderr and "(import torch)" in result.stderr, result.stderr
