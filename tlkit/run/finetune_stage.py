"""The fine-tune stage: a prepared recipe in, the same prepared recipe with a trained backbone (and its classifier as the head) out.

It sits where ``fit`` sits in extract mode; everything around it is the extract-mode code. The
engine then extracts features with the trained backbone through :func:`tlkit.run.stages.extract`,
evaluates them with the classifier through :func:`tlkit.run.stages.evaluate` and writes the run
directory with :func:`tlkit.run.write.write`, so the evaluation files, ``tlkit predict`` and
``tlkit export`` are those of every other run. The classifier is an ``nn.Linear`` handed to the
recipe's head through ``HeadSpec.from_classifier`` (the ``linear`` head's keeps it as it is), so
the head's plugin alone says how it is saved; the backbone's trained weights go into the run (``backbone.safetensors``) because
its plugin cannot rebuild them, and ``weights_id`` becomes their :func:`~tlkit.util.hashing.weights_digest`, so the feature cache never
mixes them up with the pretrained weights' features.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from tlkit.contract.observer import Observer
from tlkit.contract.specs import TrainedHead
from tlkit.errors import RecipeError
from tlkit.extract.features import prepare_model
from tlkit.finetune.settings import FinetuneSettings
from tlkit.finetune.trainer import FinetuneJob, FinetuneResult, Trainer
from tlkit.run.stages import Prepared, with_runtime
from tlkit.util.hashing import weights_digest

CHECKPOINTS = "checkpoints"


def feature_dim(prepared: Prepared) -> int:
    """The backbone's feature size: the spec's, or one forward pass of a blank image."""
    declared = prepared.recipe.backbone.spec.feature_dim
    if declared:
        return int(declared)
    size = prepared.pipeline.preprocessing.crop_size
    model = prepared.backbone.model.eval()
    with torch.inference_mode():
        return int(model(torch.zeros(2, 3, size, size, device=prepared.device)).flatten(1).shape[1])


def finetune(
    prepared: Prepared, settings: FinetuneSettings, run_path: Path, observer: Observer | None = None, *, resume: bool = False
) -> tuple[Prepared, TrainedHead, FinetuneResult]:
    """Train ``prepared``'s backbone and a new linear classifier; checkpoints go to ``run_path/checkpoints``."""
    observer = observer or Observer()
    recipe = prepared.recipe
    _refuse_members(prepared)
    observer.stage("fine-tuning the backbone")
    job = FinetuneJob(
        backbone=prepared.backbone.model,
        feature_dim=feature_dim(prepared),
        classes=prepared.classes,
        train=list(prepared.dataset.splits["train"]),
        test=list(prepared.dataset.splits["test"]),
        pipeline=prepared.pipeline,
        settings=settings,
        seed=recipe.seed,
        checkpoints=run_path / CHECKPOINTS,
        recipe=recipe.to_dict(),
        eval_batch_size=recipe.extract.batch_size,
        on_bad_image=prepared.pipeline.decoding.on_bad_image,
    )
    result = Trainer(job, observer).run(resume=resume)
    for note in (f"skipped training image {path}: {reason}" for path, reason in result.bad):
        observer.note(note)
    observer.note(f"kept the weights of epoch {result.best_epoch}" + (" (best held-out accuracy)" if settings.val_fraction > 0 else " (the last)"))
    backbone = prepare_model(result.net.backbone, prepared.device)
    built = dataclasses.replace(prepared.backbone, model=backbone, weights_id=weights_digest(backbone), saved_with_run=True)
    return with_runtime(dataclasses.replace(prepared, backbone=built), observer), _as_head(prepared, result, settings), result


def _refuse_members(prepared: Prepared) -> None:
    """Fine-tuning reopens its training images every epoch, in a shuffled order, as files; images that live
    inside tar shards or Arrow/Parquet tables (webdataset, hf_datasets, csv members) are read front to back
    by extraction only. Said before any training, in one line, instead of an epoch that decodes nothing."""
    inside = next((s for split in prepared.dataset.splits.values() for s in split if s.member is not None), None)
    if inside is not None:
        name = prepared.recipe.dataset.name
        raise RecipeError(
            f"mode: finetune reads image files, and dataset '{name}' gives images inside shards or tables ({inside.path}); "
            "write them out as a folder with one sub-folder per class and fine-tune on that, or use mode: extract (the default), which reads them where they are"
        )


def _as_head(prepared: Prepared, result: FinetuneResult, settings: FinetuneSettings) -> TrainedHead:
    """The trained classifier handed to the recipe's head (``HeadSpec.from_classifier``), which says how it is saved and rebuilt."""
    spec = prepared.recipe.head.spec
    if spec.from_classifier is None:  # the recipe reader refuses such a head before any work
        raise RecipeError(f"head '{spec.name}' cannot take over the fine-tuned classifier (its plugin gives no from_classifier)")
    adopted = spec.from_classifier(result.net.classifier.cpu().eval())
    return dataclasses.replace(
        adopted,
        history=result.history,
        choices={**adopted.choices, "epoch": result.best_epoch},
        notes=(*adopted.notes, f"fine-tuned with the backbone ({settings.strategy}); kept the weights of epoch {result.best_epoch} of {settings.epochs}"),
    )
