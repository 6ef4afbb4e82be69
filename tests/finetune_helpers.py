"""A tiny real backbone for fine-tuning tests: timm's ``test_efficientnet`` (99k parameters, five stages
in ``feature_info``, batch norm, depthwise convolutions, like EfficientNet-Lite0) on 32x32 crops,
with seeded random weights so every build is the same network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from conftest import make_image_folder

import tlkit

ARCH = "test_efficientnet"
PRE = tlkit.Preprocessing(crop_size=32, resize_size=36, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def build_tiny_bn(weights: Any, options: Any) -> tlkit.BuiltBackbone:
    state = torch.random.get_rng_state()
    torch.manual_seed(4321)
    model = timm.create_model(ARCH, pretrained=False, num_classes=0)
    torch.random.set_rng_state(state)
    return tlkit.BuiltBackbone(model=model, weights_id="random")


class TinyBNPlugin:
    """Registers ``tiny_bn``; pass an instance to ``load_plugins(extra=[...])``."""

    __name__ = "tests-tiny-bn"

    @tlkit.hookimpl
    def register_backbones(self, register: Any) -> None:
        register(tlkit.BackboneSpec(name="tiny_bn", build=build_tiny_bn, preprocessing=PRE, feature_dim=256, description="tiny timm network for fine-tuning tests"))


def make_data(root: Path) -> Path:
    return make_image_folder(root, classes=("cats", "dogs", "fish"), n_train=6, n_test=3)


def recipe_data(root: Path, **finetune: Any) -> dict[str, Any]:
    """A finetune-mode recipe for the tiny backbone (workers 0, one thread, 2 epochs, no feature cache) with ``finetune`` overrides."""
    return {
        "name": "ft",
        "seed": 3,
        "mode": "finetune",
        "dataset": {"root": str(root)},
        "backbone": {"name": "tiny_bn"},
        "extract": {"workers": 0, "batch_size": 8, "cache": False},
        "finetune": {"epochs": 2, "batch_size": 4, "workers": 0, "threads": 1, "lr": 0.05, **finetune},
    }
