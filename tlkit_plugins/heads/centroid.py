"""``centroid``: nearest class mean by cosine similarity, the zero-hyperparameter baseline.

Features are centred on the training mean and L2-normalised; each class is the normalised mean of
its training features. The logits are the cosine similarities times one temperature, fitted on the
training features by log-loss over a fixed log grid (it never changes which class wins, only how
confident the probabilities are).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

import tlkit
from tlkit.fitting import Standardize

SCALES = torch.logspace(0, 2, 41)  # temperatures 1 .. 100


@dataclass(frozen=True)
class CentroidOptions:
    center: bool = field(default=True, metadata={"help": "subtract the training mean before normalising"})


class NearestCentroid(torch.nn.Module):
    """Features (N, D) -> ``scale * cos(x - mean, class centroid)`` (N, C)."""

    centroids: torch.Tensor
    scale: torch.Tensor

    def __init__(self, center: torch.Tensor, centroids: torch.Tensor, scale: float | torch.Tensor) -> None:
        super().__init__()
        self.center = Standardize(center, torch.ones_like(center))
        self.register_buffer("centroids", F.normalize(centroids.float(), dim=1))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).reshape(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (F.normalize(self.center(x), dim=1) @ self.centroids.T)


def fit_centroid(train: tlkit.Features, options: CentroidOptions, ctx: tlkit.FitContext) -> tlkit.TrainedHead:
    x, y = train.x.float(), train.y.long()
    mean = x.mean(0) if options.center else torch.zeros(x.shape[1])
    z = F.normalize(x - mean, dim=1)
    sums = torch.zeros(ctx.num_classes, x.shape[1]).index_add_(0, y, z)  # a class without examples stays zero
    model = NearestCentroid(mean, sums, 1.0)
    with torch.no_grad():
        cosines = model(x)
        losses = torch.stack([F.cross_entropy(s * cosines, y) for s in SCALES])
    temperature = float(SCALES[int(losses.argmin())])
    model.scale.fill_(temperature)
    config = {"dim": int(x.shape[1]), "num_classes": ctx.num_classes}
    choices = {"temperature": temperature}
    notes = (f"temperature {temperature:.3g} (lowest training log-loss among {len(SCALES)} values from 1 to 100)",)
    return tlkit.TrainedHead(module=model.eval(), config=config, choices=choices, notes=notes)


def build_centroid(config: Mapping[str, Any]) -> torch.nn.Module:
    """An empty module of a saved head's shape, from its saved ``config``; its buffers are loaded next."""
    dim, num_classes = int(config["dim"]), int(config["num_classes"])
    return NearestCentroid(torch.zeros(dim), torch.zeros(num_classes, dim), 1.0)


@tlkit.hookimpl
def register_heads(register: Any) -> None:
    register(
        tlkit.HeadSpec(
            name="centroid",
            fit=fit_centroid,
            build=build_centroid,
            description="nearest class mean by cosine similarity on centred features (no hyper-parameters)",
            options=CentroidOptions,
        )
    )
