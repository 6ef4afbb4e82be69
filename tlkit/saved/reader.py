"""A finished run directory as a model you can use: backbone + head -> class probabilities.

``model.json`` names the backbone, its options and the sha256 of its weights; the head is rebuilt
from ``head.safetensors`` and the constructor settings in its metadata (:mod:`tlkit.saved.head_files`). The backbone is rebuilt with the very
weights the head was trained on, checked by sha256: a weights file that is missing or has changed
is an error, never a silent source of different features. Random weights (``weights: none``) are
kept in the run as ``backbone.safetensors``. Prediction decodes and preprocesses images through
the same code as extraction (:mod:`tlkit.extract.features`, :mod:`tlkit.extract.decode`), so a run's own test
images get exactly the probabilities the run recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tlkit.contract.options import validate_options
from tlkit.contract.plugin_manager import Plugins
from tlkit.contract.preprocessing import Preprocessing
from tlkit.contract.weights_request import WeightsRequest
from tlkit.errors import DataError, RunError, TlkitError, WeightsError
from tlkit.extract.features import extract, prepare_model, resolve_device
from tlkit.extract.pipeline import ImagePipeline, ImageSettings
from tlkit.saved.head_files import load_head
from tlkit.saved.run_directory import MARKER, verify_files
from tlkit.sources import image_files as walker
from tlkit.sources.weights import load_into, sha256_file


class Classifier(torch.nn.Module):
    """One module: a normalised image batch (N, 3, H, W) -> class probabilities (N, C)."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images).float().flatten(1)).softmax(1)


@dataclass
class SavedModel:
    """A run rebuilt: its classes, preprocessing, backbone and head (both in eval mode, on the CPU)."""

    run_dir: Path
    classes: list[str]
    pipeline: ImagePipeline
    backbone: torch.nn.Module
    head: torch.nn.Module
    info: dict[str, Any]
    batch_size: int = 32

    @property
    def preprocessing(self) -> Preprocessing:
        return self.pipeline.preprocessing

    @property
    def precision(self) -> str:
        return self.pipeline.precision

    def classifier(self) -> Classifier:
        return Classifier(self.backbone, self.head).eval()


@dataclass
class Predictions:
    """Probabilities (N, C) for the files that decoded, in input order, and the files that did not."""

    paths: list[Path]
    probabilities: torch.Tensor
    bad: list[tuple[Path, str]] = field(default_factory=list)

    def top(self, k: int) -> list[list[tuple[int, float]]]:
        """The ``k`` most probable (class index, probability) pairs of each image."""
        values, indices = self.probabilities.topk(min(k, self.probabilities.shape[1]), dim=1)
        return [list(zip(i.tolist(), v.tolist())) for i, v in zip(indices, values)]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path} is missing; the run directory is incomplete") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"{path} cannot be read ({exc})") from None


def _options(spec: Any, saved: dict[str, Any], section: str, run_dir: Path) -> Any:
    data = {k: v for k, v in saved.items() if k not in ("name", "weights")}
    try:
        return validate_options(spec.options, data, section)
    except TlkitError as exc:
        raise RunError(f"run {run_dir}: the saved {section} options no longer fit plugin '{spec.name}' ({exc})") from None


def _backbone(plugins: Plugins, info: dict[str, Any], run_dir: Path) -> torch.nn.Module:
    name = info["backbone"]
    try:
        spec = plugins.backbones.get(name)
    except TlkitError as exc:
        raise RunError(f"run {run_dir} needs backbone '{name}': {exc}") from None
    options = _options(spec, info.get("backbone_options") or {}, "backbone", run_dir)
    expected = info["weights_sha256"]
    if info.get("backbone_in_run", expected == "random"):
        # Weights no plugin can rebuild (random, fine-tuned) travel in the run: the architecture comes
        # from a random build, every tensor from the run's own file.
        built = spec.build(WeightsRequest.random(), options)
        saved = run_dir / "backbone.safetensors"
        if not saved.is_file():
            raise WeightsError(f"run {run_dir} keeps its backbone weights in {saved.name}, which is missing; run the recipe again")
        load_into(built.model, load_file(str(saved)), saved, what=f"backbone '{name}'")
        return built.model.eval()
    weights = info.get("backbone_weights")
    if weights is not None:  # an explicit file: check it before spending time on loading it
        weights = info.get("backbone_weights_file") or weights
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"backbone weights file {path} of run {run_dir} is missing; put it back (sha256 {expected[:16]}...)")
        _check_sha(sha256_file(path), expected, path, run_dir)
    built = spec.build(WeightsRequest.parse(weights), options)
    _check_sha(built.weights_id, expected, built.weights_path or Path(str(weights)), run_dir)
    return built.model.eval()


