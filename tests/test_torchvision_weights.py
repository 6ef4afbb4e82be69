"""torchvision backbones: weight enum entries by name, downloads through torch.hub (hash checked, atomic)."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import ResNet50_Weights

from tlkit.contract.weights_request import WeightsRequest
from tlkit.errors import WeightsError
from tlkit.sources.pretrained import fetch_url


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TLKIT_OFFLINE", "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1, with no proxy in the way."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "TLKIT_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "www"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_weight_entries_are_selectable_and_carry_their_preprocessing(plugins) -> None:
    names = plugins.backbones.names("torchvision:resnet50.*")
    assert names == ["torchvision:resnet50.IMAGENET1K_V1", "torchvision:resnet50.IMAGENET1K_V2"]
    assert "torchvision:resnet50.IMAGENET1K_V2" not in plugins.backbones.names()  # hidden from a plain listing
    v1 = plugins.backbones.get("torchvision:resnet50.IMAGENET1K_V1").resolve_preprocessing()
    v2 = plugins.backbones.get("torchvision:resnet50.IMAGENET1K_V2").resolve_preprocessing()
    default = plugins.backbones.get("torchvision:resnet50").resolve_preprocessing()
    assert (v1.resize_size, v2.resize_size) == (256, 232) and default == v2  # DEFAULT is V2
    assert "IMAGENET1K_V2" in plugins.backbones.get("torchvision:resnet50").description


def test_an_entry_says_which_file_it_needs(plugins, torch_home: Path) -> None:
    spec = plugins.backbones.get("torchvision:resnet50.IMAGENET1K_V1")
    assert spec.weights_available() is False
    started = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        spec.build(WeightsRequest.pretrained(), spec.options())
    assert time.perf_counter() - started < 5
    filename = Path(ResNet50_Weights.IMAGENET1K_V1.url).name
    assert str(torch_home / filename) in str(info.value) and ResNet50_Weights.IMAGENET1K_V1.url in str(info.value)


def test_an_entry_uses_its_own_file_from_the_hub_cache(plugins, torch_home: Path) -> None:
    torch_home.mkdir(parents=True)
    path = torch_home / Path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    built = plugins.backbones.get("torchvision:resnet18.IMAGENET1K_V1").build(WeightsRequest.pretrained(), None)
    assert built.weights_path == path and built.model(torch.randn(1, 3, 64, 64)).shape == (1, 512)


def _checkpoint(folder: Path, stem: str, *, good_hash: bool = True) -> tuple[str, bytes]:
    data_path = folder / "tmp.pth"
    torch.save({"w": torch.arange(6.0)}, data_path)
    data = data_path.read_bytes()
    prefix = hashlib.sha256(data).hexdigest()[:8] if good_hash else "00000000"
    name = f"{stem}-{prefix}.pth"
    data_path.rename(folder / name)
    return name, data


def test_a_download_goes_through_torch_hub_with_its_hash_checked(served: tuple[Path, str], tmp_path: Path) -> None:
    folder, base = served
    name, data = _checkpoint(folder, "tiny")
    dest = fetch_url(f"{base}/{name}", "a test model", dest_dir=tmp_path / "checkpoints")
    assert dest == tmp_path / "checkpoints" / name and dest.read_bytes() == data
    assert fetch_url(f"{base}/{name}", "a test model", dest_dir=tmp_path / "checkpoints") == dest  # no second download


def test_a_damaged_download_leaves_nothing(served: tuple[Path, str], tmp_path: Path) -> None:
    folder, base = served
    name, _ = _checkpoint(folder, "tiny", good_hash=False)
    with pytest.raises(WeightsError, match="is damaged"):
        fetch_url(f"{base}/{name}", "a test model", dest_dir=tmp_path / "checkpoints")
    assert list((tmp_path / "checkpoints").iterdir()) == []
