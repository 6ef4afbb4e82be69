"""The listings kept on disk, so ``tlkit backbones|datasets|heads`` answer without importing torch.

Listing means loading every plugin: importing torchvision and timm (so torch: over a second before
the first row) and asking the plugins about ~3,400 backbones. What they answer changes only when the installed
code or the weights on disk change, so the rows are kept in one JSON file under tlkit's cache
folder, keyed by a fingerprint of exactly that:

the installed packages, tlkit's own sources, the environment variables that choose plugins or
where weights are found, and the folders weights are downloaded to (a download changes the "offline
weights" column): :func:`tlkit.util.installed.installation`.

A third-party plugin whose ``weights_available`` looks somewhere else is answered as of the last
time the listing was built (any install, upgrade or download above rebuilds it). A fingerprint that
differs, a file whose checksum does not match, plugin tracing switched on: the rows come from the
plugins, and are saved again when every plugin loaded. What prints is the same either way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tlkit.util.atomic import write_atomic
from tlkit.util.hashing import json_sha256
from tlkit.util.installed import installation
from tlkit.util.locations import CATALOG_DIR, cache_root

FORMAT = 1
FOLDER = CATALOG_DIR
KEEP = 4  # listings of other environments sharing the cache folder (venvs), newest first
def fingerprint() -> str:
    """sha256 over everything the listing depends on (see the module docstring)."""
    from tlkit import __version__

    parts = {"format": FORMAT, "tlkit": __version__, **installation()}
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
