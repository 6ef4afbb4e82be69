"""Contract checks for plugin authors: run them in your plugin's own test suite.

Each check builds or loads one registered entry the way ``tlkit run`` would and holds it to what
docs/plugins.md ("Writing a plugin") promises. A broken promise raises ``AssertionError`` with a
message that says what differs, e.g. ``backbone 'x' declares feature_dim 64 but produces 32-d
features``, so a plain ``pytest`` run shows the author what to fix::

    import tlkit.testing
    import tlkit_myplugin

    def test_contract():
        plugins = tlkit.testing.load_plugin(tlkit_myplugin)   # fails if the plugin would be skipped
        tlkit.testing.check_backbone("tiny_cnn", plugins=plugins)
        tlkit.testing.check_dataset("csv_pairs", {"train_csv": ..., "test_csv": ...}, plugins=plugins)
        tlkit.testing.check_head("my_centroid", plugins=plugins)

Without ``plugins=`` the checks use the installed plugins (entry points and built-ins).
Images and features are generated, so the checks need no data and no network. ``check_head`` also
exports the trained head (``torch.export`` and ONNX, :func:`check_exports`) as ``tlkit export`` will;
:func:`run_tiny_recipe` runs all of a plugin's entries together through tlkit's own engine. A
:class:`~tlkit.errors.TlkitError` the plugin raises itself (a ``RecipeError`` from its options or its
``build``) is raised as it is, so a test can expect that very error.
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from tlkit.contract.options import validate_options
from tlkit.contract.plugin_manager import Plugins, PluginWarning, get_plugins, load_plugins
from tlkit.contract.preprocessing import Preprocessing
from tlkit.contract.registry import Registry
from tlkit.contract.specs import BackboneSpec, BuiltBackbone, DatasetSpec, Features, FitContext, HeadSpec, LoadedDataset, Sample, TrainedHead
from tlkit.contract.weights_request import WeightsRequest
from tlkit.errors import TlkitError
from tlkit.extract.decode import BadImage, open_rgb
from tlkit.extract.features import extract, prepare_model
from tlkit.extract.pipeline import ImagePipeline, ImageSettings

if TYPE_CHECKING:
    from tlkit.run.finish import RunResult

__all__ = [
    "EXPORT_FORMATS",
    "BackboneReport",
    "HeadReport",
    "Plugins",
    "check_backbone",
    "check_dataset",
    "check_exports",
    "check_head",
    "load_plugin",
    "make_features",
    "make_image_folder",
    "make_images",
    "run_tiny_recipe",
]


def load_plugin(plugin: object, *, builtins: bool = True) -> Plugins:
    """Load ``plugin`` (a module, class or instance) in-process, with the built-ins and no entry points.

    Fails if tlkit would skip the plugin (import-time errors aside: those happen in your own
    ``import``), giving the reason ``tlkit plugins`` would show, or if it registers nothing.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)  # the reason is raised below instead
        plugins = load_plugins(entry_points=False, builtins=builtins, extra=[plugin])
    status = next(s for s in plugins.status.values() if not s.builtin)
    if status.failed:
        raise AssertionError(f"plugin '{status.name}' would be skipped{' as incompatible' if status.incompatible else ''}: {status.error}")
    if not status.registered:
        raise AssertionError(f"plugin '{status.name}' registered nothing (hooks it implements: {', '.join(status.hooks) or 'none'})")
    return plugins


def _spec(plugins: Plugins | None, kind: str, name: str) -> Any:
    plugins = plugins or get_plugins()
    registry: Registry[Any] = {"backbone": plugins.backbones, "dataset": plugins.datasets, "head": plugins.heads}[kind]  # type: ignore[assignment]
    try:
        return registry.get(name)
    except TlkitError as exc:
        raise AssertionError(str(exc)) from None


def _options(spec: Any, kind: str, options: Any) -> Any:
    """The options instance a recipe section would produce (a mapping is validated like a recipe's).

    A :class:`~tlkit.errors.TlkitError` the plugin's own code raised (its options' ``__post_init__``)
    is raised as it is, so a test can expect that very error; tlkit's own checks of the mapping (an
    unknown key, a wrong type, a ``ValueError`` turned into a recipe line) fail as ``AssertionError``
    saying the options do not validate, as they always have.
    """
    if isinstance(options, spec.options):
        return options
    try:
        return validate_options(spec.options, dict(options or {}), kind)
    except TlkitError as exc:
        if _raised_outside_tlkit(exc):
            raise
        raise AssertionError(f"{kind} '{spec.name}': its options do not validate: {exc}") from exc


