"""The stages of a run, each a plain function from frozen records to a frozen record.

    prepare(recipe)                      -> Prepared       plugins resolved, backbone built, data set listed
    extract(prepared, shard=...)         -> SplitFeatures  features per split, from the cache or computed
    fit(prepared, features)              -> TrainedHead    the head trained on the train features
    evaluate(prepared, features, head)   -> Evaluation     typed metrics and one prediction row per test image
    write(run_dir, prepared, ..., evaluation)              the run directory's files (committed by the caller)

Data flows one way: no stage reaches back into an earlier one's inputs, and each can be called on
its own from Python (a notebook extracting features only, a rank of a distributed run extracting its
shard, ``tlkit compare`` training several heads on one extraction). :func:`tlkit.run.engine.run` is their
composition (in one process or over ranks) plus Ctrl-C handling; every path ends in the one tail
:func:`tlkit.run.finish.finish` (fit, evaluate, write, commit).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlkit.audit.exclusions import Excluded, apply_exclusions, data_root
from tlkit.contract.observer import Observer
from tlkit.contract.specs import BuiltBackbone, Features, FitContext, LoadedDataset, Sample, TrainedHead
from tlkit.errors import DataError
from tlkit.extract.cache import CacheIdentity, FeatureStore, cache_root, open_store
from tlkit.extract.decode import decoding_pipeline
from tlkit.extract.features import Extraction, NonFiniteFeatures, extract_cached, prepare_model, resolve_device
from tlkit.extract.pipeline import ImagePipeline
from tlkit.extract.runtimes import Runtime, RuntimeChoice
from tlkit.extract.runtimes.stage import RuntimeRequest, runtime_for
from tlkit.outputs.metrics import RunMetrics, classification_metrics
from tlkit.outputs.predictions import PredictionRow, misclassified, prediction_rows
from tlkit.recipe.loader import Recipe

SPLITS = ("train", "test")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch: random backbone weights and every head's fit depend on it."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Prepared:
    """A recipe turned into things: the built backbone (eval mode, on ``device``), the listed data set, the pipeline."""

    recipe: Recipe
    backbone: BuiltBackbone
    dataset: LoadedDataset
    pipeline: ImagePipeline
    device: torch.device
    runtime: Runtime | None = None  # what runs the forward pass (tlkit.extract.runtimes); None: the eager module
    root: Path | None = None  # the data root exclusions and audit paths are relative to
    excluded: Excluded | None = None  # what dataset.exclude left out (excluded.csv)

    @property
    def classes(self) -> list[str]:
        return list(self.dataset.classes)


@dataclass(frozen=True)
class Shard:
    """Which images one process of ``world`` extracts: every ``world``-th, starting at ``rank``.

    Disjoint and complete over the ranks, with no padding: each image belongs to exactly one rank.
    """

    rank: int = 0
    world: int = 1
    block: int = 1  # deal out runs of ``block`` images: with block = batch size each rank's batches are the one-process run's

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world - 1}")
        if self.block < 1:
            raise ValueError(f"block must be at least 1 (got {self.block})")

    def owns(self, index: int) -> bool:
        return (index // self.block) % self.world == self.rank

    def select(self, items: Sequence[Any]) -> list[Any]:
        if self.block == 1:
            return list(items[self.rank :: self.world])
        return [item for index, item in enumerate(items) if self.owns(index)]


@dataclass(frozen=True)
class BadFile:
    """A file that was left out because it could not be decoded."""

    split: str
    path: Path
    reason: str


@dataclass(frozen=True)
class SplitFeatures:
    """Per split, the features of the images that decoded and those images; what was skipped; where from."""

    features: Mapping[str, Features]
    samples: Mapping[str, tuple[Sample, ...]]
    bad: tuple[BadFile, ...] = ()
    cached: int = 0
    extracted: int = 0
    seconds: float = 0.0
    cache: Path | None = None
    runtime: RuntimeChoice | None = None

    @property
    def feature_dim(self) -> int:
        return int(self.features["train"].x.shape[1])


@dataclass(frozen=True)
class Evaluation:
    """The typed metrics of a run, and one prediction row per test image (``predictions.csv``)."""

    metrics: RunMetrics
    test_rows: list[PredictionRow] = field(default_factory=list)

    @property
    def errors(self) -> list[PredictionRow]:
        return misclassified(self.test_rows)


def prepare(recipe: Recipe, observer: Observer | None = None) -> Prepared:
    """Build the backbone (seeded: random weights follow ``recipe.seed``) and list the data set's files."""
    observer = observer or Observer()
    device = resolve_device(recipe.extract.device)  # first: no GPU is one line before any slow work
    observer.stage("building the backbone")
    seed_everything(recipe.seed)
    backbone = recipe.backbone.spec.build(recipe.weights, recipe.backbone.options)
    pipeline = ImagePipeline(recipe.images, recipe.backbone.spec.resolve_preprocessing(), recipe.extract.precision)
    observer.note(f"backbone: {recipe.backbone.name} (weights {weights_label(backbone.weights_path, backbone.weights_id)})")
    observer.stage("loading the data set")
    dataset = recipe.dataset.spec.load(recipe.dataset.options)
    root = data_root(recipe.dataset.options, dataset)
    excluded = None
    if recipe.exclude is not None:
        dataset, excluded = apply_exclusions(dataset, recipe.exclude, root)
        for line in excluded.notes():
            observer.note(line)
    crop = pipeline.preprocessing.crop_size
    for split in SPLITS:
        observer.note(f"{split}: {len(dataset.splits[split])} x 3 x {crop} x {crop}")
    observer.note(f"classes: {', '.join(dataset.classes)}")
    if len(dataset.classes) == 1:
        observer.note(f"warning: the data set has one class ('{dataset.classes[0]}'): every image is predicted as it, so accuracy is 100% and means nothing")
    for line in dataset.notes:
        observer.note(line)
    built = dataclasses.replace(backbone, model=prepare_model(backbone.model, device))
    _, decoder = decoding_pipeline(recipe.extract.decoder, pipeline.preprocessing, pipeline.background)
    prepared = Prepared(
        recipe=recipe, backbone=built, dataset=dataset, pipeline=dataclasses.replace(pipeline, decoder=decoder), device=device, root=root, excluded=excluded
    )
    # fine-tuning changes the weights: its runtime is chosen for the trained backbone (tlkit.run.finetune_stage)
    return prepared if recipe.finetune is not None else with_runtime(prepared, observer)


