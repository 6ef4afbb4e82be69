"""What the installed code and the downloaded weights look like, cheaply: stamps, not contents.

Two answers are kept across processes until the installation changes: the plugin listings
(:mod:`tlkit.cli.listing_index`) and the warm rerun's memo (:mod:`tlkit.run.warm`). Both are keyed by
:func:`installation`: the folders on ``sys.path`` after the program's own (installing, upgrading or
removing a package changes their listing, so their modification time), the source files of tlkit and
its built-in plugins (an editable checkout being edited), the environment variables that choose
plugins or where weights are found, and the folders where weights are found (a download changes them).
Nothing here imports torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ENV_VARS = ("TLKIT_LOAD_PLUGINS", "TORCH_HOME", "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")


def file_stamp(path: str | Path) -> list[Any]:
    """A file or folder as something kept depends on it: path, modification time and size (``None`` when unreadable)."""
    try:
        info = os.stat(path)
    except OSError:
        return [str(path), None]
    return [str(path), info.st_mtime_ns, info.st_size]


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: ``$TORCH_HOME/hub``, ``$XDG_CACHE_HOME/torch/hub``
    or ``~/.cache/torch/hub`` (torch's own order; a test holds the two equal)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub"


def weights_folders() -> list[Path]:
    """Where downloaded weights land: torch hub checkpoints, timm's folder in it, the Hugging Face cache."""
    from huggingface_hub import constants  # a module of constants: no network, no torch

    checkpoints = torch_hub_dir() / "checkpoints"
    return [checkpoints, checkpoints / "timm", Path(constants.HF_HUB_CACHE)]


def source_files() -> Iterator[Path]:
    """tlkit's and the built-in plugins' Python files (what an editable checkout changes)."""
    import importlib.util

    folders = [Path(__file__).resolve().parents[1]]
    spec = importlib.util.find_spec("tlkit_plugins")
    folders += [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for folder in folders:
        yield from sorted(folder.rglob("*.py"))


def installation() -> dict[str, Any]:
    """The stamps described in the module docstring, as plain JSON data."""
    return {
        "python": sys.version,
        # sys.path[0] is the program's own folder (or the working directory under -m), not where packages install
        "sys.path": [file_stamp(p) for p in sys.path[1:] if p and os.path.isdir(p)],
        "sources": [file_stamp(p) for p in source_files()],
        "env": {name: os.environ.get(name) for name in ENV_VARS},
        "weights": [file_stamp(p) for p in weights_folders()],
    }
