"""``ridge``: a ridge-regression classifier, solved in closed form (like scikit-learn's RidgeClassifier).

Regress ±1 class indicators on the (standardised) features with an L2 penalty ``alpha`` and predict
the class with the largest output. There is no learning rate, no epochs and no randomness: one
linear solve in float64 gives the exact optimum in milliseconds, which makes it a strong, quick
baseline on frozen features and a good check of a gradient-trained head. With more features than
images it solves the equivalent N x N (dual) system instead of the D x D one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

import torch
from annotated_types import Gt

import tlkit


@dataclass(frozen=True)
class RidgeOptions:
    alpha: Annotated[float, Gt(0)] = field(default=1.0, metadata={"help": "L2 penalty (larger = smoother)"})
    standardize: bool = field(default=True, metadata={"help": "scale each feature to zero mean, unit variance first"})


class RidgeClassifier(torch.nn.Module):
    """``logits = ((x - mean) / scale) @ weight.T + bias``; everything lives in buffers, so it saves and loads."""

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("scale", scale.float())
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.scale) @ self.weight.T + self.bias


def solve_ridge(z: torch.Tensor, targets: torch.Tensor, alpha: float) -> torch.Tensor:
    """``W`` (C, D) minimising ``|z W.T - targets|^2 + alpha |W|^2`` for centred ``z`` (N, D)."""
    n, d = z.shape
    if d <= n:
        gram = z.T @ z + alpha * torch.eye(d, dtype=z.dtype)
        return torch.linalg.solve(gram, z.T @ targets).T
    gram = z @ z.T + alpha * torch.eye(n, dtype=z.dtype)
    return (z.T @ torch.linalg.solve(gram, targets)).T


def _accuracy(module: torch.nn.Module, features: tlkit.Features) -> float:
    with torch.no_grad():
        return float((module(features.x).argmax(1) == features.y).float().mean())


def fit_ridge(train: tlkit.Features, options: RidgeOptions, ctx: tlkit.FitContext) -> tlkit.TrainedHead:
    """Closed-form ridge regression on ±1 class indicators."""
    x = train.x.double()
    mean = x.mean(0)
    scale = x.std(0, unbiased=False).clamp_min(1e-6) if options.standardize else torch.ones(x.shape[1], dtype=x.dtype)
    z = (x - mean) / scale
    targets = -torch.ones(len(x), ctx.num_classes, dtype=x.dtype)
    targets[torch.arange(len(x)), train.y] = 1.0
    bias = targets.mean(0)
    weight = solve_ridge(z, targets - bias, options.alpha)
    module = RidgeClassifier(mean, scale, weight, bias).eval()
    point = {"epoch": 1.0, "train_accuracy": _accuracy(module, train)}
    if ctx.monitor is not None:
        point["test_accuracy"] = _accuracy(module, ctx.monitor)
    ctx.report(1, point)
    return tlkit.TrainedHead(module=module, history=[point])


def load_ridge(tensors: Mapping[str, torch.Tensor], options: RidgeOptions) -> torch.nn.Module:
    return RidgeClassifier(tensors["mean"], tensors["scale"], tensors["weight"], tensors["bias"]).eval()


def ridge_spec() -> tlkit.HeadSpec:
    return tlkit.HeadSpec(
        name="ridge",
        fit=fit_ridge,
        load=load_ridge,
        options=RidgeOptions,
        description="ridge-regression classifier in closed form (no epochs, no learning rate)",
    )
