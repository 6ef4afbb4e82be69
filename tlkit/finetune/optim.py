"""Optimiser and learning-rate schedule from the ``finetune:`` settings.

Two parameter groups for the whole run, the backbone's first and the classifier's second, each with
its own learning rate; frozen parameters simply have no gradient and are skipped by the optimiser,
so the groups (and the optimiser's saved state) never change shape when a strategy unfreezes layers.
The schedule is counted in optimiser steps (warm-up can last part of an epoch) and expressed as one
multiplier of both groups' base rates, so it is a plain function of the step number: a resumed run
recomputes it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from tlkit.finetune.parts import FinetuneNet, parameter_groups
from tlkit.finetune.settings import FinetuneSettings


def build_optimizer(net: FinetuneNet, settings: FinetuneSettings) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over the backbone group (``backbone_lr``) and the classifier group (``lr``)."""
    backbone, classifier = parameter_groups(net)
    groups = [
        {"params": list(backbone), "lr": settings.effective_backbone_lr()},
        {"params": list(classifier), "lr": settings.lr},
    ]
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay, foreach=False)
    return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay, foreach=False)


def lr_factor(settings: FinetuneSettings, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base learning rates after ``step`` optimiser steps."""
    total = max(1, settings.epochs * steps_per_epoch)
    warmup = round(settings.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if settings.schedule == "step":
            return float(settings.gamma ** (step // (settings.step_epochs * steps_per_epoch)))
        if settings.schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, settings: FinetuneSettings, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR``; its state (the step count) is saved with every checkpoint."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(settings, steps_per_epoch))
