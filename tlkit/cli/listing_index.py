"""The listings kept on disk, so ``tlkit backbones|datasets|heads`` answer without importing torch.

Listing means loading every plugin: importing torchvision and timm (so torch: over a second before
the first row) and asking the plugins about ~3,400 backbones. What they answer changes only when the installed
code or the weights on disk change, so the rows are kept in one JSON file under tlkit's cache
folder, keyed by a fingerprint of exactly that:

- the folders on ``sys.path`` after the program's own (installing, upgrading or removing a package changes their listing,
  so their modification time) and the source files of tlkit and its built-in plugins (an editable
  checkout being edited);
- the environment variables that choose plugins or where weights are found;
- the folders where weights are found (torch hub checkpoints, timm's folder in it, the Hugging Face
  cache): a download changes them, and with them the "offline weights" column.

A third-party plugin whose ``weights_available`` looks somewhere else is answered as of the last
time the listing was built (any install, upgrade or download above rebuilds it). A fingerprint that
differs, a file whose checksum does not match, plugin tracing switched on: the rows come from the
plugins, and are saved again when every plugin loaded. What prints is the same either way.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tlkit.util.atomic import write_atomic
from tlkit.util.hashing import json_sha256
from tlkit.util.locations import CATALOG_DIR, cache_root

FORMAT = 1
FOLDER = CATALOG_DIR
KEEP = 4  # listings of other environments sharing the cache folder (venvs), newest first
ENV_VARS = (
    "TLKIT_LOAD_PLUGINS",
    "TORCH_HOME",
    "XDG_CACHE_HOME",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
)


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: ``$TORCH_HOME/hub``, ``$XDG_CACHE_HOME/torch/hub``
    or ``~/.cache/torch/hub`` (torch's own order; a test holds the two equal)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub"


def _weights_folders() -> list[Path]:
    from huggingface_hub import constants  # a module of constants: no network, no torch

    checkpoints = torch_hub_dir() / "checkpoints"
    return [checkpoints, checkpoints / "timm", Path(constants.HF_HUB_CACHE)]


def _stamp(path: Path) -> list[Any]:
    try:
        info = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), info.st_mtime_ns, info.st_size]


def _source_files() -> Iterator[Path]:
    """tlkit's and the built-in plugins' Python files (what an editable checkout changes)."""
    import importlib.util

    folders = [Path(__file__).resolve().parent]
    spec = importlib.util.find_spec("tlkit_plugins")
    folders += [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for folder in folders:
        yield from sorted(folder.rglob("*.py"))


def fingerprint() -> str:
    """sha256 over everything the listing depends on (see the module docstring)."""
    from tlkit import __version__

    parts = {
        "format": FORMAT,
        "tlkit": __version__,
        "python": sys.version,
        # sys.path[0] is the program's own folder (or the working directory under -m), not where packages install
        "sys.path": [_stamp(Path(p)) for p in sys.path[1:] if p and os.path.isdir(p)],
        "sources": [_stamp(p) for p in _source_files()],
        "env": {name: os.environ.get(name) for name in ENV_VARS},
        "weights": [_stamp(p) for p in _weights_folders()],
    }
    return json_sha256(parts)


def _path(key: str) -> Path:
    return cache_root() / FOLDER / f"listings-{key[:32]}.json"


def load(key: str) -> dict[str, list[dict[str, Any]]] | None:
    """The saved entries per kind (``{"backbones": [{"hidden": bool, "row": {...}}, ...], ...}``) for ``key``; ``None`` when absent or damaged."""
    try:
        saved = json.loads(_path(key).read_text())
        entries = saved["entries"]
        if saved.get("format") == FORMAT and saved.get("key") == key and saved.get("sha256") == json_sha256(entries):
            return dict(entries)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def save(key: str, entries: dict[str, list[dict[str, Any]]]) -> None:
    """Keep ``entries`` for ``key``, atomically; an unwritable cache folder only means the next listing is slow too."""
    path = _path(key)
    data = {"format": FORMAT, "key": key, "sha256": json_sha256(entries), "entries": entries}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(data).encode())
        older = sorted(path.parent.glob("listings-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in older[KEEP:]:
            stale.unlink(missing_ok=True)
    except OSError:
        pass
