"""``knn``: cosine-similarity k-nearest neighbours on centred features.

Features are centred on the training mean and L2-normalised (SimpleShot's "CL2N", which makes
cosine similarity far more telling for post-ReLU features), then each image takes the majority
class of its ``k`` most similar training images. ``k`` is set, or chosen among odd values on a
stratified part held out from the training split. The module keeps the training features as
buffers, so the saved head and its exports need nothing else; its logits are the logs of the vote
fractions, so softmax gives them back as probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Le

import tlkit
from tlkit.fitting import Standardize, accuracy, stratified_holdout

K_GRID = (1, 3, 5, 7, 9, 11, 15, 21, 31)
FLOOR = 1e-6  # log(0) would make exported softmaxes NaN-prone; 1e-6 keeps them finite


@dataclass(frozen=True)
class KNNOptions:
    k: Annotated[int, Gt(0), Le(1_000_000)] | None = field(default=None, metadata={"help": "neighbours that vote; null = chosen on a held-out part of train"})
    holdout: Annotated[float, Ge(0), Le(0.5)] = field(default=0.2, metadata={"help": "fraction of each train class held out to choose k"})
    center: bool = field(default=True, metadata={"help": "subtract the training mean before normalising"})


class CosineKNN(torch.nn.Module):
    """Features (N, D) -> log vote fractions (N, C) among the ``k`` most cosine-similar training rows."""

    bank: torch.Tensor
    onehot: torch.Tensor
    k: torch.Tensor

    def __init__(self, center: torch.Tensor, bank: torch.Tensor, onehot: torch.Tensor, k: int) -> None:
        super().__init__()
        self.scale = Standardize(center, torch.ones_like(center))
        self.register_buffer("bank", F.normalize(bank.float(), dim=1))
        self.register_buffer("onehot", onehot.float())
        self.register_buffer("k", torch.tensor(int(k)))
        self.neighbours = int(k)

    def similarities(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each (centred) row of ``x`` to every image in the bank."""
        return F.normalize(self.scale(x), dim=1) @ self.bank.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vote(self.similarities(x), self.onehot, self.neighbours)


def vote(sims: torch.Tensor, onehot: torch.Tensor, k: int) -> torch.Tensor:
    """Log class probabilities from the ``k`` most similar bank images (ties at the k-th similarity all vote)."""
    kth = sims.topk(k, dim=1).values[:, -1:]
    votes = (sims >= kth).to(sims.dtype) @ onehot
    return torch.log(votes / votes.sum(1, keepdim=True) + FLOOR)


def _build(x: torch.Tensor, y: torch.Tensor, num_classes: int, k: int, center: bool) -> CosineKNN:
    mean = x.mean(0) if center else torch.zeros(x.shape[1])
    return CosineKNN(mean, x, F.one_hot(y, num_classes), min(k, len(x))).eval()


def choose_k(train: tlkit.Features, num_classes: int, options: KNNOptions, seed: int) -> tuple[int, list[dict[str, float]]]:
    """The k of :data:`K_GRID` with the best held-out accuracy, then probability of the true class; ties -> larger k.

    Also returns the score of every k tried (empty when no part could be held out: k is then 5).
    """
    split = stratified_holdout(train.y, options.holdout, seed)
    if not split.usable:
        return min(5, len(train)), []
    x_val, y_val = train.x[split.val], train.y[split.val]
    best: tuple[float, float, int] | None = None
    tried: list[dict[str, float]] = []
    bank = _build(train.x[split.fit], train.y[split.fit], num_classes, 1, options.center)
    with torch.no_grad():
        sims = bank.similarities(x_val)  # the same for every k: computed once
    for k in K_GRID:
        if k > len(split.fit):
            break
        logits = vote(sims, bank.onehot, k)
        score = (accuracy(logits, y_val), float(logits.softmax(1)[torch.arange(len(y_val)), y_val].mean()), k)
        tried.append({"k": k, "val_accuracy": score[0], "val_true_class_probability": score[1]})
        if best is None or score >= best:
            best = score
    return (best[2] if best is not None else 1), tried


def fit_knn(train: tlkit.Features, options: KNNOptions, ctx: tlkit.FitContext) -> tlkit.TrainedHead:
    tried: list[dict[str, float]] = []
    if options.k is not None:
        k = options.k
    else:
        k, tried = choose_k(train, ctx.num_classes, options, ctx.seed)
    module = _build(train.x, train.y.long(), ctx.num_classes, k, options.center)
    used = module.neighbours  # k is capped at the number of training images
    config = {"dim": int(train.x.shape[1]), "bank_size": len(train), "num_classes": ctx.num_classes, "k": used}
    choices: dict[str, Any] = {"k": used, "k_chosen": options.k is None}
    if tried:
        choices["k_sweep"] = tried
        note = f"k {used} chosen by held-out accuracy among {', '.join(str(int(t['k'])) for t in tried)}"
    elif options.k is None:
        note = f"k {used} (too few training images to hold any out for choosing it)"
    else:
        note = f"k {used} (set in the recipe)" + ("" if used == options.k else f", capped from {options.k} at the training set size")
    return tlkit.TrainedHead(module=module, config=config, choices=choices, notes=(note,))


def build_knn(config: Mapping[str, Any]) -> torch.nn.Module:
    """An empty module of a saved head's shape, from its saved ``config``; its buffers are loaded next."""
    dim, bank, num_classes = int(config["dim"]), int(config["bank_size"]), int(config["num_classes"])
    return CosineKNN(torch.zeros(dim), torch.zeros(bank, dim), torch.zeros(bank, num_classes), int(config["k"]))


@tlkit.hookimpl
def register_heads(register: Any) -> None:
    register(
        tlkit.HeadSpec(
            name="knn",
            fit=fit_knn,
            build=build_knn,
            description="cosine k-nearest neighbours on centred features, k chosen on a held-out part of train",
            options=KNNOptions,
        )
    )
