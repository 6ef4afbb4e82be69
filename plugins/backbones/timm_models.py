"""Any timm model as a feature extractor: ``timm:<architecture>``.

Features come from ``num_classes=0`` (timm's pooled pre-logits); preprocessing from timm's own
pretrained config for that model. Weights: the recipe's ``backbone.weights`` file, else timm's
Hugging Face cache, else the hub when reachable, else a clear error. The catalogue is large, so its
entries are hidden from a plain ``tlkit backbones`` and shown for a pattern such as ``'timm:*'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm

import tlkit
from tlkit.errors import WeightsError
from tlkit.weights import load_into, load_state_dict, offline, sha256_file

PREFIX = "timm:"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _pretrained_cfg(arch: str) -> Any:
    return timm.models.get_pretrained_cfg(arch)


def cached_hub_file(arch: str) -> Path | None:
    """The weights file of ``arch``'s default pretrained tag in the Hugging Face cache, if present."""
    cfg = _pretrained_cfg(arch)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in _WEIGHT_FILES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _fetch_hub_file(arch: str) -> Path:
    cfg = _pretrained_cfg(arch)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise WeightsError(f"timm model '{arch}' has no pretrained weights on the hub; set backbone.weights: PATH or weights: none")
    if offline():
        raise WeightsError(f"no cached weights for timm '{arch}' and TLKIT_OFFLINE is set; set backbone.weights: PATH")
    from huggingface_hub import hf_hub_download

    last: Exception | None = None
    for filename in _WEIGHT_FILES:
        try:
            return Path(hf_hub_download(repo, filename, etag_timeout=10))
        except Exception as exc:  # hub errors come in many types; any of them means "not from here"
            last = exc
    raise WeightsError(
        f"no weights for timm '{arch}' offline and the hub is unreachable ({type(last).__name__}): "
        f"download {repo}/model.safetensors into the Hugging Face cache or set backbone.weights: PATH"
    )


def build_timm(arch: str, request: tlkit.WeightsRequest, *, state_map: Any = None) -> tlkit.BuiltBackbone:
    """Build timm ``arch`` as a feature extractor with the requested weights.

    ``state_map`` optionally renames a foreign state dict's keys into timm's (used by plugins that
    ship weights in another layout).
    """
    if request.kind == "random":
        return tlkit.BuiltBackbone(model=timm.create_model(arch, pretrained=False, num_classes=0), weights_id="random", saved_with_run=True)
    path = request.path if request.path is not None else (cached_hub_file(arch) or _fetch_hub_file(arch))
    state = load_state_dict(path)
    if state_map is not None:
        state = state_map(state)
    model = timm.create_model(arch, pretrained=False)
    load_into(model, state, path, what=f"timm '{arch}'")
    model.reset_classifier(0)
    return tlkit.BuiltBackbone(model=model, weights_id=sha256_file(path), weights_path=path)


def timm_spec(name: str, arch: str, **fields: Any) -> tlkit.BackboneSpec:
    """A spec for timm ``arch``: timm's preprocessing and weights resolution (fields override)."""
    defaults: dict[str, Any] = {
        "build": lambda request, options: build_timm(arch, request),
        "preprocessing": lambda: tlkit.Preprocessing.from_timm(_pretrained_cfg(arch) or {}),
        "description": f"timm {arch}",
        "weights_available": lambda: cached_hub_file(arch) is not None,
    }
    defaults.update(fields)
    return tlkit.BackboneSpec(name=name, **defaults)


@tlkit.hookimpl
def register_backbones(register: Any) -> None:
    for arch in timm.list_models():
        register(timm_spec(f"{PREFIX}{arch}", arch, hidden=True))