def _raised_outside_tlkit(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by plugin code (the innermost frame is not in tlkit's option validation)."""
    import tlkit.contract.options as options_module

    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename != options_module.__file__


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), rtol=1e-4, atol=atol))


# --- backbones ------------------------------------------------------------------------------------


def make_images(folder: Path, n: int = 4, seed: int = 0) -> list[Path]:
    """``n`` small RGB image files of assorted sizes, shapes and formats (JPEG and PNG), deterministic for ``seed``."""
    rng = random.Random(seed)
    sizes = [(320, 240), (97, 131), (224, 224), (64, 48), (500, 180)]
    paths = []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        image = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        pixels = image.load()
        assert pixels is not None
        for x in range(0, w, 3):
            for y in range(0, h, 3):
                pixels[x, y] = tuple(rng.randrange(256) for _ in range(3))
        path = folder / f"image_{i}.{'jpg' if i % 2 == 0 else 'png'}"
        image.save(path)
        paths.append(path)
    return paths


@dataclasses.dataclass(frozen=True)
class BackboneReport:
    """What :func:`check_backbone` measured."""

    name: str
    feature_dim: int
    weights_id: str
    preprocessing: Preprocessing


def _check_preprocessing(spec: BackboneSpec, image: Path) -> Preprocessing:
    try:
        pre = spec.resolve_preprocessing()
    except Exception as exc:
        raise AssertionError(f"backbone '{spec.name}': its preprocessing cannot be computed ({type(exc).__name__}: {exc})") from exc
    if not isinstance(pre, Preprocessing):
        raise AssertionError(f"backbone '{spec.name}': preprocessing is a {type(pre).__name__}, not a tlkit.Preprocessing")
    if Preprocessing.from_dict(pre.to_dict()) != pre:
        raise AssertionError(f"backbone '{spec.name}': preprocessing does not survive to_dict/from_dict (it is saved in model.json)")
    tensor = pre.transform()(open_rgb(image))
    expected = (3, pre.crop_size, pre.crop_size)
    if tuple(tensor.shape) != expected or not torch.isfinite(tensor).all():
        raise AssertionError(f"backbone '{spec.name}': preprocessing gives a {tuple(tensor.shape)} tensor, expected finite {expected}")
    return pre


def check_backbone(
    name: str,
    options: Mapping[str, Any] | Any = None,
    *,
    weights: str | WeightsRequest | None = "none",
    plugins: Plugins | None = None,
    images: int = 4,
) -> BackboneReport:
    """Build backbone ``name`` and run generated images through it exactly as ``tlkit run`` does.

    Checks: its preprocessing is a valid :class:`~tlkit.Preprocessing`; ``build(weights, options)``
    returns a :class:`~tlkit.BuiltBackbone`; the model maps a batch to finite ``(N, D)`` features;
    ``D`` equals the declared ``feature_dim``; in eval mode the features are the same on a second
    pass and do not depend on the other images in the batch. ``weights`` is what a recipe's
    ``backbone.weights`` may say (or a :class:`~tlkit.WeightsRequest`): ``"none"`` (the default)
    asks for random weights, ``None`` for the default pretrained weights, else a file path.
    """
    spec: BackboneSpec = _spec(plugins, "backbone", name)
    opts = _options(spec, "backbone", options)
    with tempfile.TemporaryDirectory(prefix="tlkit-check-") as tmp:
        paths = make_images(Path(tmp), images)
        pre = _check_preprocessing(spec, paths[0])
        built = _check_build(spec, weights, opts)
        model = prepare_model(built.model, torch.device("cpu"))
        dim = _check_forward(spec, model, pre, paths)
        _check_determinism(name, model, ImagePipeline(ImageSettings(), pre), paths)
    if spec.weights_available is not None and not isinstance(spec.weights_available(), bool):
        raise AssertionError(f"backbone '{name}': weights_available() must return a bool")
    return BackboneReport(name=name, feature_dim=dim, weights_id=built.weights_id, preprocessing=pre)