def with_runtime(prepared: Prepared, observer: Observer | None = None) -> Prepared:
    """``prepared`` with the runtime (issue 10) chosen for its backbone as it is now; the pipeline records the precision that really runs."""
    observer = observer or Observer()
    observer.stage("choosing the runtime")
    recipe = prepared.recipe
    probe_samples = [s for s in prepared.dataset.splits["train"] if s.member is None]  # a shard member's path is only a name
    request = RuntimeRequest(
        requested=recipe.extract.runtime,
        precision=recipe.extract.precision,
        insist_precision=recipe.extract.insist_precision,
        backbone=recipe.backbone.name,
        options=dataclasses.asdict(recipe.backbone.options),
        pipeline=prepared.pipeline,
        device=prepared.device,
        train_paths=[s.path for s in probe_samples],
        train_labels=[s.label for s in probe_samples],
        seed=recipe.seed,
        total_images=sum(len(prepared.dataset.splits[split]) for split in SPLITS),
        cache_root=cache_root(),
    )
    runtime = runtime_for(prepared.backbone.model, request)
    if runtime.choice.note:
        observer.note(runtime.choice.note)
    return dataclasses.replace(prepared, pipeline=dataclasses.replace(prepared.pipeline, precision=runtime.choice.precision), runtime=runtime)


def feature_store(prepared: Prepared) -> FeatureStore | None:
    """The cache entry for this backbone, weights and pipeline (``None`` with ``extract.cache: false``)."""
    if not prepared.recipe.extract.cache:
        return None
    # vectors of another length than the spec declares are refused
    return open_store(cache_identity(prepared), feature_dim=prepared.recipe.backbone.spec.feature_dim)


def cache_identity(prepared: Prepared) -> CacheIdentity:
    """What names this run's features in the cache: backbone, weights, pipeline, decoder, runtime and its precision."""
    recipe = prepared.recipe
    return CacheIdentity(
        backbone=recipe.backbone.name,
        weights_id=prepared.backbone.weights_id,
        preprocessing=prepared.pipeline.preprocessing,
        precision=prepared.runtime.choice.precision if prepared.runtime else prepared.pipeline.precision,
        seed=recipe.seed,
        options=dataclasses.asdict(recipe.backbone.options),
        background=prepared.pipeline.background,
        decoder=prepared.pipeline.decoder,
        runtime=prepared.runtime.choice.runtime if prepared.runtime else None,
    )


