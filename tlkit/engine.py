"""``run(recipe)``: the one straight path from a recipe to a trained head and its artifacts.

data set -> preprocessing from the backbone -> features -> head -> metrics -> run directory.
Everything that can fail because of the user's input fails before the long work starts: the recipe
is validated, the output folder checked and the backbone's weights resolved before any image is
decoded.

A run ends in one of three ways: complete (the run directory renamed into place, ``run.json`` last),
a :class:`~tlkit.errors.TlkitError` (nothing left behind but a one-line reason), or Ctrl-C, which
stops the DataLoader workers, removes the unfinished staging folder and raises
:class:`~tlkit.errors.RunInterrupted` saying at which stage it stopped and what was kept.
"""

from __future__ import annotations

import csv
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlkit import __version__, plots
from tlkit.artifacts import RunDirectory, default_out_dir
from tlkit.cache import FeatureStore, open_store
from tlkit.errors import DataError, OutputError, RunInterrupted
from tlkit.evaluate import PREDICTION_COLUMNS, classification_metrics, misclassified, prediction_rows
from tlkit.features import Extraction, extract_cached, prepare_model, resolve_device, slow_precision_note
from tlkit.observer import Observer
from tlkit.recipe import Recipe
from tlkit.specs import BuiltBackbone, Features, FitContext, LoadedDataset, Sample


@dataclass(frozen=True)
class RunResult:
    out_dir: Path
    metrics: dict[str, Any]
    bad_images: tuple[tuple[str, Path, str], ...] = ()  # (split, path, reason) of each skipped file


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _features_for(
    split: str, samples: list[Sample], model: torch.nn.Module, recipe: Recipe, preprocessing: Any, device: torch.device,
    store: FeatureStore | None, observer: Observer,
) -> tuple[Features, list[Sample], Extraction]:
    settings = recipe.extract

    def refuse(path: Path, reason: str) -> None:
        if recipe.images.on_bad_image == "error":
            raise DataError(f"{path}: {reason} (dataset.on_bad_image is 'error'; set it to 'skip' to leave such files out)")

    extract_fn: Any = extract_cached
    items: list[Any] = [s.path for s in samples]
    if samples and samples[0].member is not None:  # images inside tar shards (the webdataset loader): streamed
        from tlkit.shard_features import extract_members_cached as extract_fn

        items = samples
    result = extract_fn(
        model,
        items,
        preprocessing,
        store,
        batch_size=settings.batch_size,
        workers=settings.workers,
        precision=settings.precision,
        device=device,
        task=lambda total: observer.task(f"extracting {split}", total=total, unit="img"),
        background=recipe.images.rgb(),
        on_bad=refuse,
    )
    kept = [samples[i] for i in result.kept]
    labels = torch.tensor([s.label for s in kept], dtype=torch.long)
    return Features(result.features, labels), kept, result


