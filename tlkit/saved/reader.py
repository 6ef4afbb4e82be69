"""A finished run directory as a model you can use: backbone + head -> class probabilities.

``model.json`` (:mod:`tlkit.saved.manifest`) names the backbone, its options and the sha256 of its weights; the head is rebuilt
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

import torch
from safetensors.torch import load_file

from tlkit.contract.options import validate_options
from tlkit.contract.plugin_manager import Plugins
from tlkit.contract.preprocessing import Preprocessing
from tlkit.contract.specs import BackboneSpec, HeadSpec, PluginOptions
from tlkit.contract.weights_request import WeightsRequest
from tlkit.errors import DataError, RunError, TlkitError, WeightsError
from tlkit.extract.features import NonFiniteFeatures
from tlkit.extract.pipeline import ImagePipeline
from tlkit.saved.head_files import load_head
from tlkit.saved.manifest import FILE as MANIFEST_FILE
from tlkit.saved.manifest import BackboneRecord, JSONObject, RunManifest
from tlkit.saved.manifest import read as read_manifest
from tlkit.saved.run_directory import MARKER, check_run_file, read_run_file, verify_files
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
    """A run rebuilt: its classes, preprocessing, backbone and head (both in eval mode, on the CPU).

    The backbone is built (and its weights checked) on first use of :attr:`backbone`: images the
    run's feature cache holds are classified without it (:mod:`tlkit.saved.run_features`).
    """

    run_dir: Path
    classes: list[str]
    pipeline: ImagePipeline
    build_backbone: Callable[[], torch.nn.Module]
    head: torch.nn.Module
    manifest: RunManifest
    batch_size: int = 32
    _backbone: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def backbone(self) -> torch.nn.Module:
        if self._backbone is None:
            self._backbone = self.build_backbone()
        return self._backbone

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
    cached: int = 0  # images answered from the run's feature cache
    note: str = ""  # what ran the backbone, when it ran (the runtime's note)

    def top(self, k: int) -> list[list[tuple[int, float]]]:
        """The ``k`` most probable (class index, probability) pairs of each image."""
        values, indices = self.probabilities.topk(min(k, self.probabilities.shape[1]), dim=1)
        return [list(zip(i.tolist(), v.tolist())) for i, v in zip(indices, values)]


def _read_classes(path: Path, manifest: RunManifest) -> list[str]:
    """``classes.json``: a list of distinct names, the very list ``model.json`` records."""
    try:
        classes = json.loads(read_run_file(path).decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise RunError(f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:80]}); run the recipe again") from None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise RunError(f"{path} is not a non-empty list of class names; run the recipe again")
    if len(set(classes)) != len(classes):
        raise RunError(f"{path} names a class twice; run the recipe again")
    if tuple(classes) != manifest.classes:
        raise RunError(
            f"{path} lists {len(classes)} classes that are not the {len(manifest.classes)} of {MANIFEST_FILE} "
            "(the two files disagree: one was edited); run the recipe again"
        )
    return classes


def _check_outputs(head: torch.nn.Module, classes: list[str], dim: int, path: Path) -> None:
    """The head gives one score per class for a feature vector of the recorded size, or the run is refused."""
    try:
        with torch.no_grad():
            scores = head(torch.zeros(1, dim))
        width = scores.shape[-1] if scores.dim() == 2 and scores.shape[0] == 1 else None
    except (RuntimeError, ValueError, TypeError, IndexError):
        width = None
    if width != len(classes):
        shown = "scores of another shape" if width is None else f"{width} scores"
        raise RunError(f"{path} gives {shown} for a feature vector of {dim}, not one per class of the run's {len(classes)}; run the recipe again")


def _options(spec: BackboneSpec[PluginOptions] | HeadSpec[PluginOptions], saved: JSONObject, section: str, run_dir: Path) -> PluginOptions:
    try:
        return validate_options(spec.options, saved, section)
    except TlkitError as exc:
        raise RunError(f"run {run_dir}: the saved {section} options no longer fit plugin '{spec.name}' ({exc})") from None


def _backbone(plugins: Plugins, saved: BackboneRecord, run_dir: Path) -> torch.nn.Module:
    name = saved.name
    try:
        spec = plugins.backbones.get(name)
    except TlkitError as exc:
        raise RunError(f"run {run_dir} needs backbone '{name}': {exc}") from None
    options = _options(spec, saved.options, "backbone", run_dir)
    expected = saved.weights_sha256
    if saved.in_run:
        # Weights no plugin can rebuild (random, fine-tuned) travel in the run: the architecture comes
        # from a random build, every tensor from the run's own file.
        built = spec.build(WeightsRequest.random(), options)
        path = run_dir / "backbone.safetensors"
        if not path.exists():
            raise WeightsError(f"run {run_dir} keeps its backbone weights in {path.name}, which is missing; run the recipe again")
        check_run_file(path)  # a regular file of a sane size: never a link to /dev/zero or a FIFO
        load_into(built.model, load_file(str(path)), path, what=f"backbone '{name}'")
        return built.model.eval()
    weights = saved.weights
    if weights is not None:  # an explicit file: check it before spending time on loading it
        path = Path(saved.weights_file or weights)
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


def load_model(run_dir: Path | str, plugins: Plugins, *, lazy_backbone: bool = False) -> SavedModel:
    """Rebuild the model of a finished run; errors name the run and say what to do.

    ``lazy_backbone`` builds the backbone (and checks its weights) only when it is first needed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist")
    if not (run_dir / MARKER).is_file():
        raise RunError(f"{run_dir} is not a finished tlkit run (no {MARKER}); give the --out folder of a completed 'tlkit run'")
    verify_files(run_dir)  # every file read below is the one the run wrote, or the run is refused
    manifest = read_manifest(run_dir / MANIFEST_FILE)
    classes = _read_classes(run_dir / "classes.json", manifest)
    try:
        head_spec = plugins.heads.get(manifest.head.name)
    except TlkitError as exc:
        raise RunError(f"run {run_dir} needs head '{manifest.head.name}': {exc}") from None
    options = _options(head_spec, manifest.head.options, "head", run_dir)
    head = load_head(head_spec, run_dir / "head.safetensors", options)
    _check_outputs(head, classes, manifest.features.dim, run_dir / "head.safetensors")
    model = SavedModel(
        run_dir=run_dir,
        classes=classes,
        pipeline=manifest.pipeline,
        build_backbone=lambda: _backbone(plugins, manifest.backbone, run_dir),
        head=head,
        manifest=manifest,
        batch_size=manifest.features.batch_size,
    )
    if not lazy_backbone:
        model.backbone  # noqa: B018 - built now: a missing or changed weights file is refused at load
    return model


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
    model: SavedModel,
    paths: Sequence[Path],
    *,
    device: str = "auto",
    workers: int | None = None,
    on_batch: Callable[[int], None] = lambda n: None,
    cache: bool = True,
) -> Predictions:
    """Class probabilities for image files, through the run's own fast path (:mod:`tlkit.saved.run_features`).

    Images in the run's feature cache are not decoded (``cache=False`` computes every one); the
    rest go through the run's runtime and decoding workers. ``on_batch(n)`` is called as ``n``
    files are done (the CLI's progress bar).
    """
    from tlkit.saved.run_features import run_features

    try:
        result, note = run_features(model, list(paths), device=device, workers=workers, cache=cache, on_batch=on_batch)
    except NonFiniteFeatures as exc:
        raise NonFiniteFeatures(f"run {model.run_dir}, backbone '{model.manifest.backbone.name}': {exc}") from None
    kept = [paths[i] for i in result.kept]
    if not kept:
        return Predictions(paths=[], probabilities=torch.empty(0, len(model.classes)), bad=result.bad, note=note)
    with torch.no_grad():
        probabilities = model.head(result.features).softmax(1)
    return Predictions(paths=kept, probabilities=probabilities, bad=result.bad, cached=result.cached, note=note)
