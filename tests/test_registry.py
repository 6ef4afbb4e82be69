"""Registries: duplicate names are errors naming both plugins; unknown names suggest the closest."""

from __future__ import annotations

import dataclasses

import pytest

import tlkit
from tlkit.contract.registry import Registry
from tlkit.errors import RegistryError


def _head(name: str, plugin: str = "p") -> tlkit.HeadSpec:
    return tlkit.HeadSpec(name=name, fit=lambda *a: None, load=lambda *a: None, plugin=plugin)  # type: ignore[arg-type,return-value]


def test_add_get_and_sorted_patterns():
    registry: Registry[tlkit.HeadSpec] = Registry("head")
    for name in ["zeta", "alpha", "timm:b", "timm:a"]:
        registry.add(_head(name))
    assert registry.names() == ["alpha", "timm:a", "timm:b", "zeta"]
    assert registry.names("timm:*") == ["timm:a", "timm:b"]
    assert registry.names("*a") == ["alpha", "timm:a", "zeta"]
    assert registry.get("alpha").name == "alpha"
    assert len(registry) == 4 and "zeta" in registry


def test_duplicate_names_both_plugins():
    registry: Registry[tlkit.HeadSpec] = Registry("head")
    registry.add(_head("linear", plugin="first-plugin"))
    with pytest.raises(RegistryError) as info:
        registry.add(_head("linear", plugin="second-plugin"))
    assert "first-plugin" in str(info.value) and "second-plugin" in str(info.value)


def test_unknown_name_suggests_closest():
    registry: Registry[tlkit.HeadSpec] = Registry("head")
    registry.add(_head("resnet18"))
    registry.add(_head("timm:convnext_tiny"))
    with pytest.raises(RegistryError, match="did you mean 'resnet18'"):
        registry.get("resnet81")
    with pytest.raises(RegistryError, match="did you mean 'timm:convnext_tiny'"):
        registry.get("convnext_tiny")
    with pytest.raises(RegistryError, match="tlkit heads"):
        registry.get("zzzzzz")


def test_hidden_entries_listed_only_for_a_pattern():
    registry: Registry[tlkit.BackboneSpec] = Registry("backbone")
    pre = tlkit.Preprocessing(crop_size=8, resize_size=8, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))
    spec = tlkit.BackboneSpec(name="shown", build=lambda w, o: None, preprocessing=pre)  # type: ignore[arg-type,return-value]
    registry.add(spec)
    registry.add(dataclasses.replace(spec, name="cat:hidden", hidden=True))
    assert registry.names() == ["shown"]
    assert registry.names("cat:*") == ["cat:hidden"]
    assert registry.hidden_count() == 1


def test_builtin_registries(plugins):
    assert {"resnet18", "efficientnet_lite0", "torchvision:resnet50", "torchvision:vit_b_16"} <= set(plugins.backbones.names())
    assert "timm:resnet18" in plugins.backbones.names("timm:resnet1*")
    assert "imagefolder" in plugins.datasets.names()
    assert "linear" in plugins.heads.names()
    assert plugins.backbones.get("resnet18").plugin == "tlkit:torchvision_models"
