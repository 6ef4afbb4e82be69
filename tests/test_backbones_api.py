"""tlkit.backbones, the plugin authors' building blocks: wrap a module, reuse a registered backbone by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import tlkit
import tlkit.testing
from tlkit.backbones import build_registered, derived_spec, registered, state_sha256, wrap_module
from tlkit.contract.weights_request import WeightsRequest
from tlkit.errors import RegistryError, WeightsError
from tlkit.sources.weights import sha256_file

PRE = tlkit.Preprocessing(crop_size=32, resize_size=36, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _net(options: object) -> torch.nn.Module:
    torch.manual_seed(42)  # "pretrained": the same weights every time the factory runs
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.BatchNorm2d(6), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


def test_wrap_module_honours_every_kind_of_request(tmp_path: Path) -> None:
    spec = wrap_module("six", _net, PRE, feature_dim=6)
    pretrained = spec.build(WeightsRequest.pretrained(), tlkit.NoOptions())
    again = spec.build(WeightsRequest.pretrained(), tlkit.NoOptions())
    assert pretrained.weights_id == again.weights_id == state_sha256(_net(None)) and not pretrained.saved_with_run

    torch.manual_seed(0)
    random = spec.build(WeightsRequest.random(), tlkit.NoOptions())
    assert random.weights_id == "random" and random.saved_with_run
    assert not torch.equal(random.model[0].weight, pretrained.model[0].weight)  # reset_parameters() ran

    path = tmp_path / "six.safetensors"
    save_file(random.model.state_dict(), str(path))
    loaded = spec.build(WeightsRequest.file(path), tlkit.NoOptions())
    assert loaded.weights_id == sha256_file(path) and torch.equal(loaded.model[0].weight, random.model[0].weight)
    assert tlkit.testing.check_backbone("six", plugins=_plugins_with(spec), images=2).feature_dim == 6


def test_state_sha256_sees_every_byte() -> None:
    model = _net(None)
    before = state_sha256(model)
    with torch.no_grad():
        model[1].running_var[0] += 1e-6
    assert state_sha256(model) != before


def test_a_file_for_another_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file(torch.nn.Linear(2, 2).state_dict(), str(path))
    with pytest.raises(WeightsError, match="does not fit backbone 'six'"):
        wrap_module("six", _net, PRE).build(WeightsRequest.file(path), tlkit.NoOptions())


def test_registered_backbones_by_name(plugins) -> None:
    assert registered("resnet18").feature_dim == 512
    built = build_registered("timm:test_resnet", WeightsRequest.random())
    assert built.weights_id == "random"
    with pytest.raises(RegistryError, match="did you mean 'resnet18'"):
        registered("resnet81")


def test_a_derived_backbone_keeps_the_base_weights_and_preprocessing(plugins) -> None:
    spec = derived_spec("lite0_stem", "efficientnet_lite0", lambda m: torch.nn.Sequential(m.conv_stem, m.bn1, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()), feature_dim=32)
    base = plugins.backbones.get("efficientnet_lite0")
    assert spec.resolve_preprocessing() == base.resolve_preprocessing() and spec.weights_available() is True
    built = spec.build(WeightsRequest.pretrained(), tlkit.NoOptions())
    full = base.build(WeightsRequest.pretrained(), tlkit.NoOptions())
    assert built.weights_id == full.weights_id and torch.equal(built.model[0].weight, full.model.conv_stem.weight)
    assert built.model(torch.randn(1, 3, 64, 64)).shape == (1, 32)
    assert spec.build(WeightsRequest.random(), tlkit.NoOptions()).saved_with_run  # random stays random, and travels with the run


def _plugins_with(spec: tlkit.BackboneSpec) -> tlkit.testing.Plugins:
    class One:
        __name__ = "one"

        @tlkit.hookimpl
        def register_backbones(self, register) -> None:  # noqa: ANN001
            register(spec)

    return tlkit.testing.load_plugin(One(), builtins=False)
