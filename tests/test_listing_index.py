"""The backbone listing index: the same rows as the plugins give, rebuilt whenever what they depend on changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tlkit.cli import listing_index, listings
from tlkit.contract.plugin_manager import get_plugins, loaded, set_plugins


@pytest.fixture
def fresh_process_plugins():
    """Each listing call sees a process that has not loaded its plugins yet (as the CLI does)."""
    set_plugins(None)
    yield
    set_plugins(None)


def _listing(pattern: str | None = None) -> tuple[list[dict], int]:
    set_plugins(None)
    return listings.listing("backbones", pattern)


@pytest.mark.parametrize("env", [{}, {"TORCH_HOME": "/opt/th"}, {"XDG_CACHE_HOME": "/opt/xdg"}, {"TORCH_HOME": "~/th", "XDG_CACHE_HOME": "/x"}])
def test_the_torch_hub_folder_is_torchs_own(env, monkeypatch):
    for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from tlkit.util.installed import torch_hub_dir

    assert torch_hub_dir() == Path(torch.hub.get_dir())


def test_rows_from_the_index_equal_the_plugins_rows(fresh_process_plugins, feature_cache_dir):
    plugins = get_plugins()
    live = {p: json.loads(json.dumps(listings.backbones(plugins, p), default=str)) for p in (None, "timm:resnet50.*", "torchvision:resnet1*")}
    hidden = plugins.backbones.hidden_count()
    built = _listing()  # no index yet: built from the plugins and saved
    assert list((feature_cache_dir / "catalog").glob("listings-*.json"))
    for pattern, rows in live.items():
        set_plugins(None)
        assert listing_index.load(listing_index.fingerprint()) is not None
        from_index, hidden_now = _listing(pattern)
        assert loaded() is None, "answered from the index, yet the plugins were loaded"
        assert from_index == rows and len(rows) > 1
        assert hidden_now == (hidden if pattern is None else 0)
    assert built == (live[None], hidden)
    for kind, rows in (("heads", listings.heads(plugins)), ("datasets", listings.datasets(plugins))):
        set_plugins(None)
        assert listings.listing(kind) == (json.loads(json.dumps(rows, default=str)), 0) and loaded() is None


def test_an_unknown_name_gets_the_same_suggestion_from_the_index(fresh_process_plugins):
    from tlkit.errors import RegistryError

    _listing()
    with pytest.raises(RegistryError) as from_index:
        _listing("timm:resnet5O")
    assert loaded() is None
    with pytest.raises(RegistryError) as from_plugins:
        listings.backbones(get_plugins(), "timm:resnet5O")
    assert str(from_index.value) == str(from_plugins.value) and "did you mean" in str(from_index.value)


def test_a_download_shows_in_the_offline_column(fresh_process_plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (row,), _ = _listing("resnet18")
    assert row["weights_offline"] is False
    from torchvision.models import ResNet18_Weights

    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / Path(ResNet18_Weights.DEFAULT.url).name).write_bytes(b"weights")
    (row,), _ = _listing("resnet18")
    assert row["weights_offline"] is True


def test_a_damaged_index_is_rebuilt_not_used(fresh_process_plugins, feature_cache_dir):
    rows, _ = _listing()
    (index,) = (feature_cache_dir / "catalog").glob("listings-*.json")
    text = index.read_text()
    assert '"feature_dim": 512' in text
    index.write_text(text.replace('"feature_dim": 512', '"feature_dim": 999', 1))  # valid JSON, wrong rows
    assert listing_index.load(listing_index.fingerprint()) is None
    assert _listing()[0] == rows
    assert listing_index.load(listing_index.fingerprint()) is not None  # saved again


def test_the_key_follows_plugin_choice_and_sources(monkeypatch, tmp_path):
    before = listing_index.fingerprint()
    monkeypatch.setenv("TLKIT_LOAD_PLUGINS", "")
    assert listing_index.fingerprint() != before
    monkeypatch.delenv("TLKIT_LOAD_PLUGINS")
    assert listing_index.fingerprint() == before
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])  # a folder packages could be installed into
    with_folder = listing_index.fingerprint()
    assert with_folder != before
    (tmp_path / "newpkg-1.0.dist-info").mkdir()  # an install changes the folder
    os.utime(tmp_path, ns=(1, 1))
    assert listing_index.fingerprint() != with_folder


def test_a_failing_plugin_is_never_saved(fresh_process_plugins, tmp_path, monkeypatch, feature_cache_dir):
    from tlkit.contract.plugin_manager import load_plugins

    class Broken:
        from tlkit import hookimpl

        @hookimpl
        def register_backbones(self, register):
            raise RuntimeError("broken on purpose")

    with pytest.warns(UserWarning, match="broken on purpose"):
        plugins = load_plugins(entry_points=False, extra=[Broken()])
    monkeypatch.setattr("tlkit.contract.plugin_manager.load_plugins", lambda: plugins)
    rows, _ = _listing()
    assert rows and not list((feature_cache_dir / "catalog").glob("listings-*.json"))


def test_the_command_answers_from_the_index_without_torch_and_prints_the_same(tmp_path):
    env = {**os.environ, "TLKIT_CACHE_DIR": str(tmp_path / "cache"), "TLKIT_LOAD_PLUGINS": ""}
    probe = "import sys\nfrom tlkit.cli.app import main\ntry:\n    main(['backbones'])\nfinally:\n    print('torch imported:', 'torch' in sys.modules)"

    def listing(extra_env: dict[str, str]) -> str:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={**env, **extra_env}, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    first, second = listing({}), listing({})
    live = listing({"TLKIT_TRACE_PLUGINS": "1"})  # tracing asks the plugins themselves
    assert first.endswith("torch imported: True\n") and second.endswith("torch imported: False\n")
    assert live.endswith("torch imported: True\n")
    table = first.rsplit("torch imported:", 1)[0]
    assert "efficientnet_lite0" in table and table == second.rsplit("torch imported:", 1)[0] == live.rsplit("torch imported:", 1)[0]
