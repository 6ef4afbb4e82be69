"""A tiny real backbone for feature tests: a seeded random CNN, registered through a throwaway plugin."""

from __future__ import annotations

import time
from typing import Any

import torch

import tlkit
from tlkit.extract.cache import CacheIdentity

TINY_PRE = tlkit.Preprocessing(crop_size=32, resize_size=36, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
TINY_IDENTITY = CacheIdentity(backbone="tiny_cnn", weights_id="random", preprocessing=TINY_PRE, precision="fp32", seed=0)


class TinyCNN(torch.nn.Module):
    """Two convolutions, batch norm and pooling: 16-d features. ``delay`` slows each batch (kill tests)."""

    def __init__(self, seed: int = 0, delay: float = 0.0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
            self.bn.running_mean.copy_(torch.randn(8, generator=generator) * 0.1)
            self.bn.running_var.copy_(torch.rand(8, generator=generator) + 0.5)
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        x = torch.relu(self.bn(self.conv1(x)))
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv2(x)), 1).flatten(1)


def build_tiny(weights: tlkit.WeightsRequest, options: Any) -> tlkit.BuiltBackbone:
    return tlkit.BuiltBackbone(model=TinyCNN(seed=torch.initial_seed() % 1000), weights_id="random")


class TinyPlugin:
    """Registers ``tiny_cnn`` (random weights drawn from the recipe seed)."""

    __name__ = "tiny-test-plugin"

    @tlkit.hookimpl
    def register_backbones(self, register: Any) -> None:
        register(tlkit.BackboneSpec(name="tiny_cnn", build=build_tiny, preprocessing=TINY_PRE, feature_dim=16, description="tests"))
