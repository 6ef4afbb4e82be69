"""``lite0_stage3`` .. ``lite0_stage5``: EfficientNet-Lite0 cut after one of its middle stages.

The last stages of an ImageNet network encode ImageNet's own categories; for images far from
ImageNet (textures, microscopy, satellite tiles) the mid-level features of an earlier stage often
transfer better, and they are cheaper. Each entry keeps the stem and the blocks up to its stage and
average-pools their output: 80, 112 or 192 features.

Everything comes from tlkit's registered ``efficientnet_lite0`` through the public
``tlkit.backbones.derived_spec``: the real ImageNet weights it loads offline, its preprocessing,
and the meaning of ``backbone.weights`` (null = the packaged weights, ``none`` = random, or a file
path), so this plugin re-implements none of them.
"""

from __future__ import annotations

from typing import Any

import torch

import tlkit

BASE = "efficientnet_lite0"
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


def lite0_stage_spec(stage: int) -> tlkit.BackboneSpec:
    return tlkit.backbones.derived_spec(
        f"lite0_stage{stage}",
        BASE,
        lambda model: TruncatedEfficientNet(model, stage),
        feature_dim=STAGE_DIMS[stage],
        description=f"EfficientNet-Lite0 cut after stage {stage}, pooled: {STAGE_DIMS[stage]}-d mid-level features (offline weights)",
    )
