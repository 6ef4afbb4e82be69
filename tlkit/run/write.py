"""The write stage: what a finished run leaves in its directory, and in which format.

``recipe.yaml`` (the resolved recipe), ``metrics.json`` (from the typed :class:`~tlkit.outputs.metrics.RunMetrics`),
``classes.json``, ``head.safetensors`` (with the head's constructor settings and choices in its metadata), ``model.json`` (:class:`~tlkit.saved.manifest.RunManifest`: everything needed to rebuild backbone + head
and to decode images exactly as the run did), ``backbone.safetensors`` when the backbone's weights
cannot be rebuilt by its plugin, ``predictions.csv``, ``errors.csv``, ``bad_images.csv``, ``split.csv`` (which file went
where), the plots, ``errors.png`` and ``report.html`` (:mod:`tlkit.outputs.report`). Files go into the run directory's staging folder; :meth:`RunDirectory.commit` moves them into
place, so a reader never sees half a run.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit import __version__
from tlkit.outputs import report
from tlkit.outputs.predictions import PREDICTION_COLUMNS, PredictionRow
from tlkit.saved import manifest
from tlkit.saved.head_files import head_metadata, head_tensors
from tlkit.saved.manifest import BackboneRecord, FeatureRecord, HeadRecord, RunManifest, plain_json
from tlkit.saved.run_directory import RunDirectory, os_error
from tlkit.saved.splits import write_split

if TYPE_CHECKING:
    from tlkit.contract.specs import TrainedHead
    from tlkit.run.stages import BadFile, Evaluation, Prepared, SplitFeatures


def write(
    run_dir: RunDirectory, prepared: Prepared, features: SplitFeatures, trained: TrainedHead, evaluation: Evaluation, *, audit: Mapping[str, bytes] | None = None
) -> None:
    """Write every file of a finished run into ``run_dir``'s staging folder (``audit``: the audit's files, by name)."""
    recipe = prepared.recipe
    run_dir.write_yaml("recipe.yaml", recipe.to_dict())
    run_dir.write_json("metrics.json", evaluation.metrics.to_dict())
    run_dir.write_json("classes.json", prepared.classes)
    run_dir.write_tensors("head.safetensors", head_tensors(trained.module), metadata=head_metadata(recipe.head.name, trained))
    if backbone_saved_with_run(prepared):
        run_dir.write_tensors("backbone.safetensors", prepared.backbone.model.state_dict(), metadata={"backbone": recipe.backbone.name})
    run_dir.write_json(manifest.FILE, run_manifest(prepared, features.feature_dim, trained).to_dict())
    write_predictions(run_dir, evaluation.test_rows, evaluation.errors)
    write_bad_images(run_dir.file("bad_images.csv"), features.bad)
    write_split(run_dir.file("split.csv"), prepared.classes, prepared.dataset.splits)
    if prepared.excluded is not None:  # dataset.exclude: which files this run left out, and from which list
        excluded = prepared.excluded
        rows = [[split, path, prepared.classes[label], str(excluded.file)] for split, path, label in excluded.removed]
        _write_csv(run_dir.file("excluded.csv"), ["split", "path", "class", "exclusions_file"], rows)
    for name, data in (audit or {}).items():  # before the report is drawn: report.html#audit reads audit.json
        with run_dir.writing(name) as path:
            path.write_bytes(data)
    metrics = evaluation.metrics.to_dict()
    # the plots and the report, each through run_dir.writing: a full disk there is one line naming the file
    samples = {split: [(None if s.member is not None else Path(s.path), int(s.label)) for s in features.samples[split]] for split in features.samples}
    report.write_visuals(run_dir.path, recipe=recipe.to_dict(), metrics=metrics, test_rows=evaluation.test_rows, notes=metrics["head_notes"], opener=run_dir.writing, samples=samples)


def backbone_saved_with_run(prepared: Prepared) -> bool:
    """True when the plugin cannot rebuild these exact weights (random today; fine-tuned ones later)."""
    return bool(prepared.backbone.saved_with_run)


def run_manifest(prepared: Prepared, feature_dim: int, trained: TrainedHead) -> RunManifest:
    """``model.json``: the backbone and its weights, the image pipeline, the features, the head, the classes."""
    from tlkit.run.stages import cache_extra

    recipe = prepared.recipe
    resolved = recipe.to_dict()
    weights_path = prepared.backbone.weights_path
    return RunManifest(
        backbone=BackboneRecord(
            name=recipe.backbone.name,
            options={k: v for k, v in resolved["backbone"].items() if k not in ("name", "weights")},
            weights=recipe.weights.to_value(),
            weights_file=str(Path(weights_path).resolve()) if weights_path else None,
            weights_sha256=prepared.backbone.weights_id,
            in_run=backbone_saved_with_run(prepared),
        ),
        pipeline=prepared.pipeline,
        features=FeatureRecord(dim=feature_dim, batch_size=recipe.extract.batch_size, cache_extra={k: str(v) for k, v in cache_extra(prepared).items()}),
        head=HeadRecord(
            name=recipe.head.name,
            options={k: v for k, v in resolved["head"].items() if k != "name"},
            choices=plain_json(trained.choices),
        ),
        classes=tuple(prepared.classes),
        tlkit_version=__version__,
    )


def write_predictions(run_dir: RunDirectory, rows: Sequence[PredictionRow], errors: Sequence[PredictionRow]) -> None:
    """Every test prediction, and the mistakes (most confident first)."""
    for name, selected in (("predictions.csv", rows), ("errors.csv", errors)):
        _write_csv(run_dir.file(name), list(PREDICTION_COLUMNS), [row.csv_cells() for row in selected])


def write_bad_images(path: Path, bad: Sequence[BadFile]) -> None:
    """``split,path,reason`` for every file that was skipped (a header alone when none was)."""
    _write_csv(path, ["split", "path", "reason"], [[item.split, str(item.path), item.reason] for item in bad])


def _write_csv(path: Path, header: list[str], rows: Sequence[Sequence[Any]]) -> None:
    try:
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
    except OSError as exc:  # the one wording of the run directory's writers (a full disk: "free some disk space")
        raise os_error(str(path), exc) from None
