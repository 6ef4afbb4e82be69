"""The fine-tuning loop: epochs of augmented batches, a held-out choice of the best epoch, a checkpoint after each.

Every epoch: set what trains (:mod:`tlkit.finetune.parts`), one pass over the shuffled, augmented
training images, then the held-out part (``val_fraction``) and the test split through the very
extraction code a frozen run uses (:func:`tlkit.extract.features.extract`, eval transform, ``extract.precision``),
a progress point, and a checkpoint. The held-out accuracy (ties: lower loss) chooses the epoch whose
weights are kept; the test accuracy is only reported, never used to choose. Without a held-out part
the last epoch is kept.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tlkit.contract.observer import Observer
from tlkit.contract.specs import Sample
from tlkit.errors import DataError, RunError
from tlkit.extract.features import extract
from tlkit.extract.pipeline import ImagePipeline
from tlkit.finetune import checkpoint as ckpt
from tlkit.finetune.augment import train_transform
from tlkit.finetune.data import TrainImages, epoch_loader, steps_per_epoch
from tlkit.finetune.devices import Precision, intra_op_threads, training_device, training_precision
from tlkit.finetune.interrupts import TrainingStopped, sigterm_as_interrupt
from tlkit.finetune.optim import build_optimizer, build_scheduler
from tlkit.finetune.parts import FinetuneNet, apply_phase, phase_for
from tlkit.finetune.settings import FinetuneSettings
from tlkit.fitting import stratified_holdout


@dataclass(frozen=True)
class FinetuneJob:
    """Everything one fine-tuning run needs, as plain inputs (the engine builds it from a prepared recipe)."""

    backbone: torch.nn.Module
    feature_dim: int
    classes: Sequence[str]
    train: Sequence[Sample]
    test: Sequence[Sample]
    pipeline: ImagePipeline
    settings: FinetuneSettings
    seed: int
    checkpoints: Path
    recipe: Mapping[str, Any] = field(default_factory=dict)  # the resolved recipe: a checkpoint belongs to it
    eval_batch_size: int = 32
    on_bad_image: str = "skip"


@dataclass(frozen=True)
class FinetuneResult:
    """The trained network (chosen epoch's weights, eval mode), its history, which epoch was kept, skipped files."""

    net: FinetuneNet
    history: tuple[dict[str, float], ...]
    best_epoch: int
    resumed_from: int = 0
    bad: tuple[tuple[Path, str], ...] = ()


def new_classifier(feature_dim: int, num_classes: int, seed: int) -> torch.nn.Linear:
    """``nn.Linear``'s default initialisation drawn from a generator seeded by the recipe."""
    generator = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(feature_dim, num_classes)
    with torch.no_grad():
        bound = 1.0 / feature_dim**0.5
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


@contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic kernels (and no cuDNN autotuning) while training, then the previous settings."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


class Trainer:
    """One fine-tuning run; :meth:`run` trains (resuming from ``job.checkpoints`` when asked) and returns the result."""

    def __init__(self, job: FinetuneJob, observer: Observer | None = None) -> None:
        self.job = job
        self.observer = observer or Observer()
        settings = job.settings
        self.device = training_device(settings.device)
        self.precision: Precision = training_precision(settings.precision, self.device)
        classifier = new_classifier(job.feature_dim, len(job.classes), job.seed)
        self.net = FinetuneNet(job.backbone, classifier).to(self.device).to(memory_format=torch.channels_last)
        holdout = stratified_holdout(torch.tensor([s.label for s in job.train], dtype=torch.long), settings.val_fraction, job.seed)
        self.fit_samples = [job.train[int(i)] for i in holdout.fit]
        self.val_samples = [job.train[int(i)] for i in holdout.val] if settings.val_fraction > 0 else []
        if not self.fit_samples:
            raise DataError("no training image is left after holding out finetune.val_fraction; lower it")
        self.images = TrainImages(self.fit_samples, job.pipeline, train_transform(job.pipeline.preprocessing, settings.augment))
        self.steps = steps_per_epoch(len(self.images), settings.batch_size)
        self.optimizer = build_optimizer(self.net, settings)
        self.scheduler = build_scheduler(self.optimizer, settings, self.steps)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision.scale_gradients else None
        self.bad: dict[Path, str] = {}

    def run(self, resume: bool = False) -> FinetuneResult:
        """Train the remaining epochs; Ctrl-C or SIGTERM raise :class:`TrainingStopped` naming the kept checkpoint."""
        self.listing = ckpt.data_listing({"train": self.job.train, "test": self.job.test})
        state = self._resume() if resume else ckpt.TrainingState()
        resumed_from = state.epoch
        if resumed_from:
            self.observer.note(f"resuming after epoch {resumed_from} from {self.job.checkpoints}")
        total = self.job.settings.epochs
        settings = self.job.settings
        with sigterm_as_interrupt() as seen, deterministic(settings.deterministic), intra_op_threads(settings.threads):
            with self.observer.task("fine-tuning", total=total, unit="epoch") as advance:
                advance(state.epoch)
                try:
                    while state.epoch < total:
                        self._epoch(state)
                        advance(1)
                except KeyboardInterrupt:
                    raise TrainingStopped(state.epoch, total, self.job.checkpoints, seen["signal"]) from None
        if state.best_state is not None:
            self.net.load_state_dict(state.best_state)
        self.net.eval()
        return FinetuneResult(self.net, tuple(state.history), state.best_epoch or state.epoch, resumed_from, tuple(self.bad.items()))

    def _resume(self) -> ckpt.TrainingState:
        found = ckpt.read_checkpoint(self.job.checkpoints)
        if found is None:
            self.observer.note(f"no checkpoint in {self.job.checkpoints}: starting from epoch 1")
            return ckpt.TrainingState()
        info, tensors = found
        _check_same_recipe(info.recipe, self.job.recipe, self.job.checkpoints)
        _check_same_data(info.data, self.listing, self.job.checkpoints)
        return ckpt.restore(info, tensors, self.net, self.optimizer, self.scheduler, self.scaler)

    def _epoch(self, state: ckpt.TrainingState) -> None:
        epoch = state.epoch + 1
        settings = self.job.settings
        apply_phase(self.net, phase_for(self.net.backbone, settings, epoch), train_bn=settings.train_bn)
        started = time.perf_counter()
        loss, accuracy, seen = self._train_pass(epoch)
        if not seen:  # every image skipped: an epoch of nothing would train nothing and report NaN
            first = next(iter(self.bad.items()), None)
            example = f" (first: {first[0]}: {first[1]})" if first else ""
            raise DataError(f"epoch {epoch}: none of the {len(self.images)} training images could be decoded{example}; check the data set's files")
        seconds = time.perf_counter() - started
        point: dict[str, float] = {
            "epoch": float(epoch),
            "loss": loss,
            "train_accuracy": accuracy,
            "lr": float(self.optimizer.param_groups[1]["lr"]),
            "images_per_s": seen / seconds if seconds > 0 else float("nan"),
        }
        self.net.eval()
        if self.val_samples:
            point["val_accuracy"], point["val_loss"] = self._score(self.val_samples)
            score = (point["val_accuracy"], -point["val_loss"])
            if state.best_score is None or score > state.best_score:
                state.best_score, state.best_epoch = score, epoch
                state.best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        if settings.eval_test:
            point["test_accuracy"], point["test_loss"] = self._score(self.job.test)
        point["epoch_s"] = time.perf_counter() - started
        point["eta_s"] = point["epoch_s"] * (settings.epochs - epoch)
        state.history.append(point)
        state.epoch = epoch
        extra: dict[str, Any] = {"data": self.listing}
        if self.scaler is not None:
            extra["scaler"] = self.scaler.state_dict()
        ckpt.save_checkpoint(self.job.checkpoints, self.net, self.optimizer, self.scheduler, state, self.job.recipe, extra)
        self.observer.point(f"epoch {epoch}", point)

    def _train_pass(self, epoch: int) -> tuple[float, float, int]:
        """One epoch of optimiser steps; returns (mean loss, accuracy, images seen)."""
        settings = self.job.settings
        loader = epoch_loader(
            self.images, batch_size=settings.batch_size, workers=settings.workers, seed=self.job.seed, epoch=epoch, pin=self.device.type == "cuda"
        )
        total_loss, correct, seen = 0.0, 0, 0
        batches = iter(loader)
        try:
            for images, indices, errors in batches:
                keep = self._keep(indices, errors)
                if len(keep) < 2 and settings.train_bn:
                    continue  # batch norm cannot train on a single image
                if not keep:
                    continue
                x = images[keep].to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                y = self.images.labels(indices[keep]).to(self.device)
                logits, loss = self._step(x, y)
                total_loss += float(loss) * len(keep)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(keep)
        finally:
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        return (total_loss / seen if seen else float("nan")), (correct / seen if seen else float("nan")), seen

    def _keep(self, indices: torch.Tensor, errors: Sequence[str]) -> list[int]:
        keep = []
        for i, error in enumerate(errors):
            if not error:
                keep.append(i)
                continue
            path = self.images.samples[int(indices[i])].path
            if self.job.on_bad_image == "error":
                raise DataError(f"{path}: {error} (images.on_bad_image is 'error'; set it to 'skip' to leave such files out)")
            self.bad.setdefault(path, error)
        return keep

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.precision.autocast(self.device):
            logits = self.net(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.job.settings.grad_clip
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            if clip:
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip)
            self.optimizer.step()
        self.scheduler.step()
        return logits.detach(), loss.detach()

    def _score(self, samples: Sequence[Sample]) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) of ``samples`` through the same extraction code as a frozen run."""
        result = extract(
            self.net.backbone, [s.path for s in samples], self.job.pipeline, batch_size=self.job.eval_batch_size, workers=self.job.settings.workers, device=self.device
        )
        if not result.kept:
            return float("nan"), float("nan")
        labels = torch.tensor([samples[i].label for i in result.kept], dtype=torch.long)
        with torch.no_grad():
            logits = self.net.classifier(result.features.to(self.device)).float().cpu()
        return float((logits.argmax(1) == labels).float().mean()), float(torch.nn.functional.cross_entropy(logits, labels))


def _check_same_recipe(saved: Mapping[str, Any], current: Mapping[str, Any], folder: Path) -> None:
    """A checkpoint continues only the recipe that made it; name the first setting that differs."""
    differing = _first_difference(saved, current)
    if differing is not None:
        raise RunError(
            f"the checkpoint in {folder} was made with a different recipe ('{differing}' differs); "
            "resume with the recipe and --set values of the interrupted run, or start a new run without --resume"
        )


def _check_same_data(saved: Sequence[str] | None, current: Sequence[str], folder: Path) -> None:
    """A checkpoint continues only on the data it was trained on; say how many images were added and removed."""
    changed = ckpt.changed_data(saved, current) if saved is not None else None
    if changed is not None:
        added, removed = changed
        raise RunError(
            f"the data set changed since the checkpoint in {folder} was made: {added} image{'s' if added != 1 else ''} added, "
            f"{removed} removed (an image replaced or relabelled counts in both); resume only on the same images, "
            "or start a new run without --resume"
        )


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return None if list(a) == list(b) else path
    return None if a == b else path

