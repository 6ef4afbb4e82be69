"""Where tlkit keeps what it computes once (features, converted models, the backbone listing).

A module of its own, importing nothing heavy, so a command that only needs the folder (``tlkit
backbones`` reading its listing index) does not pay for torch.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TLKIT_CACHE_DIR"
# The stores under the cache folder (``tlkit cache info`` and ``clear`` cover them all).
FEATURES_DIR = "features"  # feature vectors (tlkit.extract.cache)
RUNTIMES_DIR = "runtimes"  # converted models (tlkit.extract.runtimes.conversion)
CATALOG_DIR = "catalog"  # the listing index (tlkit.cli.listing_index)


def cache_root() -> Path:
    """``$TLKIT_CACHE_DIR``, else the platform's user cache folder for tlkit."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("tlkit", appauthor=False))
