"""Every torchvision classification model as a feature extractor: ``torchvision:<name>[.<WEIGHTS>]``, plus ``resnet18``.

The final linear layer is replaced by the identity, so the model returns the pooled features the
classifier would have seen (512-d for ResNet-18). ``torchvision:<name>`` uses the weights enum's
``DEFAULT``; ``torchvision:<name>.<ENTRY>`` (e.g. ``torchvision:resnet50.IMAGENET1K_V2``) picks an
entry, with that entry's own preprocessing. Weights are resolved in this order: the recipe's
``backbone.weights`` file, the torch hub cache (where torchvision keeps them), then a download
through ``torch.hub`` (progress bar, hash check). Never silently random: ``weights: none`` asks for that.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torchvision.models import get_model, get_model_weights

import tlkit
from tlkit.backbones import fetch_pretrained, from_weights_file, pretrained_available, random_weights
from tlkit.errors import WeightsError

DEFAULT_ALIAS = "resnet18"


def _weights_entry(name: str, entry: str = "DEFAULT") -> Any:
    return get_model_weights(name)[entry] if entry != "DEFAULT" else get_model_weights(name).DEFAULT


def _weights_available(weights: Any) -> bool:
    return pretrained_available(weights.url)


def _strip_classifier(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """Replace the last ``nn.Linear`` with the identity so the model returns its features."""
    last = None
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            last = module_name
    if last is None:
        raise WeightsError(f"torchvision model '{name}' has no linear classifier to remove")
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, torch.nn.Identity())
    return model


def build_torchvision(name: str, weights: Any, request: tlkit.WeightsRequest) -> tlkit.BuiltBackbone:
    """Build ``name`` with the requested weights (``weights``: the enum entry for ``pretrained``), without its classifier."""
    if request.kind == "random":
        return random_weights(_strip_classifier(get_model(name, weights=None), name))
    path = request.path if request.path is not None else fetch_pretrained(weights.url, f"torchvision '{name}' ({weights})")
    # GoogLeNet and Inception-v3 checkpoints include their auxiliary classifiers.
    extra = {"aux_logits": True, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = get_model(name, weights=None, num_classes=len(weights.meta["categories"]), **extra)
    built = from_weights_file(model, path, what=f"torchvision '{name}'")
    _strip_classifier(model, name)
    return built


def _spec(registered_name: str, model_name: str, entry: str = "DEFAULT", *, feature_dim: int | None = None, hidden: bool = False) -> tlkit.BackboneSpec:
    weights = _weights_entry(model_name, entry)
    top1 = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1", "?")
    return tlkit.BackboneSpec(
        name=registered_name,
        build=lambda request, options: build_torchvision(model_name, weights, request),
        preprocessing=lambda: tlkit.Preprocessing.from_torchvision(weights),
        feature_dim=feature_dim,
        description=f"torchvision {model_name} ({weights.name}, {top1}% ImageNet top-1)",
        weights_available=lambda: _weights_available(weights),
        hidden=hidden,
        card=lambda: _card(weights),
    )


def _card(weights: Any) -> dict[str, Any]:
    """Input size, parameter count and tag from the weights enum's own metadata (nothing is built)."""
    crop = getattr(weights.transforms(), "crop_size", None)
    return {"input_size": crop[0] if crop else None, "num_params": weights.meta.get("num_params"), "pretrained_tag": weights.name}


def _supported(name: str) -> bool:
    # SqueezeNet classifies with a convolution, not a linear layer: it has no pooled feature vector to expose.
    return not name.startswith("squeezenet")


@tlkit.hookimpl
def register_backbones(register: Any) -> None:
    for name in torchvision.models.list_models(module=torchvision.models):
        if not _supported(name):
            continue
        dim = 512 if name == DEFAULT_ALIAS else None
        register(_spec(f"torchvision:{name}", name, feature_dim=dim))
        for entry in get_model_weights(name):
            register(_spec(f"torchvision:{name}.{entry.name}", name, entry.name, feature_dim=dim, hidden=True))
    register(_spec(DEFAULT_ALIAS, DEFAULT_ALIAS, feature_dim=512))
