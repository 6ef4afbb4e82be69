"""A tiny real backbone plugin for fast tests: a seeded random CNN on 32x32 crops, 8-d features."""

from __future__ import annotations

from typing import Any

import torch

import tlkit


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def build_tiny(weights: tlkit.WeightsRequest, options: Any) -> tlkit.BuiltBackbone:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    model = TinyCNN()
    torch.random.set_rng_state(generator_state)
    if weights.path is not None:
        from tlkit.sources.weights import load_into, load_state_dict, sha256_file

        load_into(model, load_state_dict(weights.path), weights.path)
        return tlkit.BuiltBackbone(model=model, weights_id=sha256_file(weights.path))
    return tlkit.BuiltBackbone(model=model, weights_id="random")


class TinyPlugin:
    """Registers ``tiny_cnn``; pass an instance to ``load_plugins(extra=[...])``."""

    __name__ = "tests-tiny"

    @tlkit.hookimpl
    def register_backbones(self, register: Any) -> None:
        register(
            tlkit.BackboneSpec(
                name="tiny_cnn",
                build=build_tiny,
                preprocessing=tlkit.Preprocessing(crop_size=32, resize_size=36, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
                feature_dim=8,
                description="tiny random CNN for tests",
            )
        )
