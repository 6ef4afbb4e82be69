"""What the built-in heads share while fitting: a stratified hold-out split and feature scaling.

A head that chooses anything (an L2 strength, a k, when to stop) must choose it on data it does not
train on and never on the test split, so it holds out a stratified part of the training split. Small
data sets make that split awkward: a class may have a single example (it stays in training; it
cannot be both learnt and checked) and the held-out part may end up empty (the head then falls back
to its defaults). Scaling statistics live in the head module as buffers, so the saved head and its
exports apply exactly the same scaling.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tlkit.errors import RecipeError

__all__ = ["Holdout", "Standardize", "accuracy", "check_loss", "one_thread", "stratified_holdout", "varying"]


@dataclass(frozen=True)
class Holdout:
    """Indices into the training split: the part to fit on and the part to choose by (may be empty)."""

    fit: torch.Tensor
    val: torch.Tensor

    @property
    def usable(self) -> bool:
        """True when the held-out part can rank choices: at least one example of two classes or more."""
        return len(self.val) > 0 and len(self.fit) > 0


def stratified_holdout(y: torch.Tensor, fraction: float, seed: int) -> Holdout:
    """Hold out about ``fraction`` of each class (at least one, never its last example), seeded.

    Classes with a single example stay entirely in the fit part. Deterministic for ``(y, seed)``.
    """
    generator = torch.Generator().manual_seed(seed)
    fit: list[torch.Tensor] = []
    val: list[torch.Tensor] = []
    for label in torch.unique(y).tolist():
        members = torch.nonzero(y == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val = 0 if len(members) < 2 or fraction <= 0 else min(len(members) - 1, max(1, round(fraction * len(members))))
        val.append(members[:n_val])
        fit.append(members[n_val:])
    empty = torch.empty(0, dtype=torch.long)
    fit_idx = torch.sort(torch.cat(fit)).values if fit else empty
    val_idx = torch.sort(torch.cat(val)).values if val else empty
    return Holdout(fit=fit_idx, val=val_idx)


class Standardize(torch.nn.Module):
    """``(x - mean) / std`` with the statistics of the training features kept as buffers."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float())

    @classmethod
    def fitted(cls, x: torch.Tensor) -> Standardize:
        """Statistics of ``x``; constant features get std 1 so they map to 0 instead of NaN.

        "Constant" is relative to the feature's own magnitude (:func:`varying`), never an absolute
        threshold: a random-weight backbone gives features ~1e-9 in scale, which an absolute 1e-6
        took for constant, so every head on them predicted one class for every image.
        """
        x64 = x.double()
        mean = x64.mean(0)
        std = x64.std(0, unbiased=False) if len(x) > 1 else torch.ones_like(mean)
        return cls(mean, torch.where(varying(mean, std), std, torch.ones_like(std)))

    @classmethod
    def identity(cls, dim: int) -> Standardize:
        return cls(torch.zeros(dim), torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


RELATIVE_EPS = 4 * float(torch.finfo(torch.float32).eps)  # a few float32 steps of the value itself


def varying(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Which features vary: a spread above a few float32 rounding steps of the feature's own size.

    Scale-free: features of 1e-9 and of 1e4 are judged alike, and a column that is constant up to
    the rounding of its stored value (std a tiny fraction of its mean) counts as constant.
    """
    mean, std = mean.double(), std.double()
    return (std > RELATIVE_EPS * mean.abs()) & (std > 0)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose arg-max is the label (NaN for no rows)."""
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


@contextmanager
def one_thread() -> Iterator[None]:
    """Run small tensor work on one intra-op thread, then restore the setting.

    Heads on a few hundred feature vectors do thousands of tiny operations; spreading each over
    several threads costs more in hand-offs than it gains, and on a busy machine it is many times
    slower (measured: an L-BFGS fit on 195 x 1280 features took 2.4 s on 2 threads, 0.12 s on 1).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_loss(head: str, loss: float, epoch: int, options: dict[str, object]) -> None:
    """Stop a fit whose loss is no longer a number, naming the options that usually caused it.

    A loss of NaN or infinity means every later step is garbage (and the metrics could not even be
    written as JSON): one line saying which settings to lower beats a run that "finishes".
    """
    if math.isfinite(loss):
        return
    settings = ", ".join(f"head.{k} = {v!r}" for k, v in options.items())
    raise RecipeError(
        f"head '{head}': the training loss became {loss} at epoch {epoch} ({settings}); "
        "lower these (or check the features for NaN/inf) and run again"
    )