def _check_build(spec: BackboneSpec, weights: str | WeightsRequest | None, opts: Any) -> BuiltBackbone:
    name = spec.name
    try:
        built = spec.build(WeightsRequest.parse(weights), opts)
    except TlkitError:  # the plugin's own one-line error (options it checks in build, a missing weights file)
        raise
    except Exception as exc:
        raise AssertionError(f"backbone '{name}' failed to build with weights={weights!r} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(built, BuiltBackbone):
        raise AssertionError(f"backbone '{name}': build() returned a {type(built).__name__}, expected tlkit.BuiltBackbone")
    if not isinstance(built.model, torch.nn.Module):
        raise AssertionError(f"backbone '{name}': BuiltBackbone.model is a {type(built.model).__name__}, expected a torch.nn.Module")
    if not isinstance(built.weights_id, str) or not built.weights_id:
        raise AssertionError(f"backbone '{name}': BuiltBackbone.weights_id must be a non-empty string (the feature cache keys on it)")
    return built


def _check_forward(spec: BackboneSpec, model: torch.nn.Module, pre: Preprocessing, paths: list[Path]) -> int:
    """The feature dimension, after checking the output's shape, declared dimension and finiteness."""
    name = spec.name
    transform = pre.transform()
    batch = torch.stack([transform(open_rgb(p)) for p in paths]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        raw = model(batch)
    if not isinstance(raw, torch.Tensor) or raw.ndim != 2 or raw.shape[0] != len(paths):
        shape = tuple(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
        raise AssertionError(f"backbone '{name}' maps a batch of {len(paths)} images to {shape}, expected ({len(paths)}, D) features")
    dim = int(raw.shape[1])
    if spec.feature_dim is not None and spec.feature_dim != dim:
        raise AssertionError(f"backbone '{name}' declares feature_dim {spec.feature_dim} but produces {dim}-d features")
    if not torch.isfinite(raw).all():
        raise AssertionError(f"backbone '{name}' produces non-finite features (NaN or inf)")
    return dim


def _check_determinism(name: str, model: torch.nn.Module, pipeline: ImagePipeline, paths: list[Path]) -> None:
    first = extract(model, paths, pipeline, batch_size=len(paths), workers=0)
    if first.bad:
        raise AssertionError(f"backbone '{name}': generated images failed to decode: {first.bad[0][1]}")
    again = extract(model, paths, pipeline, batch_size=len(paths), workers=0)
    if not _close(first.features, again.features):
        raise AssertionError(
            f"backbone '{name}' gives different features for the same images on a second pass "
            f"(max difference {_max_diff(first.features, again.features):.3g}); in eval mode it must be deterministic"
        )
    alone = extract(model, paths, pipeline, batch_size=1, workers=0)
    scale = max(1.0, float(first.features.abs().max()))
    if not _close(first.features, alone.features, atol=1e-4 * scale):
        raise AssertionError(
            f"backbone '{name}': an image's features depend on the other images in its batch "
            f"(max difference {_max_diff(first.features, alone.features):.3g}); is a BatchNorm left in training mode?"
        )


# --- data sets ------------------------------------------------------------------------------------


def check_dataset(name: str, options: Mapping[str, Any] | Any = None, *, plugins: Plugins | None = None, decode: int | None = None) -> LoadedDataset:
    """Load data set ``name`` with ``options`` (as in a recipe's ``dataset:`` section) and check what it returns.

    Checks: a :class:`~tlkit.LoadedDataset` with unique class names; non-empty ``train`` and
    ``test`` splits of :class:`~tlkit.Sample` whose paths exist and whose labels index ``classes``;
    the same samples in the same order on a second load (runs are reproducible); and that the
    files decode as images (all of them, or the first ``decode`` of each split).
    """
    spec: DatasetSpec = _spec(plugins, "dataset", name)
    opts = _options(spec, "dataset", options)
    loaded = spec.load(opts)
    if not isinstance(loaded, LoadedDataset):
        raise AssertionError(f"dataset '{name}': load() returned a {type(loaded).__name__}, expected tlkit.LoadedDataset")
    classes = loaded.classes
    if not isinstance(classes, tuple) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise AssertionError(f"dataset '{name}': classes must be a non-empty tuple of non-empty strings, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise AssertionError(f"dataset '{name}': class names repeat: {classes!r}")
    for split in ("train", "test"):
        samples = loaded.splits.get(split) if isinstance(loaded.splits, Mapping) else None
        if not samples:
            raise AssertionError(f"dataset '{name}': the '{split}' split is missing or empty (splits: {sorted(loaded.splits)})")
        for index, sample in enumerate(samples):
            where = f"dataset '{name}': {split}[{index}]"
            if not isinstance(sample, Sample):
                raise AssertionError(f"{where} is a {type(sample).__name__}, expected tlkit.Sample(path, label)")
            if not isinstance(sample.path, Path):
                raise AssertionError(f"{where}.path is a {type(sample.path).__name__}, expected pathlib.Path")
            if isinstance(sample.label, bool) or not isinstance(sample.label, int) or not 0 <= sample.label < len(classes):
                raise AssertionError(f"{where}.label is {sample.label!r}, expected an int in 0..{len(classes) - 1}")
            if not sample.path.is_file():
                raise AssertionError(f"{where}.path {sample.path} is not a file")
            if decode is None or index < decode:
                try:
                    open_rgb(sample.path)
                except BadImage as exc:
                    raise AssertionError(f"{where}.path {sample.path} does not decode as an image ({exc})") from None
    if not all(isinstance(note, str) for note in loaded.notes):
        raise AssertionError(f"dataset '{name}': notes must be strings")
    second = spec.load(opts)
    if second.classes != classes or any(list(second.splits[s]) != list(loaded.splits[s]) for s in ("train", "test")):
        raise AssertionError(f"dataset '{name}' returns different classes or samples on a second load; sort them so runs are reproducible")
    return loaded


# --- exports --------------------------------------------------------------------------------------

EXPORT_FORMATS: tuple[str, ...] = ("pt2", "onnx")


def check_exports(what: str, module: torch.nn.Module, example: torch.Tensor, *, formats: Sequence[str] = EXPORT_FORMATS) -> None:
    """``module`` exports as each of ``formats`` (``pt2``: ``torch.export``, ``onnx``: ``torch.onnx``) and agrees with eager.

    First, ``forward`` must not hand a tensor's value to Python (``.item()``, ``.numpy()``,
    ``.tolist()``, ``if tensor:``): that fails with one message naming the operation and its line.
    Then each export is written to a temporary folder, loaded back and run on a batch of another
    size than ``example`` (the batch axis must be free); its outputs must match eager within 1e-4.
    ``what`` names the module in messages (``"head 'my_centroid'"``); no ``formats``, no checks.
    """
    from tlkit.saved.export import SUFFIXES, TOLERANCE, batch_of, round_trip
    from tlkit.saved.host_ops import host_op_problem

    if not formats:
        return
    problem = host_op_problem(what, module, example)
    if problem:
        raise AssertionError(problem)
    expected = _logits(module, batch_of(example, 3))
    for fmt in formats:
        if fmt not in SUFFIXES:
            raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(SUFFIXES)}")
        with tempfile.TemporaryDirectory(prefix="tlkit-check-") as tmp:
            try:
                exported = round_trip(module, example, fmt, Path(tmp))  # type: ignore[arg-type]
            except TlkitError as exc:  # onnx/onnxruntime missing: the message says what to install
                raise AssertionError(f"{what}: cannot check the {fmt} export: {exc}") from None
            except Exception as exc:
                raise AssertionError(f"{what} does not export as {fmt} ({type(exc).__name__}: {_last_line(exc)})") from exc
        if not _close(expected, exported, atol=TOLERANCE):
            raise AssertionError(f"{what}: its {fmt} export differs from eager by {_max_diff(expected, exported):.3g} (> {TOLERANCE:g})")


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:300]


# --- heads ----------------------------------------------------------------------------------------


def make_features(num_classes: int = 3, dim: int = 8, per_class: int = 12, seed: int = 0, noise_seed: int | None = None) -> Features:
    """Well-separated Gaussian blobs, one per class: any working head classifies them almost perfectly.

    ``seed`` places the class centres; ``noise_seed`` (default: ``seed``) draws the points, so two
    calls with one ``seed`` and different ``noise_seed`` give a training and a test set of one task.
    """
    centres = 4.0 * torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(num_classes).repeat_interleave(per_class)
    noise = torch.Generator().manual_seed(seed if noise_seed is None else noise_seed)
    x = centres[y] + 0.5 * torch.randn(len(y), dim, generator=noise)
    return Features(x.float(), y)


@dataclasses.dataclass(frozen=True)
class HeadReport:
    """What :func:`check_head` measured."""

    name: str
    test_accuracy: float
    history: Sequence[Mapping[str, float]]


def _fit(spec: HeadSpec, train: Features, opts: Any, num_classes: int, seed: int, monitor: Features | None) -> tuple[TrainedHead, list[Mapping[str, float]]]:
    reports: list[Mapping[str, float]] = []
    ctx = FitContext(num_classes=num_classes, seed=seed, monitor=monitor, report=lambda epoch, values: reports.append(dict(values)))
    torch.manual_seed(seed)  # as the engine does before fit
    trained = spec.fit(train, opts, ctx)
    if not isinstance(trained, TrainedHead):
        raise AssertionError(f"head '{spec.name}': fit() returned a {type(trained).__name__}, expected tlkit.TrainedHead")
    if not isinstance(trained.module, torch.nn.Module):
        raise AssertionError(f"head '{spec.name}': TrainedHead.module is a {type(trained.module).__name__}, expected a torch.nn.Module")
    return trained, reports


def _logits(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module.eval()(x)


def _saved_and_rebuilt(spec: HeadSpec, trained: TrainedHead, opts: Any) -> torch.nn.Module:
    """The head saved as the run directory saves it (tensors + config metadata) and rebuilt from the file."""
    from safetensors.torch import save_file

    from tlkit.saved.head_files import build_head, head_metadata, head_tensors, read_head_file

    name = spec.name
    with tempfile.TemporaryDirectory(prefix="tlkit-check-") as tmp:
        target = Path(tmp) / "head.safetensors"
        try:
            save_file(head_tensors(trained.module), str(target), metadata=head_metadata(name, trained))
        except Exception as exc:
            raise AssertionError(f"head '{name}': its state_dict or config cannot be saved as safetensors ({type(exc).__name__}: {exc})") from exc
        tensors, metadata = read_head_file(target)
        try:
            loaded = build_head(spec, tensors, metadata, opts, target)
        except Exception as exc:
            raise AssertionError(f"head '{name}': build()/load() fails on its own saved head ({type(exc).__name__}: {exc})") from exc
    if not isinstance(loaded, torch.nn.Module):
        raise AssertionError(f"head '{name}': load() returned a {type(loaded).__name__}, expected a torch.nn.Module")
    return loaded


def check_head(
    name: str,
    options: Mapping[str, Any] | Any = None,
    *,
    plugins: Plugins | None = None,
    num_classes: int = 3,
    dim: int = 8,
    seed: int = 0,
    min_accuracy: float = 0.9,
    exports: Sequence[str] = EXPORT_FORMATS,
) -> HeadReport:
    """Fit head ``name`` on generated, well-separated features and check what it returns.

    Checks: ``fit`` returns a :class:`~tlkit.TrainedHead` whose module maps ``(N, D)`` features to
    finite ``(N, num_classes)`` logits; it reaches ``min_accuracy`` on held-out blobs; the same seed
    gives the same head; setting ``FitContext.monitor`` changes nothing (a head must never choose by
    the test features); and the head saved as the run directory saves it (``state_dict`` as
    safetensors, ``TrainedHead.config`` in the metadata) and rebuilt by ``build(config)`` (or
    ``load(tensors, options)``) gives the same logits; and, as ``tlkit export`` needs, that it
    exports (:func:`check_exports`, each of ``exports``) and the export agrees with eager.
    """
    spec: HeadSpec = _spec(plugins, "head", name)
    opts = _options(spec, "head", options)
    train = make_features(num_classes, dim, per_class=12, seed=seed)
    test = make_features(num_classes, dim, per_class=6, seed=seed, noise_seed=seed + 1)

    trained, reports = _fit(spec, train, opts, num_classes, seed, monitor=test)
    logits = _logits(trained.module, test.x)
    expected = (len(test), num_classes)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise AssertionError(f"head '{name}' maps {tuple(test.x.shape)} features to {shape}, expected {expected} logits")
    if not logits.is_floating_point() or not torch.isfinite(logits).all():
        raise AssertionError(f"head '{name}' produces non-finite or non-float logits")
    accuracy = float((logits.argmax(1) == test.y).float().mean())
    if accuracy < min_accuracy:
        raise AssertionError(f"head '{name}' reaches only {accuracy:.0%} accuracy on well-separated generated features (expected at least {min_accuracy:.0%})")
    for point in list(trained.history) + reports:
        if not isinstance(point, Mapping) or not all(isinstance(v, (int, float)) for v in point.values()):
            raise AssertionError(f"head '{name}': history points must be mappings of numbers, got {point!r}")

    again, _ = _fit(spec, train, opts, num_classes, seed, monitor=test)
    if not _close(logits, _logits(again.module, test.x)):
        raise AssertionError(f"head '{name}' gives a different head for the same data and seed (max logit difference {_max_diff(logits, _logits(again.module, test.x)):.3g})")
    unmonitored, _ = _fit(spec, train, opts, num_classes, seed, monitor=None)
    if not _close(logits, _logits(unmonitored.module, test.x)):
        raise AssertionError(f"head '{name}' trains differently when FitContext.monitor is set; it must use the test features for reports only")

    reloaded = _logits(_saved_and_rebuilt(spec, trained, opts), test.x)
    if not _close(logits, reloaded):
        raise AssertionError(f"head '{name}': load() of its saved state_dict gives different logits (max difference {_max_diff(logits, reloaded):.3g})")
    check_exports(f"head '{name}'", trained.module, test.x[:2], formats=exports)
    return HeadReport(name=name, test_accuracy=accuracy, history=list(trained.history))


# --- end to end -----------------------------------------------------------------------------------

_COLOURS = ((200, 40, 40), (40, 60, 200), (40, 170, 60), (220, 200, 40), (150, 50, 170))


def make_image_folder(root: Path, classes: Sequence[str] = ("red", "blue"), per_class: int = 4, size: tuple[int, int] = (40, 32), seed: int = 0) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png``: ``per_class`` small noisy images of one colour per class.

    The layout the built-in ``imagefolder`` reads; a plugin's own data set can list these files.
    Each image is distinct (the feature cache is content-addressed) and deterministic for ``seed``.
    """
    rng = random.Random(seed)
    for split in ("train", "val"):
        for index, name in enumerate(classes):
            colour = _COLOURS[index % len(_COLOURS)]
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = Image.new("RGB", size, colour)
                pixels = image.load()
                assert pixels is not None
                for x in range(0, size[0], 2):
                    for y in range(0, size[1], 2):
                        pixels[x, y] = tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in colour)
                image.save(folder / f"{name}_{i}.png")
    return root


def run_tiny_recipe(
    folder: Path,
    *,
    backbone: str,
    head: str = "linear",
    dataset: str | None = None,
    backbone_options: Mapping[str, Any] | None = None,
    dataset_options: Mapping[str, Any] | None = None,
    head_options: Mapping[str, Any] | None = None,
    weights: str | None = "none",
    plugins: Plugins | None = None,
    seed: int = 0,
) -> RunResult:
    """Run a tiny generated recipe through your entries with tlkit's own engine; return its ``RunResult``.

    The recipe is validated like a YAML one (names, options, did-you-mean), then runs for real:
    images decoded and preprocessed, features extracted (torch runtime, no feature cache, no workers),
    the head fitted and evaluated, the run directory written to ``folder/run``. Without ``dataset``
    the built-in ``imagefolder`` reads :func:`make_image_folder` images generated in ``folder/images``.
    The result has ``out_dir``, ``metrics`` (``metrics.test.accuracy``...) and ``predictions``; pass
    ``folder/run`` to ``tlkit.load`` to predict or export with it.
    """
    from tlkit.recipe.loader import resolve
    from tlkit.run.engine import run

    plugins = plugins or get_plugins()
    if dataset is None:
        dataset_section: dict[str, Any] = {"name": "imagefolder", "root": str(make_image_folder(Path(folder) / "images", seed=seed))}
    else:
        dataset_section = {"name": dataset, **dict(dataset_options or {})}
    data = {
        "name": "kit",
        "seed": seed,
        "dataset": dataset_section,
        "backbone": {"name": backbone, "weights": weights, **dict(backbone_options or {})},
        "extract": {"workers": 0, "batch_size": 8, "cache": False, "runtime": "torch"},
        "head": {"name": head, **dict(head_options or {})},
    }
    return run(resolve(data, plugins), Path(folder) / "run")
