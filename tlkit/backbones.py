"""Building blocks for backbone plugins: the public way to build a timm model, wrap any module, reuse a registered backbone.

A plugin should need nothing else from tlkit to write a backbone (and never ``tlkit_plugins``, the
built-ins' own package, whose insides may change). Every function takes the
:class:`~tlkit.WeightsRequest` tlkit parsed from ``backbone.weights`` and returns a
:class:`~tlkit.BuiltBackbone` whose ``weights_id`` the feature cache and ``tlkit predict`` can trust:

- :func:`timm_backbone` / :func:`timm_preprocessing`: any timm ``arch`` or ``arch.tag``, features from
  ``num_classes=0``, preprocessing from ``timm.data.resolve_data_config``, weights from the request,
  else the local copy / Hugging Face cache / hub (one line saying where the file goes when offline).
- :func:`wrap_module`: a :class:`~tlkit.BackboneSpec` for any ``nn.Module`` plus a
  :class:`~tlkit.Preprocessing`.
- :func:`registered` / :func:`build_registered` / :func:`derived_spec`: another registered backbone by
  name, e.g. to cut ``efficientnet_lite0`` after a middle stage and keep its weights and preprocessing.
- :func:`from_weights_file` / :func:`random_weights`: the two ends every builder needs.
- :func:`fetch_pretrained` / :func:`pretrained_available`: a published weights file (a URL such as a
  torchvision weights entry's ``url``) kept in torch hub's checkpoint folder, downloaded once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from tlkit.contract.preprocessing import Preprocessing
from tlkit.contract.specs import BackboneSpec, BuiltBackbone, NoOptions
from tlkit.contract.weights_request import WeightsRequest
from tlkit.errors import RegistryError
from tlkit.sources.weights import load_into, load_state_dict, sha256_file

__all__ = [
    "build_registered",
    "derived_spec",
    "fetch_pretrained",
    "from_weights_file",
    "random_weights",
    "pretrained_available",
    "registered",
    "state_sha256",
    "timm_backbone",
    "timm_preprocessing",
    "timm_weights_available",
    "wrap_module",
]

StateMap = Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]


def from_weights_file(model: torch.nn.Module, path: Path | str, *, what: str = "this backbone", state_map: StateMap | None = None) -> BuiltBackbone:
    """Load a weights file into ``model`` strictly and safely (``weights_only``, safetensors, ``.ot``).

    ``state_map`` is a function from the file's whole state dict (name -> tensor) to the state dict to
    load: rename a foreign file's keys, drop the ones the model lacks (a classifier), reshape a tensor.
    What it returns is loaded strictly: a file for another architecture is a
    :class:`~tlkit.errors.WeightsError` counting the missing and unexpected keys.
    """
    path = Path(path)
    state = load_state_dict(path)
    load_into(model, state_map(state) if state_map else state, path, what=what)
    return BuiltBackbone(model=model, weights_id=sha256_file(path), weights_path=path)


def random_weights(model: torch.nn.Module) -> BuiltBackbone:
    """``model`` as freshly initialised: tlkit seeded torch with the recipe's ``seed`` before ``build``,
    and keeps these weights in the run directory (``saved_with_run``) since nothing can rebuild them."""
    return BuiltBackbone(model=model, weights_id="random", saved_with_run=True)


def state_sha256(model: torch.nn.Module) -> str:
    """A sha256 of ``model``'s state dict (names, dtypes, shapes and bytes): a ``weights_id`` for weights made in code."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def fetch_pretrained(url: str, what: str) -> Path:
    """The weights file at ``url`` in torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), downloaded there once.

    A ``<name>-<first hex digits of its sha256>.<ext>`` file name (torchvision's and timm's) is checked
    against the download. Offline, or when the host is unreachable, a :class:`~tlkit.errors.WeightsError`
    names ``what`` and where to put the file by hand (and the CLI adds how to run offline).
    """
    from tlkit.sources.pretrained import fetch_url

    return fetch_url(url, what)


def pretrained_available(url: str) -> bool:
    """Whether :func:`fetch_pretrained` has ``url``'s file on this machine already (no network is tried)."""
    from urllib.parse import urlsplit

    from tlkit.sources.weights import hub_checkpoint_dir

    return (hub_checkpoint_dir() / Path(urlsplit(url).path).name).is_file()


# --- timm ------------------------------------------------------------------------------------------


def timm_preprocessing(name: str) -> Preprocessing:
    """timm ``name``'s eval preprocessing, from ``timm.data.resolve_data_config`` (every crop mode)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    try:
        return Preprocessing.from_timm(cfg or {})
    except ValueError as exc:
        raise RegistryError(f"timm '{name}' cannot be used by tlkit: {exc}") from None


def timm_weights_available(name: str) -> bool:
    """Whether timm ``name``'s pretrained weights are on this machine (no network is tried)."""
    from tlkit.sources.pretrained import timm_cached_file

    return timm_cached_file(name) is not None


