"""The ``pip install`` hint for a missing extra fits how tlkit is installed (issue 20: a checkout user
cannot use ``pip install 'tlkit[export]'`` as written)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from tlkit.util import install_hint as hint

REPO = Path(__file__).resolve().parent.parent


def test_a_checkout_gets_an_editable_install_of_itself() -> None:
    assert hint._checkout() == REPO  # these tests run from the checkout
    line = hint.install_hint("export")
    assert line == f"pip install -e {shlex.quote(f'{REPO}[export]')}"
    assert shlex.split(line)[-1] == f"{REPO}[export]"  # one argument, as a shell reads it


def _distribution(monkeypatch: pytest.MonkeyPatch, direct_url: object | None) -> None:
    """tlkit as pip installed it: no checkout beside the package, and this ``direct_url.json`` (None: none)."""

    class Dist:
        def read_text(self, name: str) -> str | None:
            assert name == "direct_url.json"
            return None if direct_url is None else (direct_url if isinstance(direct_url, str) else json.dumps(direct_url))

    monkeypatch.setattr(hint, "_checkout", lambda: None)
    monkeypatch.setattr(hint.importlib.metadata, "distribution", lambda name: Dist())


def test_an_index_install_gets_the_index_form(monkeypatch: pytest.MonkeyPatch) -> None:
    _distribution(monkeypatch, None)
    assert hint.install_hint("export") == "pip install 'tlkit[export]'"


def test_an_editable_or_folder_install_names_its_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    _distribution(monkeypatch, {"url": "file:///home/me/src/tl%20kit", "dir_info": {"editable": True}})
    assert hint.install_hint("export") == "pip install -e '/home/me/src/tl kit[export]'"
    _distribution(monkeypatch, {"url": "file:///opt/tlkit", "dir_info": {}})
    assert hint.install_hint("parquet") == "pip install '/opt/tlkit[parquet]'"


@pytest.mark.parametrize("record", ["not json", "[1, 2]", {"url": "https://example.org/tlkit.tar.gz", "archive_info": {}}, {"url": 3, "dir_info": "x"}])
def test_a_damaged_or_remote_record_falls_back_to_the_index_form(monkeypatch: pytest.MonkeyPatch, record: object) -> None:
    """Hostile: whatever direct_url.json holds, the hint is a plain line (the index form), never an error."""
    _distribution(monkeypatch, record)
    assert hint.install_hint("export") == "pip install 'tlkit[export]'"


def test_the_onnx_export_hint_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tlkit.errors import ExportError
    from tlkit.saved import export

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    with pytest.raises(ExportError) as caught:
        export._write_onnx(torch.nn.Linear(2, 2), torch.zeros(2, 2), Path("unused.onnx"), {})
    assert str(caught.value) == f"ONNX export needs onnx and onnxruntime (onnxruntime is missing): {hint.install_hint('export')}"
    assert "-e " in str(caught.value)
