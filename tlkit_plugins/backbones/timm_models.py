"""Any timm model as a feature extractor: ``timm:<architecture>`` and ``timm:<architecture>.<tag>``.

Features come from ``num_classes=0`` (timm's pooled pre-logits); preprocessing from timm's own
``resolve_data_config`` for that model and tag, applied by timm's ``create_transform``. A plain
``timm:<architecture>`` means timm's default tag. Weights: the recipe's ``backbone.weights`` file,
else a local copy (``$TORCH_HOME/hub/checkpoints/timm/<arch.tag>.safetensors`` or the Hugging Face
cache), else the hub when reachable, else one line saying where the file goes. The catalogue is
large, so its entries are hidden from a plain ``tlkit backbones`` and shown for a pattern such as
``'timm:resnet50*'``.
"""

from __future__ import annotations

from typing import Any

import timm

import tlkit
from tlkit.backbones import timm_backbone, timm_preprocessing, timm_weights_available

PREFIX = "timm:"


def _card(arch: str) -> dict[str, Any]:
    """Input size, default pretrained tag and licence from timm's pretrained config (nothing is built)."""
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        return {}
    size = getattr(cfg, "input_size", None)
    return {"input_size": size[-1] if size else None, "pretrained_tag": getattr(cfg, "tag", None), "license": getattr(cfg, "license", None)}


def timm_spec(name: str, arch: str, **fields: Any) -> tlkit.BackboneSpec:
    """A spec for timm ``arch`` (or ``arch.tag``): timm's preprocessing and weights resolution (fields override)."""
    defaults: dict[str, Any] = {
        "build": lambda request, options: timm_backbone(arch, request),
        "preprocessing": lambda: timm_preprocessing(arch),
        "description": f"timm {arch}",
        "weights_available": lambda: timm_weights_available(arch),
        "card": lambda: _card(arch),
    }
    defaults.update(fields)
    return tlkit.BackboneSpec(name=name, **defaults)


@tlkit.hookimpl
def register_backbones(register: Any) -> None:
    for arch in timm.list_models():
        register(timm_spec(f"{PREFIX}{arch}", arch, hidden=True))
    for tagged in timm.list_models(pretrained=True):
        register(timm_spec(f"{PREFIX}{tagged}", tagged, hidden=True, description=f"timm {tagged} (pretrained tag)"))