def timm_backbone(name: str, request: WeightsRequest, *, state_map: StateMap | None = None) -> BuiltBackbone:
    """timm ``arch`` or ``arch.tag`` without its classifier: pooled pre-logit features.

    ``pretrained`` weights come from :func:`tlkit.sources.pretrained.timm_weights_file` (plain ``arch`` means
    timm's default tag); ``file`` weights are loaded into the model before its classifier is removed.
    """
    import timm

    if request.kind == "random":
        return random_weights(timm.create_model(name, pretrained=False, num_classes=0))
    if request.path is not None:
        path = request.path
    else:
        from tlkit.sources.pretrained import timm_weights_file

        path = timm_weights_file(name)
    model: Any = timm.create_model(name, pretrained=False)  # reset_classifier is timm's, not nn.Module's
    built = from_weights_file(model, path, what=f"timm '{name}'", state_map=state_map)
    model.reset_classifier(0)
    return built


# --- any module, and other registered backbones ----------------------------------------------------


def _reinitialise(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return model


def wrap_module(
    name: str,
    factory: Callable[[Any], torch.nn.Module],
    preprocessing: Preprocessing | Callable[[], Preprocessing],
    *,
    feature_dim: int | None = None,
    description: str = "",
    options: type = NoOptions,
    weights_available: Callable[[], bool] | None = None,
    hidden: bool = False,
) -> BackboneSpec:
    """A backbone spec for any module: ``factory(options)`` returns it with its default weights.

    The module must map ``(N, 3, H, W)`` batches to ``(N, D)`` features. ``pretrained`` is the module
    as the factory made it (``weights_id`` is :func:`state_sha256` of it, so a changed factory never
    reuses old cached features); ``random`` calls every submodule's ``reset_parameters()``; ``file``
    loads the file into it strictly.
    """

    def build(request: WeightsRequest, opts: Any) -> BuiltBackbone:
        model = factory(opts)
        if request.kind == "random":
            return random_weights(_reinitialise(model))
        if request.path is not None:
            return from_weights_file(model, request.path, what=f"backbone '{name}'")
        return BuiltBackbone(model=model, weights_id=state_sha256(model))

    return BackboneSpec(
        name=name,
        build=build,
        preprocessing=preprocessing,
        feature_dim=feature_dim,
        description=description,
        options=options,
        weights_available=weights_available,
        hidden=hidden,
    )


def registered(name: str) -> BackboneSpec:
    """The backbone registered as ``name`` in this process's plugins (unknown names suggest the closest).

    Safe inside a ``register_backbones`` hook: there it answers from what is registered so far (the
    built-ins, whose hooks run first, and the plugins loaded before this one) and never loads the
    plugins again.
    """
    from tlkit.contract.plugin_manager import get_plugins, loading

    current = loading()
    if current is not None:
        return current.get(name)  # type: ignore[no-any-return]
    return get_plugins().backbones.get(name)


def build_registered(name: str, request: WeightsRequest, options: Any = None) -> BuiltBackbone:
    """Build the registered backbone ``name`` with ``request`` (and its default options unless given)."""
    spec = registered(name)
    return spec.build(request, spec.options() if options is None else options)


def _base_lookup(base: str) -> Callable[[], BackboneSpec]:
    """How a derived entry finds ``base`` later: in the registry of the load that made it if it is there, else the process's plugins.

    A spec made inside a hook belongs to that load's registries (``tlkit.testing.load_plugin`` makes
    its own), which may not be the process-wide ones.
    """
    from tlkit.contract.plugin_manager import loading

    source = loading()

    def lookup() -> BackboneSpec:
        if source is None or loading() is source or base not in source.backbones:
            return registered(base)  # a kit load without the built-ins: the process's plugins have the base
        return source.backbones.get(base)  # type: ignore[no-any-return]

    return lookup


def derived_spec(
    name: str,
    base: str,
    change: Callable[..., torch.nn.Module],
    *,
    feature_dim: int | None = None,
    description: str = "",
    hidden: bool = False,
    options: type = NoOptions,
) -> BackboneSpec:
    """A backbone made from registered backbone ``base``: its model passed through ``change``.

    ``base`` is built with the same weights request (and its default options), so ``backbone.weights``
    means for the new entry what it means for ``base``; its ``weights_id``, preprocessing and
    ``weights_available`` carry over. ``change`` may keep a part of the model (cut after a stage) or add
    to it. With ``options`` (a frozen dataclass: what a recipe may set for the new entry) it is called as
    ``change(model, options)``, else as ``change(model)``.
    """
    base_spec = _base_lookup(base)

    def build(request: WeightsRequest, opts: Any) -> BuiltBackbone:
        spec = base_spec()
        built = spec.build(request, spec.options())
        model = change(built.model, opts) if options is not NoOptions else change(built.model)
        return BuiltBackbone(model=model, weights_id=built.weights_id, weights_path=built.weights_path, saved_with_run=built.saved_with_run)

    def available() -> bool:
        check = base_spec().weights_available
        return bool(check()) if check is not None else False

    return BackboneSpec(
        name=name,
        build=build,
        preprocessing=lambda: base_spec().resolve_preprocessing(),
        feature_dim=feature_dim,
        description=description or f"{base}, changed",
        options=options,
        weights_available=available,
        hidden=hidden,
    )
