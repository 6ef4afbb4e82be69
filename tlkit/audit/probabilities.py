"""Out-of-sample class probabilities for every training image: K-fold cross-validation of a fast default head.

Confident learning needs, for each image, probabilities from a model that never saw that image's
label; otherwise the model has memorised the wrong label and agrees with it. Each fold is held out
in turn and a standardised multinomial logistic regression (full-batch L-BFGS on the cached
features: a fraction of a second for a few thousand images) is fitted on the rest.

Standardisation uses a *relative* epsilon (a feature's spread compared with the largest spread), so
features of any scale (a random-weight backbone's are ~1e-9) are scaled alike instead of being left
at zero. Folds are stratified and drawn from the seed, and L-BFGS is deterministic on one thread, so
the probabilities are the same for the same seed.
"""

from __future__ import annotations

import numpy as np
import torch

from tlkit.fitting import one_thread

DEFAULT_FOLDS = 5
L2_GRID = (0.1, 1.0, 10.0)  # L2 strengths tried (on the mean loss, standardised features); the best out-of-sample log-loss wins


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each image: each class dealt round-robin over the folds after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), dtype=np.int64)
    offset = 0
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        members = members[rng.permutation(len(members))]
        fold[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)  # classes smaller than ``folds`` do not all start in fold 0
    return fold


def standardise(fit: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``(x - mean) / std`` with ``fit``'s statistics; a spread below 1e-6 of the largest counts as constant."""
    mean = fit.mean(0, dtype=np.float64).astype(np.float32)
    std = feature_scale(fit)
    return [((x - mean) / std).astype(np.float32) for x in (fit, *others)]


def feature_scale(x: np.ndarray) -> np.ndarray:
    """Each feature's standard deviation (float32); one below 1e-6 of the largest counts as constant and gets 1."""
    std = x.std(0, dtype=np.float64)
    top = float(std.max()) if std.size else 0.0
    return (np.where(std > top * 1e-6, std, 1.0) if top > 0 else np.ones_like(std)).astype(np.float32)


def fit_predict(x_fit: np.ndarray, y_fit: np.ndarray, x_out: np.ndarray, classes: int, l2: float = 1.0, max_iter: int = 100) -> np.ndarray:
    """Fit a multinomial logistic regression on ``(x_fit, y_fit)`` and return softmax probabilities for ``x_out``."""
    xs, xo = standardise(x_fit, x_out)
    x = torch.from_numpy(xs)
    y = torch.from_numpy(y_fit.astype(np.int64))
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimiser = torch.optim.LBFGS(  # a gradient of 1e-5 is converged for ranking: probabilities move by ~1e-4 past it, at twice the cost
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe", tolerance_grad=1e-5, tolerance_change=1e-7
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum() / 2
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with one_thread():
        optimiser.step(closure)  # type: ignore[no-untyped-call]
        with torch.no_grad():
            return torch.softmax(torch.from_numpy(xo) @ weight + bias, 1).numpy().astype(np.float64)


def out_of_sample_probabilities(
    x: np.ndarray, y: np.ndarray, classes: int, *, folds: int = DEFAULT_FOLDS, seed: int = 0, l2: float | None = None
) -> tuple[np.ndarray, float]:
    """(N, classes) probabilities, each row from the fold model that did not see that image, and the L2 used.

    ``l2=None`` tries each of :data:`L2_GRID` and keeps the one whose out-of-sample probabilities give
    the given labels the lowest log-loss: calibrated probabilities are what confident learning's
    thresholds need, and the noisy labels themselves are the only labels there are. With fewer
    images than two per fold the folds shrink to what the data allows (at least 2).
    """
    n = len(y)
    uniform = np.full((n, classes), 1.0 / max(classes, 1))
    if n < 4 or len(np.unique(y)) < 2:
        return uniform, 0.0  # nothing to learn from: every class equally likely, so no label is flagged
    fold = stratified_folds(y, max(2, min(folds, n // 2)), seed)
    best: tuple[float, np.ndarray, float] | None = None
    for strength in L2_GRID if l2 is None else (l2,):
        probabilities = _cross_validated(x, y, classes, fold, strength, uniform)
        loss = float(-np.log(np.clip(probabilities[np.arange(n), y], 1e-12, None)).mean())
        if best is None or loss < best[0]:
            best = (loss, probabilities, strength)
    assert best is not None
    return best[1], best[2]


def _cross_validated(x: np.ndarray, y: np.ndarray, classes: int, fold: np.ndarray, l2: float, start: np.ndarray) -> np.ndarray:
    probabilities = start.copy()
    for k in range(int(fold.max()) + 1):
        held = fold == k
        if held.all() or not held.any():
            continue
        probabilities[held] = fit_predict(x[~held], y[~held], x[held], classes, l2)
    return probabilities
