"""``tlkit new-plugin NAME``: write a plugin package skeleton whose own tests pass as generated.

The skeleton (``plugin_template/*.tmpl``, package data) is a pyproject with the ``tlkit`` entry point,
one backbone, one data set loader and one head using public names only, tests built on
``tlkit.testing``, and a README. Names come from NAME: the folder ``NAME``, the distribution
``tlkit-NAME``, the module ``tlkit_NAME`` and the entries ``NAME_cnn``, ``NAME_csv``, ``NAME_centroid``
(so ``tlkit backbones 'NAME*'`` finds them). The package is written beside its final place and moved
there in one rename: an interrupted run leaves nothing half-written, and an existing folder is never
touched. Standard library only (no torch): it runs before any plugin exists.
"""

from __future__ import annotations

import keyword
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tlkit import __version__
from tlkit.contract.plugin_api import PLUGIN_API_VERSION
from tlkit.errors import TlkitError

TEMPLATE_DIR = Path(__file__).resolve().parent / "plugin_template"
_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
MAX_NAME = 40


@dataclass(frozen=True)
class PluginNames:
    """Every name the skeleton uses, derived from NAME."""

    name: str  # the folder
    dist: str  # the distribution (pip install, tlkit plugins)
    module: str  # the import name
    prefix: str  # the entries' common prefix

    @classmethod
    def of(cls, name: str) -> PluginNames:
        """Names for ``name``; anything but a lower-case package name is one line saying what is allowed."""
        if len(name) > MAX_NAME or not _NAME.fullmatch(name):
            shown = name if len(name) <= MAX_NAME else name[:MAX_NAME] + "..."
            raise TlkitError(
                f"'{shown}' is not a valid plugin package name: use lower-case letters, digits and single - or _ "
                f"between them, starting with a letter (at most {MAX_NAME} characters), e.g. 'demo' or 'my-backbones'"
            )
        prefix = name.replace("-", "_")
        if keyword.iskeyword(prefix):
            raise TlkitError(f"'{name}' is a Python keyword; choose another plugin name")
        bare = re.sub(r"^tlkit[-_]", "", name) or name
        dist = name if bare != name else f"tlkit-{name}"
        return cls(name=name, dist=dist, module=dist.replace("-", "_"), prefix=bare.replace("-", "_"))


def _render(text: str, names: PluginNames) -> str:
    values = {**vars(names), "tlkit_version": __version__, "plugin_api": str(PLUGIN_API_VERSION)}
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _files(names: PluginNames) -> dict[str, str]:
    """Relative path -> text of every file in the skeleton."""
    layout = {
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README.md.tmpl",
        f"{names.module}/__init__.py": "plugin.py.tmpl",
        f"tests/test_{names.module}.py": "test_plugin.py.tmpl",
    }
    return {path: _render((TEMPLATE_DIR / template).read_text(encoding="utf-8"), names) for path, template in layout.items()}


def new_plugin(name: str, parent: Path) -> tuple[Path, PluginNames]:
    """Write the skeleton for ``name`` as ``parent/name``; refuse a bad name or a path that exists."""
    names = PluginNames.of(name)
    target = parent / names.name
    if target.exists() or target.is_symlink():
        raise TlkitError(f"{target} already exists; choose another name or remove it first")
    if not parent.is_dir():
        raise TlkitError(f"{parent} is not a folder; create it or run tlkit new-plugin elsewhere")
    staging = parent / f".{names.name}.tlkit-new"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for relative, text in _files(names).items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        staging.rename(target)  # one step; a non-empty folder made there meanwhile is never overwritten (rename fails)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise TlkitError(f"cannot write {target} ({exc.strerror or exc}); choose another folder") from None
    return target, names