def cache_extra(prepared: Prepared) -> dict[str, str]:
    """``model.json``'s ``cache_extra``: the part of :func:`cache_identity` the run's other records lack, so ``tlkit features`` finds the run's own entry."""
    return cache_identity(prepared).recorded()


def extract(prepared: Prepared, observer: Observer | None = None, *, shard: Shard | None = None, store: FeatureStore | None = None) -> SplitFeatures:
    """Features of every split (of this ``shard``'s images only, when given), filling the cache as it goes.

    ``store`` defaults to :func:`feature_store`; pass one to reuse it across calls.
    """
    observer = observer or Observer()
    store = store if store is not None else feature_store(prepared)
    parts: dict[str, tuple[Features, tuple[Sample, ...], Extraction]] = {}
    for split in SPLITS:
        samples = list(prepared.dataset.splits[split])
        parts[split] = _extract_split(prepared, split, shard.select(samples) if shard else samples, store, observer)
    bad = tuple(BadFile(split, path, reason) for split, (_, _, result) in parts.items() for path, reason in result.bad)
    features = SplitFeatures(
        features={split: part[0] for split, part in parts.items()},
        samples={split: part[1] for split, part in parts.items()},
        bad=bad,
        cached=sum(part[2].cached for part in parts.values()),
        extracted=sum(part[2].extracted for part in parts.values()),
        seconds=sum(part[2].seconds for part in parts.values()),
        cache=store.path if store else None,
        runtime=prepared.runtime.choice if prepared.runtime else None,
    )
    observer.note(f"features: {features.cached} cached, {features.extracted} extracted" + ("" if store else " (cache off)"))
    for line in store.notes() if store else ():
        observer.note(line)  # damaged cache files dropped (and re-extracted), features a read-only cache could not keep
    for item in bad:
        observer.note(f"skipped {item.split} image {item.path}: {item.reason}")
    return features


def _extract_split(
    prepared: Prepared, split: str, samples: list[Sample], store: FeatureStore | None, observer: Observer
) -> tuple[Features, tuple[Sample, ...], Extraction]:
    policy = prepared.pipeline.decoding.on_bad_image

    def refuse(path: Path, reason: str) -> None:
        if policy == "error":
            raise DataError(f"{path}: {reason} (images.on_bad_image is 'error'; set it to 'skip' to leave such files out)")

    settings = prepared.recipe.extract
    observer.stage(f"extracting the {split} features")
    extract_fn: Any = extract_cached
    items: list[Any] = [s.path for s in samples]
    if samples and samples[0].member is not None:  # images inside tar shards (the webdataset loader): streamed, not files
        from tlkit.extract.shard_members import extract_members_cached as extract_fn

        items = samples
    try:
        result = extract_fn(
            prepared.backbone.model,
            items,
            prepared.pipeline,
            store,
            batch_size=settings.batch_size,
            workers=settings.workers,
            device=prepared.device,
            task=lambda total: observer.task(f"extracting {split}", total=total, unit="img"),
            on_bad=refuse,
            forward=prepared.runtime.forward if prepared.runtime else None,
        )
    except NonFiniteFeatures as exc:
        raise NonFiniteFeatures(f"backbone '{prepared.recipe.backbone.name}' ({backbone_weights(prepared)}): {exc}") from None
    if not result.kept and samples:
        reason = f" ({result.bad[0][0]}: {result.bad[0][1]})" if result.bad else ""
        raise DataError(f"no image of the {split} split could be decoded{reason}")
    kept = tuple(samples[i] for i in result.kept)
    labels = torch.tensor([s.label for s in kept], dtype=torch.long)
    return Features(result.features, labels), kept, result


def weights_label(path: Path | str | None, weights_id: str) -> str:
    """The weights in a few words: the file's name and the start of its sha256 (the full path and digest are in ``model.json``).

    A full site-packages path filled the terminal line and said less than the digest does.
    """
    digest = f"sha256 {weights_id[:12]}" if len(weights_id) == 64 and all(c in "0123456789abcdef" for c in weights_id) else weights_id
    return f"{Path(path).name}, {digest}" if path is not None else digest


