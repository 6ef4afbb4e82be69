"""The ``pip install`` line for one of tlkit's extras, written for how this tlkit was installed.

``pip install 'tlkit[export]'`` asks the package index for tlkit; someone running a checkout (an
editable install, or the source folder on ``PYTHONPATH``) would get another tlkit beside theirs, or none.
pip records how it installed a distribution in ``direct_url.json`` (PEP 610); that, or the checkout's
``pyproject.toml`` beside the package, says which form of the line works.
"""

from __future__ import annotations

import importlib.metadata
import json
import shlex
from pathlib import Path
from urllib.parse import unquote, urlsplit

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # tlkit/


def _checkout() -> Path | None:
    """The source folder this tlkit is imported from, if it is a checkout (``pyproject.toml`` naming tlkit beside it)."""
    root = _PACKAGE_DIR.parent
    pyproject = root / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")[:100_000] if pyproject.is_file() else ""
    except OSError:
        return None
    return root if 'name = "tlkit"' in text else None


def _direct_url() -> tuple[Path, bool] | None:
    """(local folder, editable) when pip installed tlkit from a folder, else None (an index or a wheel)."""
    try:
        raw = importlib.metadata.distribution("tlkit").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        record = json.loads(raw or "null")
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("dir_info"), dict):
        return None
    url = urlsplit(str(record.get("url", "")))
    if url.scheme != "file":
        return None
    return Path(unquote(url.path)), bool(record["dir_info"].get("editable", False))


def install_hint(extra: str) -> str:
    """``pip install ...`` that adds ``extra`` to *this* tlkit: the index form, or the checkout's folder."""
    checkout = _checkout()  # imported from a source folder (PYTHONPATH, or an editable install)
    local = None if checkout is not None else _direct_url()
    if checkout is not None:
        folder, editable = checkout, True
    elif local is not None:  # installed (a copy) from a local folder
        folder, editable = local
    else:
        return f"pip install 'tlkit[{extra}]'"
    target = shlex.quote(f"{folder}[{extra}]")
    return f"pip install -e {target}" if editable else f"pip install {target}"
