"""timm backbones: timm's own preprocessing for every crop mode, pretrained tags, weights that fail fast offline."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config
from typer.testing import CliRunner

from tlkit.cli import app as cli
from tlkit.contract.preprocessing import Preprocessing
from tlkit.contract.weights_request import WeightsRequest
from tlkit.errors import WeightsError
from tlkit.sources.pretrained import reachable, timm_local_file
from tlkit.sources.weights import sha256_file


def _images(n: int = 10) -> list[Image.Image]:
    """Noisy RGB images of many shapes: tall, wide, tiny, larger than the crop."""
    rng = random.Random(3)
    images = []
    for i in range(n):
        size = (rng.randrange(40, 500), rng.randrange(40, 500)) if i else (600, 90)
        image = Image.effect_noise(size, 60).convert("RGB")
        images.append(Image.blend(image, Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3))), 0.5))
    return images


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("timm:dm_nfnet_f0", "squash"),  # default tag dm_in1k: 192 px, crop_pct 0.9
        ("timm:deepseek_vit_412m.deepseek_v4_flash_vision_exp", "border"),  # 392 px, padded with the mean colour
        ("timm:resnet50.a1_in1k", "center"),
    ],
)
def test_tensors_equal_timms_own_transform(plugins, name: str, mode: str) -> None:
    arch = name.removeprefix("timm:")
    pre = plugins.backbones.get(name).resolve_preprocessing()
    assert (pre.pipeline, pre.crop_mode) == ("timm", mode)
    reference = create_transform(**resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(arch).to_dict()))
    ours = pre.transform()
    for image in _images():
        expected = reference(image)
        got = ours(image)
        assert got.shape == expected.shape == (3, pre.crop_size, pre.crop_size)
        assert torch.equal(got, expected)


def test_the_timm_record_survives_model_json(plugins) -> None:
    pre = plugins.backbones.get("timm:dm_nfnet_f0").resolve_preprocessing()
    data = json.loads(json.dumps(pre.to_dict()))
    assert data["crop_mode"] == "squash" and data["crop_pct"] == 0.9 and data["resize_size"] == 213
    assert Preprocessing.from_dict(data) == pre


def test_torchvision_records_keep_their_old_keys(plugins) -> None:
    """Fields at their defaults stay out of to_dict(): feature-cache keys made before them still match."""
    data = plugins.backbones.get("resnet18").resolve_preprocessing().to_dict()
    assert set(data) == {"crop_size", "resize_size", "interpolation", "mean", "std"}


def test_pretrained_tags_are_listed_for_patterns(plugins) -> None:
    tags = plugins.backbones.names("timm:resnet50.*")
    assert "timm:resnet50.a1_in1k" in tags and "timm:resnet50.tv2_in1k" in tags and len(tags) >= 10
    assert not any(name.startswith("timm:") for name in plugins.backbones.names())  # hidden from a plain listing
    result = CliRunner().invoke(cli.app, ["backbones", "timm:resnet50.*", "--json"])
    assert result.exit_code == 0, result.output
    assert {row["name"] for row in json.loads(result.output)} == set(tags)


def test_a_plain_architecture_means_timms_default_tag(plugins) -> None:
    default = timm.models.get_pretrained_cfg("resnet50").tag
    plain = plugins.backbones.get("timm:resnet50").resolve_preprocessing()
    assert plain == plugins.backbones.get(f"timm:resnet50.{default}").resolve_preprocessing()
    other = plugins.backbones.get("timm:resnet50.tv_in1k").resolve_preprocessing()  # each tag has its own config
    assert (other.crop_pct, other.interpolation) == (0.875, "bilinear") != (plain.crop_pct, plain.interpolation)


@pytest.fixture
def offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty torch and Hugging Face caches; the network is 'reachable' only through a proxy that refuses."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("TLKIT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # discard port: nothing listens, refused at once
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_missing_timm_weights_fail_fast_and_say_where_the_file_goes(plugins, offline_home: Path) -> None:
    spec = plugins.backbones.get("timm:resnet10t")
    assert spec.weights_available() is False
    started = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        spec.build(WeightsRequest.pretrained(), spec.options())
    assert time.perf_counter() - started < 5
    message = str(info.value)
    tag = timm.models.get_pretrained_cfg("resnet10t").tag
    assert f"https://huggingface.co/timm/resnet10t.{tag}/resolve/main/model.safetensors" in message
    assert str(offline_home / "timm" / f"resnet10t.{tag}.safetensors") in message and "\n" not in message


def test_a_file_placed_where_the_message_says_is_used(plugins, offline_home: Path) -> None:
    tag = timm.models.get_pretrained_cfg("resnet10t").tag
    path = timm_local_file(f"resnet10t.{tag}")
    path.parent.mkdir(parents=True)
    save_file(timm.create_model("resnet10t", pretrained=False).state_dict(), str(path))
    for name in ("timm:resnet10t", f"timm:resnet10t.{tag}"):
        spec = plugins.backbones.get(name)
        assert spec.weights_available() is True
        built = spec.build(WeightsRequest.pretrained(), spec.options())
        assert built.weights_path == path and built.weights_id == sha256_file(path)
        assert built.model(torch.randn(1, 3, 64, 64)).shape == (1, 512)


def test_reachable_probes_quickly() -> None:
    started = time.perf_counter()
    assert reachable("http://127.0.0.1:9/x") is False
    assert time.perf_counter() - started < 1


def test_a_non_square_timm_model_is_a_clear_error(plugins) -> None:
    from tlkit.errors import RegistryError

    with pytest.raises(RegistryError, match=r"timm 'vit_base_patch16_sapiens2.fb' cannot be used by tlkit: tlkit crops square images"):
        plugins.backbones.get("timm:vit_base_patch16_sapiens2.fb").resolve_preprocessing()
