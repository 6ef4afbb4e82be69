"""Every torchvision classification model as a feature extractor: ``torchvision:<name>``, plus ``resnet18``.

The final linear layer is replaced by the identity, so the model returns the pooled features the
classifier would have seen (512-d for ResNet-18). Weights are resolved in this order: the recipe's
``backbone.weights`` file, the torch hub cache (where torchvision keeps them), then a download.
Never silently random: ``weights: none`` asks for that explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.models import get_model, get_model_weights

import tlkit
from tlkit.errors import WeightsError
from tlkit.weights import download, hub_checkpoint_dir, load_into, load_state_dict, sha256_file

DEFAULT_ALIAS = "resnet18"


def _weights_enum(name: str) -> Any:
    return get_model_weights(name).DEFAULT


def _checkpoint_filename(name: str) -> str:
    return Path(_weights_enum(name).url).name


def _weights_available(name: str) -> bool:
    return (hub_checkpoint_dir() / _checkpoint_filename(name)).is_file()


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


def _resolve_default_file(name: str) -> Path:
    weights = _weights_enum(name)
    filename = Path(weights.url).name
    cached = hub_checkpoint_dir() / filename
    if cached.is_file():
        return cached
    try:
        # torchvision's file names end in the first 8 hex digits of their sha256.
        prefix = filename.rsplit("-", 1)[-1].split(".")[0]
        return download(weights.url, cached, sha256_prefix=prefix if len(prefix) == 8 else None)
    except OSError as exc:
        raise WeightsError(
            f"no ImageNet weights for '{name}' offline and the download failed ({exc.__class__.__name__}): "
            f"put {filename} (from {weights.url}) in {cached.parent}/ or set backbone.weights: PATH "
            "(weights: none for random weights)"
        ) from exc


def build_torchvision(name: str, request: tlkit.WeightsRequest) -> tlkit.BuiltBackbone:
    """Build ``name`` with the requested weights and without its classifier."""
    if request.kind == "random":
        model = get_model(name, weights=None)
        return tlkit.BuiltBackbone(model=_strip_classifier(model, name), weights_id="random", saved_with_run=True)
    path = request.path if request.path is not None else _resolve_default_file(name)
    state = load_state_dict(path)
    num_classes = len(_weights_enum(name).meta["categories"])
    # GoogLeNet and Inception-v3 checkpoints include their auxiliary classifiers.
    extra = {"aux_logits": True, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = get_model(name, weights=None, num_classes=num_classes, **extra)
    load_into(model, state, path, what=f"torchvision '{name}'")
    return tlkit.BuiltBackbone(model=_strip_classifier(model, name), weights_id=sha256_file(path), weights_path=path)


def _spec(registered_name: str, model_name: str, *, feature_dim: int | None = None, hidden: bool = False) -> tlkit.BackboneSpec:
    weights = _weights_enum(model_name)
    return tlkit.BackboneSpec(
        name=registered_name,
        build=lambda request, options: build_torchvision(model_name, request),
        preprocessing=lambda: tlkit.Preprocessing.from_torchvision(weights),
        feature_dim=feature_dim,
        description=f"torchvision {model_name} ({weights.name}, {weights.meta.get('_metrics', {}).get('ImageNet-1K', {}).get('acc@1', '?')}% ImageNet top-1)",
        weights_available=lambda: _weights_available(model_name),
        hidden=hidden,
    )


def _supported(name: str) -> bool:
    # SqueezeNet classifies with a convolution, not a linear layer: it has no pooled feature vector to expose.
    return not name.startswith("squeezenet")


@tlkit.hookimpl
def register_backbones(register: Any) -> None:
    for name in torchvision.models.list_models(module=torchvision.models):
        if _supported(name):
            register(_spec(f"torchvision:{name}", name, feature_dim=512 if name == DEFAULT_ALIAS else None))
    register(_spec(DEFAULT_ALIAS, DEFAULT_ALIAS, feature_dim=512))
