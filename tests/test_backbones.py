"""Built-in backbones: weights resolution, strict loading, feature shapes, preprocessing from the library."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision

from tlkit.contract.preprocessing import Preprocessing
from tlkit.contract.weights_request import WeightsRequest
from tlkit.errors import WeightsError
from tlkit.sources.weights import sha256_file
from tlkit_plugins.backbones.efficientnet_lite import map_efficientnet_pytorch_keys, packaged_weights_file


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache, and no network attempts."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TLKIT_OFFLINE", "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


def _features(backbone, size: int = 64) -> torch.Tensor:
    model = backbone.model.eval()
    with torch.no_grad():
        return model(torch.randn(2, 3, size, size))


def test_resnet18_from_a_weights_file(plugins, tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "my-resnet18.pth"
    torch.save(state, path)
    built = plugins.backbones.get("resnet18").build(WeightsRequest.file(path), None)
    assert built.weights_id == sha256_file(path)
    assert _features(built).shape == (2, 512)
    loaded = built.model.state_dict()
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])


def test_resnet18_from_the_hub_cache(plugins, torch_home):
    torch_home.mkdir(parents=True)
    path = torch_home / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    spec = plugins.backbones.get("resnet18")
    assert spec.weights_available() is True
    built = spec.build(WeightsRequest.pretrained(), None)
    assert built.weights_path == path and built.weights_id == sha256_file(path)


def test_resnet18_without_weights_says_where_to_put_them(plugins, torch_home):
    spec = plugins.backbones.get("resnet18")
    assert spec.weights_available() is False
    with pytest.raises(WeightsError) as info:
        spec.build(WeightsRequest.pretrained(), None)
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message and str(torch_home) in message and "\n" not in message


def test_weights_none_is_random_and_explicit(plugins):
    built = plugins.backbones.get("resnet18").build(WeightsRequest.random(), None)
    assert built.weights_id == "random" and _features(built).shape == (2, 512)


def test_wrong_architecture_counts_keys(plugins, tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(WeightsError) as info:
        plugins.backbones.get("resnet18").build(WeightsRequest.file(path), None)
    assert "unexpected keys" in str(info.value) and str(path) in str(info.value)
    assert "layer1.2" in str(info.value)  # an example key resnet18 does not have


def test_torchvision_preprocessing_comes_from_the_weights_enum(plugins):
    pre = plugins.backbones.get("torchvision:resnet50").resolve_preprocessing()
    preset = torchvision.models.ResNet50_Weights.DEFAULT.transforms()
    assert (pre.crop_size, pre.resize_size) == (preset.crop_size[0], preset.resize_size[0]) == (224, 232)
    assert pre.mean == tuple(preset.mean) and pre.interpolation == "bilinear"


def test_every_torchvision_entry_has_preprocessing(plugins):
    for name in plugins.backbones.names("torchvision:*"):
        assert isinstance(plugins.backbones.get(name).resolve_preprocessing(), Preprocessing)


def test_other_torchvision_model_features(plugins):
    # Features are what the final linear layer sees: for MobileNetV3 that is its 1024-d pre-logits layer.
    built = plugins.backbones.get("torchvision:mobilenet_v3_small").build(WeightsRequest.random(), None)
    assert _features(built).shape == (2, 1024)
    assert not any(isinstance(m, torch.nn.Linear) and m.out_features == 1000 for m in built.model.modules())


def test_timm_model_with_weights_file(plugins, tmp_path):
    path = tmp_path / "r10.safetensors"
    from safetensors.torch import save_file

    source = timm.create_model("resnet10t", pretrained=False)
    save_file(source.state_dict(), str(path))
    spec = plugins.backbones.get("timm:resnet10t")
    assert spec.hidden and "timm:resnet10t" not in plugins.backbones.names()
    built = spec.build(WeightsRequest.file(path), None)
    assert _features(built).shape == (2, source.num_features)
    assert built.weights_id == sha256_file(path)


def test_timm_preprocessing_comes_from_its_config(plugins):
    pre = plugins.backbones.get("timm:vit_base_patch16_224").resolve_preprocessing()
    assert (pre.crop_size, pre.resize_size, pre.interpolation) == (224, 248, "bicubic")
    assert pre.mean == (0.5, 0.5, 0.5)


def test_timm_without_weights_offline_is_a_clear_error(plugins, monkeypatch, tmp_path):
    monkeypatch.setenv("TLKIT_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsError, match="timm 'resnet10t'"):
        plugins.backbones.get("timm:resnet10t").build(WeightsRequest.pretrained(), None)


def test_lite0_loads_the_packaged_imagenet_weights(plugins):
    spec = plugins.backbones.get("efficientnet_lite0")
    assert spec.feature_dim == 1280 and spec.weights_available()
    built = spec.build(WeightsRequest.pretrained(), None)
    assert built.weights_id == sha256_file(packaged_weights_file())
    assert _features(built).shape == (2, 1280)
    pre = spec.resolve_preprocessing()
    assert (pre.crop_size, pre.resize_size, pre.interpolation, pre.mean) == (224, 256, "bicubic", (0.5, 0.5, 0.5))


def test_lite0_key_mapping_is_complete_and_strict():
    state = torch.load(packaged_weights_file(), map_location="cpu", weights_only=True)
    mapped = map_efficientnet_pytorch_keys(state)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert set(mapped) == set(model.state_dict())
    model.load_state_dict(mapped, strict=True)
    # The real weights classify: an all-grey image is not confidently anything, and BN stats are ImageNet's.
    assert not torch.allclose(model.bn2.running_mean, torch.zeros_like(model.bn2.running_mean))


def test_lite0_wrong_file_is_refused(plugins, tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="missing keys"):
        plugins.backbones.get("efficientnet_lite0").build(WeightsRequest.file(path), None)