def backbone_weights(prepared: Prepared) -> str:
    """The backbone's weights as a person names them: the file, or what the recipe asked for."""
    path = prepared.backbone.weights_path or prepared.recipe.weights.path
    return f"weights file {path}" if path is not None else f"{prepared.recipe.weights.kind} weights"


def fit(prepared: Prepared, features: SplitFeatures, observer: Observer | None = None) -> TrainedHead:
    """Train the recipe's head on the train features (seeded); the test features only feed progress reports.

    The progress line opens at the first reported epoch, so a head that does not train by epochs
    (knn, centroid) shows none rather than "0/0 epoch"; what the head chose is noted afterwards.
    """
    observer = observer or Observer()
    recipe = prepared.recipe
    total, unit = _training_steps(recipe.head.options)
    observer.stage(f"training the {recipe.head.name} head")
    with ExitStack() as progress:
        until = " (until it converges)" if unit == "iteration" else ""
        open_task = lambda: progress.enter_context(observer.task(f"training {recipe.head.name}{until}", total=total, unit=unit))  # noqa: E731
        report = _epoch_reporter(open_task, observer, unit, opened=open_task() if unit == "epoch" and total is not None else None)
        ctx = FitContext(num_classes=len(prepared.classes), seed=recipe.seed, monitor=features.features["test"], report=report)
        seed_everything(recipe.seed)
        trained = recipe.head.spec.fit(features.features["train"], recipe.head.options, ctx)
    for line in trained.notes:
        observer.note(f"{recipe.head.name}: {line}")
    return dataclasses.replace(trained, module=trained.module.eval(), history=tuple(dict(p) for p in trained.history))


def _training_steps(options: object) -> tuple[int | None, str]:
    """What a head's reports count: epochs (``epochs`` option), or solver iterations (``max_iter``: L-BFGS stops when it converges)."""
    epochs = getattr(options, "epochs", None)
    if epochs is not None:
        return epochs, "epoch"
    max_iter = getattr(options, "max_iter", None)
    return (max_iter, "iteration") if max_iter is not None else (None, "epoch")


def _epoch_reporter(
    open_task: Callable[[], Callable[[int], None]], observer: Observer, unit: str = "epoch", opened: Callable[[int], None] | None = None
) -> Callable[[int, Mapping[str, float]], None]:
    """``ctx.report``: advances the training task (opened before the first epoch, so its rate covers real work) and passes the point on."""
    done = 0
    advance = opened

    def report(epoch: int, values: Mapping[str, float]) -> None:
        nonlocal done, advance
        if advance is None:
            advance = open_task()
        advance(epoch - done)
        done = epoch
        observer.point(f"{unit} {epoch}", values)

    return report


def evaluate(prepared: Prepared, features: SplitFeatures, trained: TrainedHead, timings: Mapping[str, float] | None = None) -> Evaluation:
    """Predictions of the trained head on both splits, as typed metrics and per-image rows."""
    classes = prepared.classes
    train, test = features.features["train"], features.features["test"]
    with torch.no_grad():
        train_pred = trained.module(train.x).argmax(1)
        test_probabilities = trained.module(test.x).softmax(1)
    rows = prediction_rows([s.path for s in features.samples["test"]], test.y, test_probabilities, classes)
    metrics = RunMetrics(
        test=classification_metrics(test.y, test_probabilities.argmax(1), classes),
        train=classification_metrics(train.y, train_pred, classes),
        classes=classes,
        counts={split: len(features.samples[split]) for split in SPLITS},
        feature_dim=features.feature_dim,
        skipped_images=len(features.bad),
        test_errors=len(misclassified(rows)),
        features={
            "cached": features.cached, "extracted": features.extracted, "cache": str(features.cache) if features.cache else None,
            "decoder": prepared.pipeline.decoder, "runtime": features.runtime.to_dict() if features.runtime else None,
        },
        history=[dict(point) for point in trained.history],
        timings_s=dict(timings or {}),
        head_choices=dict(trained.choices),
        head_notes=list(trained.notes),
    )
    return Evaluation(metrics=metrics, test_rows=rows)