def run(recipe: Recipe, out_dir: Path | None = None, observer: Observer | None = None) -> RunResult:
    """Extract features, train the head, evaluate, and write the run directory; returns where and what."""
    observer = observer or Observer()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    run_dir = RunDirectory(out_dir or default_out_dir(recipe.name), unique=out_dir is None)
    stage = "building the backbone"
    store: FeatureStore | None = None
    try:
        seed_everything(recipe.seed)
        t0 = time.perf_counter()
        backbone = recipe.backbone.spec.build(recipe.weights, recipe.backbone.options)
        preprocessing = recipe.backbone.spec.resolve_preprocessing()
        timings["build_backbone"] = time.perf_counter() - t0
        observer.note(f"backbone: {recipe.backbone.name} (weights {backbone.weights_path or backbone.weights_id})")

        stage = "loading the data set"
        t0 = time.perf_counter()
        dataset: LoadedDataset = recipe.dataset.spec.load(recipe.dataset.options)
        timings["load_dataset"] = time.perf_counter() - t0
        classes = list(dataset.classes)
        crop = preprocessing.crop_size
        for split in ("train", "test"):
            observer.note(f"{split}: {len(dataset.splits[split])} x 3 x {crop} x {crop}")
        observer.note(f"classes: {', '.join(classes)}")
        for line in dataset.notes:
            observer.note(line)

        device = resolve_device(recipe.extract.device)
        model = prepare_model(backbone.model, device)
        note = slow_precision_note(device, recipe.extract.precision)
        if note:
            observer.note(f"warning: {note}")
        features: dict[str, Features] = {}
        kept: dict[str, list[Sample]] = {}
        bad: list[tuple[str, Path, str]] = []
        timings["extract"] = 0.0
        counts = {"cached": 0, "extracted": 0}
        if recipe.extract.cache:
            store = open_store(
                recipe.backbone.name,
                backbone.weights_id,
                preprocessing,
                recipe.extract.precision,
                seed=recipe.seed,
                options=recipe.backbone.options,
                background=recipe.images.rgb(),
            )
        for split in ("train", "test"):
            stage = f"extracting the {split} features"
            feats, kept[split], result = _features_for(
                split, list(dataset.splits[split]), model, recipe, preprocessing, device, store, observer
            )
            split_bad = result.bad
            features[split] = feats
            timings["extract"] += result.seconds
            counts["cached"] += result.cached
            counts["extracted"] += result.extracted
            bad.extend((split, path, reason) for path, reason in split_bad)
            if split_bad and recipe.images.on_bad_image == "error":  # features that came from elsewhere (a cache)
                raise DataError(f"{split_bad[0][0]}: {split_bad[0][1]} (dataset.on_bad_image is 'error'; set it to 'skip' to leave such files out)")
            if len(feats) == 0:
                raise DataError(f"no image of the {split} split could be decoded ({split_bad[0][0]}: {split_bad[0][1]})")
        observer.note(f"features: {counts['cached']} cached, {counts['extracted']} extracted" + ("" if store else " (cache off)"))
        for split, path, reason in bad:
            observer.note(f"skipped {split} image {path}: {reason}")

        stage = f"training the {recipe.head.name} head"
        t0 = time.perf_counter()
        head_options = recipe.head.options
        epochs = getattr(head_options, "epochs", None)
        with observer.task(f"training {recipe.head.name}", total=epochs, unit="epoch") as advance:
            done = 0

            def report(epoch: int, values: Any) -> None:
                nonlocal done
                advance(epoch - done)
                done = epoch
                observer.point(f"epoch {epoch}", values)

            ctx = FitContext(num_classes=len(classes), seed=recipe.seed, monitor=features["test"], report=report)
            seed_everything(recipe.seed)
            trained = recipe.head.spec.fit(features["train"], head_options, ctx)
        timings["train_head"] = time.perf_counter() - t0

        head = trained.module.eval()
        with torch.no_grad():
            train_pred = head(features["train"].x).argmax(1)
            test_probabilities = head(features["test"].x).softmax(1)
        test_pred = test_probabilities.argmax(1)
        test_metrics = classification_metrics(features["test"].y, test_pred, classes)
        train_metrics = classification_metrics(features["train"].y, train_pred, classes)
        timings["total"] = time.perf_counter() - started

        metrics: dict[str, Any] = {
            "test_accuracy": test_metrics["accuracy"],
            "train_accuracy": train_metrics["accuracy"],
            "test_balanced_accuracy": test_metrics["balanced_accuracy"],
            "counts": {split: len(kept[split]) for split in ("train", "test")},
            "skipped_images": len(bad),
            "features": {**counts, "cache": str(store.path) if store else None},
            "classes": classes,
            "feature_dim": int(features["train"].x.shape[1]),
            "test": test_metrics,
            "history": [dict(point) for point in trained.history],
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
        }
        stage = "writing the run directory"
        test_rows = prediction_rows([s.path for s in kept["test"]], features["test"].y, test_probabilities, classes)
        metrics["test_errors"] = len(misclassified(test_rows))
        _write_run(run_dir, recipe, backbone, preprocessing, classes, head, metrics)
        _write_evaluation(run_dir, classes, test_rows, metrics)
        write_bad_images(run_dir.file("bad_images.csv"), bad)
        final = run_dir.commit({"tlkit": __version__, "recipe": recipe.name, "complete": True})
        return RunResult(out_dir=final, metrics=metrics, bad_images=tuple(bad))
    except KeyboardInterrupt:
        run_dir.discard()
        # The staging folder only ever holds a finished run's files, so there is nothing partial worth keeping.
        # Extraction writes its features to the cache as it goes (and on the way out), so a rerun resumes there.
        kept_note = "; the feature cache keeps every feature extracted so far, and a rerun starts from them" if store else ""
        raise RunInterrupted(
            f"interrupted while {stage}; nothing was written to {run_dir.final} (a run directory appears only when complete)"
            + kept_note
        ) from None
    except BaseException:
        run_dir.discard()
        raise


def write_bad_images(path: Path, bad: list[tuple[str, Path, str]]) -> None:
    """``split,path,reason`` for every file that was skipped (a header alone when none was)."""
    try:
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["split", "path", "reason"])
            writer.writerows((split, str(file), reason) for split, file, reason in bad)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}); free some space or choose another --out") from None


def _write_evaluation(run_dir: RunDirectory, classes: list[str], test_rows: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """The files a person reads: every test prediction, the mistakes, and the plots."""
    for name, rows in (("predictions.csv", test_rows), ("errors.csv", misclassified(test_rows))):
        with run_dir.file(name).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=PREDICTION_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    plots.confusion_matrix_png(metrics["test"]["confusion_matrix"], classes, run_dir.file("confusion_matrix.png"))
    plots.training_curve_png(metrics["history"], run_dir.file("training_curve.png"))


def _write_run(run_dir: RunDirectory, recipe: Recipe, backbone: BuiltBackbone, preprocessing: Any, classes: list[str], head: torch.nn.Module, metrics: dict[str, Any]) -> None:
    run_dir.write_yaml("recipe.yaml", recipe.to_dict())
    run_dir.write_json("metrics.json", metrics)
    run_dir.write_json("classes.json", classes)
    run_dir.write_tensors("head.safetensors", head.state_dict(), metadata={"head": recipe.head.name})
    if backbone.weights_id == "random":  # random weights cannot be found again: keep them with the run
        run_dir.write_tensors("backbone.safetensors", backbone.model.state_dict(), metadata={"backbone": recipe.backbone.name})
    run_dir.write_json(
        "model.json",
        {
            "backbone": recipe.backbone.name,
            "backbone_weights": recipe.weights,
            "backbone_weights_file": str(backbone.weights_path.resolve()) if backbone.weights_path else None,
            "backbone_options": recipe.to_dict()["backbone"],
            "weights_sha256": backbone.weights_id,
            "extract": {"batch_size": recipe.extract.batch_size, "precision": recipe.extract.precision},
            "preprocessing": preprocessing.to_dict(),
            "feature_dim": metrics["feature_dim"],
            "head": recipe.head.name,
            "head_options": recipe.to_dict()["head"],
            "classes": classes,
            "tlkit_version": __version__,
        },
    )
