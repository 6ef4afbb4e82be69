"""``lite0_stage3`` .. ``lite0_stage5``: EfficientNet-Lite0 cut after one of its middle stages.

The last stages of an ImageNet network encode ImageNet's own categories; for images far from
ImageNet (textures, microscopy, satellite tiles) the mid-level features of an earlier stage often
transfer better, and they are cheaper. Each entry keeps the stem and the blocks up to its stage and
average-pools their output: 80, 112 or 192 features. The weights are the real ImageNet ones that
tlkit's own ``efficientnet_lite0`` backbone loads offline, so the same ``backbone.weights`` values
work (none = the packaged weights, ``none`` = random, or a file path).
"""

from __future__ import annotations

from typing import Any

import timm
import torch

import tlkit
from tlkit_plugins.backbones.efficientnet_lite import ARCH, build_lite0

# timm's tf_efficientnet_lite0 has 7 stages (``model.blocks[0..6]``); output channels of each.
STAGE_DIMS = {3: 80, 4: 112, 5: 192}


class TruncatedEfficientNet(torch.nn.Module):
    """Stem and the first ``stage + 1`` stages of a timm EfficientNet, then global average pooling."""

    def __init__(self, model: Any, stage: int) -> None:
        super().__init__()
        self.conv_stem = model.conv_stem
        self.bn1 = model.bn1
        self.blocks = torch.nn.Sequential(*list(model.blocks)[: stage + 1])
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.bn1(self.conv_stem(x)))).flatten(1)


def build_stage(stage: int, weights: tlkit.WeightsRequest) -> tlkit.BuiltBackbone:
    full = build_lite0(weights, tlkit.NoOptions())  # tlkit resolves and verifies the weights
    return tlkit.BuiltBackbone(
        model=TruncatedEfficientNet(full.model, stage), weights_id=full.weights_id, weights_path=full.weights_path
    )


def lite0_stage_spec(stage: int) -> tlkit.BackboneSpec:
    return tlkit.BackboneSpec(
        name=f"lite0_stage{stage}",
        build=lambda weights, options: build_stage(stage, weights),
        preprocessing=lambda: tlkit.Preprocessing.from_timm(timm.models.get_pretrained_cfg(ARCH)),
        feature_dim=STAGE_DIMS[stage],
        description=f"EfficientNet-Lite0 cut after stage {stage}, pooled: {STAGE_DIMS[stage]}-d mid-level features (offline weights)",
    )