def _check_sha(actual: str, expected: str, path: Path, run_dir: Path) -> None:
    if actual != expected:
        raise WeightsError(
            f"backbone weights {path} have changed since run {run_dir} was made (sha256 {actual[:16]}... != {expected[:16]}...); "
            "the head was trained on features of the original weights: restore that file"
        )


def load_model(run_dir: Path | str, plugins: Plugins) -> SavedModel:
    """Rebuild the model of a finished run; errors name the run and say what to do."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist")
    if not (run_dir / MARKER).is_file():
        raise RunError(f"{run_dir} is not a finished tlkit run (no {MARKER}); give the --out folder of a completed 'tlkit run'")
    verify_files(run_dir)  # every file read below is the one the run wrote, or the run is refused
    info = _read_json(run_dir / "model.json")
    classes = [str(c) for c in _read_json(run_dir / "classes.json")]
    head_name = info["head"]
    try:
        head_spec = plugins.heads.get(head_name)
    except TlkitError as exc:
        raise RunError(f"run {run_dir} needs head '{head_name}': {exc}") from None
    options = _options(head_spec, info.get("head_options") or {}, "head", run_dir)
    head = load_head(head_spec, run_dir / "head.safetensors", options)
    extract_settings = info.get("extract") or {}
    return SavedModel(
        run_dir=run_dir,
        classes=classes,
        pipeline=saved_pipeline(info, run_dir),
        backbone=_backbone(plugins, info, run_dir),
        head=head,
        info=info,
        batch_size=int(extract_settings.get("batch_size", 32)),
    )


def saved_pipeline(info: dict[str, Any], run_dir: Path) -> ImagePipeline:
    """The run's image pipeline; runs of tlkit 0.1 saved only the preprocessing (their decoding was the default)."""
    try:
        if "pipeline" in info:
            return ImagePipeline.from_dict(info["pipeline"])
        precision = str((info.get("extract") or {}).get("precision", "fp32"))
        return ImagePipeline(ImageSettings(), Preprocessing.from_dict(info["preprocessing"]), precision)
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(f"{run_dir / 'model.json'} has no readable image pipeline ({type(exc).__name__}: {exc}); run the recipe again") from None


def image_files(inputs: Sequence[Path | str]) -> list[Path]:
    """Files as given, folders walked recursively by the loaders' own walker (:func:`tlkit.sources.image_files.walk_images`)."""
    for item in map(Path, inputs):
        if not item.exists():
            raise DataError(f"{item} does not exist; give image files or folders of images")
    found = walker.image_files(inputs).images
    if not found:
        raise DataError(f"no image files in {', '.join(map(str, inputs))} ({', '.join(walker.EXTENSIONS)})")
    return found


def predict(
    model: SavedModel, paths: Sequence[Path], *, device: str = "auto", workers: int | None = None, on_batch: Callable[[int], None] = lambda n: None
) -> Predictions:
    """Class probabilities for image files, through the same decoding and extraction as ``tlkit run``.

    ``on_batch(n)`` is called after every batch of ``n`` files (the CLI's progress bar).
    """
    target = resolve_device(device)
    backbone = prepare_model(model.backbone, target)
    result = extract(backbone, list(paths), model.pipeline, batch_size=model.batch_size, workers=workers, device=target, on_batch=on_batch)
    kept = [paths[i] for i in result.kept]
    if not kept:
        return Predictions(paths=[], probabilities=torch.empty(0, len(model.classes)), bad=result.bad)
    with torch.no_grad():
        probabilities = model.head(result.features).softmax(1)
    return Predictions(paths=kept, probabilities=probabilities, bad=result.bad)
