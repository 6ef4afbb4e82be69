"""``logreg``: multinomial logistic regression on standardised features, the linear-probe protocol.

How representation-learning papers evaluate frozen features (CLIP's linear probe): full-batch
L-BFGS on the cross-entropy plus an L2 penalty whose strength is chosen, not guessed. The strength
is swept on a log grid (coarse, then refined around the best) using a stratified part held out from
the training split, ranked by held-out accuracy and then held-out log-loss; the model is then refit
on the whole training split with that strength. The fit is convex and starts from zeros, so the
result is the same for the same features and seed. The test split is never looked at.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Le

import tlkit
from tlkit.fitting import Standardize, accuracy, check_loss, one_thread, stratified_holdout

COARSE = tuple(10.0**e for e in range(2, -7, -1))  # 1e2 .. 1e-6, strong to weak (warm starts)
REFINE_STEPS = 4  # refined grid: best * 10**(i/4) for i in -3..3


@dataclass(frozen=True)
class LogRegOptions:
    l2: Annotated[float, Gt(0), Le(1e6)] | None = field(
        default=None, metadata={"help": "L2 strength on the weights; null = chosen by a sweep on a held-out part of train"}
    )
    holdout: Annotated[float, Ge(0), Le(0.5)] = field(default=0.2, metadata={"help": "fraction of each train class held out for the sweep"})
    max_iter: Annotated[int, Gt(0), Le(1_000_000)] = field(default=500, metadata={"help": "L-BFGS iterations per fit"})
    standardize: bool = field(default=True, metadata={"help": "scale features to zero mean, unit variance (train statistics)"})


class LogisticRegression(torch.nn.Module):
    """Standardisation (buffers) followed by one linear layer: features (N, D) -> logits (N, C).

    The buffer ``l2`` records the penalty the weights were fitted with (chosen or given).
    """

    l2: torch.Tensor

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.scale = Standardize.identity(dim)
        self.linear = torch.nn.Linear(dim, num_classes)
        self.register_buffer("l2", torch.tensor(0.0))  # the strength it was fitted with, for the record

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.scale(x))


Weights = tuple[torch.Tensor, torch.Tensor]


def _objective(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, l2: float) -> torch.Tensor:
    return F.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()


def span_basis(x: torch.Tensor) -> torch.Tensor | None:
    """Orthonormal columns (D, r) spanning the rows of ``x`` when it has more dimensions than rows, else ``None``."""
    return torch.linalg.svd(x, full_matrices=False).Vh.T if x.shape[1] > x.shape[0] else None


def fit_lbfgs(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2: float,
    max_iter: int,
    start: Weights | None = None,
    on_iteration: Callable[[int, float, Weights], None] | None = None,
    basis: torch.Tensor | None = None,
) -> Weights:
    """Minimise mean cross-entropy + ``l2/2 * |W|^2`` (bias unpenalised) with full-batch L-BFGS in float64.

    With more feature dimensions than examples the optimum lies in the span of the examples
    (representer theorem), so the fit runs on their coordinates in that span: same answer, a
    fraction of the work. ``basis`` is :func:`span_basis` of ``x``, when the caller fits the same
    ``x`` many times (an L2 sweep). ``on_iteration(i, loss, weights)`` sees every iteration (one
    L-BFGS step per call then); without it the whole fit is one call.
    """
    dim = x.shape[1]
    basis = span_basis(x) if basis is None else basis
    if basis is not None:
        x = x @ basis

    def full(w: torch.Tensor) -> torch.Tensor:
        return basis @ w if basis is not None else w

    w0 = start[0] if start else torch.zeros(dim, num_classes, dtype=torch.float64)
    w = (basis.T @ w0 if basis is not None else w0.clone()).requires_grad_(True)
    b = (start[1].clone() if start else torch.zeros(num_classes, dtype=torch.float64)).requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=1 if on_iteration is not None else max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-10,
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = _objective(x, y, w, b, l2)
        loss.backward()
        return loss

    if on_iteration is None:
        optimizer.step(closure)
    else:
        previous = math.inf
        for iteration in range(1, max_iter + 1):
            loss = float(optimizer.step(closure).detach())  # the loss where this step started
            on_iteration(iteration, loss, (full(w.detach()), b.detach()))
            gradient = max(float(w.grad.abs().max()), float(b.grad.abs().max())) if w.grad is not None and b.grad is not None else math.inf
            if gradient <= 1e-6 or abs(previous - loss) <= 1e-10 * max(1.0, abs(loss)):
                break
            previous = loss
    return full(w.detach()), b.detach()


def _score(x: torch.Tensor, y: torch.Tensor, weights: Weights) -> tuple[float, float]:
    """Held-out (accuracy, -log-loss): higher is better, compared lexicographically."""
    logits = x @ weights[0] + weights[1]
    return accuracy(logits, y), -float(F.cross_entropy(logits, y))


def choose_l2(x: torch.Tensor, y: torch.Tensor, num_classes: int, options: LogRegOptions, seed: int) -> tuple[float, list[dict[str, float]]]:
    """The L2 strength with the best held-out score (coarse log grid, then a finer one around it).

    Ties go to the stronger penalty. Without a usable held-out part (every class a single example)
    the answer is 1e-2, a mild penalty that keeps the weights of separable data finite.
    """
    split = stratified_holdout(y, options.holdout, seed)
    if not split.usable:
        return 1e-2, []
    x_fit, y_fit, x_val, y_val = x[split.fit], y[split.fit], x[split.val], y[split.val]
    tried: dict[float, tuple[float, float]] = {}
    basis = span_basis(x_fit)  # the same for every L2: decomposed once

    def sweep(grid: list[float]) -> None:
        start: Weights | None = None
        for l2 in sorted(grid, reverse=True):
            if l2 in tried:
                continue
            start = fit_lbfgs(x_fit, y_fit, num_classes, l2, options.max_iter, start, basis=basis)
            tried[l2] = _score(x_val, y_val, start)

    def best() -> float:
        return max(sorted(tried, reverse=True), key=lambda l2: tried[l2])  # max keeps the first (strongest) of ties

    sweep(list(COARSE))
    centre = math.log10(best())
    sweep([10.0 ** (centre + i / REFINE_STEPS) for i in range(-REFINE_STEPS + 1, REFINE_STEPS)])
    chosen = best()
    return chosen, [{"l2": l2, "val_accuracy": acc, "val_log_loss": -neg} for l2, (acc, neg) in sorted(tried.items())]


def _fit_logreg(train: tlkit.Features, options: LogRegOptions, ctx: tlkit.FitContext) -> tlkit.TrainedHead:
    dim = train.x.shape[1]
    module = LogisticRegression(dim, ctx.num_classes)
    if options.standardize:
        module.scale = Standardize.fitted(train.x)
    with torch.no_grad():
        x = module.scale(train.x).double()
    y = train.y.long()
    l2, sweep = (options.l2, []) if options.l2 is not None else choose_l2(x, y, ctx.num_classes, options, ctx.seed)
    monitor = ctx.monitor
    monitor_x = module.scale(monitor.x).double() if monitor is not None and len(monitor) else None
    history: list[dict[str, float]] = []

    def record(iteration: int, loss: float, weights: Weights) -> None:
        point = {"epoch": float(iteration), "loss": loss, "train_accuracy": accuracy(x @ weights[0] + weights[1], y)}
        if monitor_x is not None and monitor is not None:
            point["test_accuracy"] = accuracy(monitor_x @ weights[0] + weights[1], monitor.y)
        history.append(point)
        ctx.report(iteration, point)

    w, b = fit_lbfgs(x, y, ctx.num_classes, l2, options.max_iter, on_iteration=record)
    final = float(_objective(x, y, w, b, l2))
    check_loss("logreg", final if bool(torch.isfinite(w).all() and torch.isfinite(b).all()) else math.nan, len(history), {"l2": l2})
    with torch.no_grad():
        module.l2.fill_(l2)
        module.linear.weight.copy_(w.T.float())
        module.linear.bias.copy_(b.float())
    config = {"dim": dim, "num_classes": ctx.num_classes}
    return tlkit.TrainedHead(module=module.eval(), history=history, config=config, choices=_choices(l2, options, sweep), notes=(_note(l2, options, sweep),))


def _choices(l2: float, options: LogRegOptions, sweep: list[dict[str, float]]) -> dict[str, Any]:
    choices: dict[str, Any] = {"l2": l2, "l2_chosen": options.l2 is None}
    if sweep:
        choices["l2_sweep"] = sweep
    return choices


def _note(l2: float, options: LogRegOptions, sweep: list[dict[str, float]]) -> str:
    if options.l2 is not None:
        return f"L2 {l2:.3g} (set in the recipe)"
    if not sweep:
        return f"L2 {l2:.3g} (too few training images to hold any out for a sweep)"
    best = next(point for point in sweep if point["l2"] == l2)
    return f"L2 {l2:.3g} chosen among {len(sweep)} values (held-out accuracy {best['val_accuracy']:.3f}; plot: l2_sweep.png){_edge(l2, sweep)}"


def _edge(l2: float, sweep: list[dict[str, float]]) -> str:
    """A warning when the sweep chose its strongest or weakest L2: the best may lie beyond the grid it searched."""
    tried = [point["l2"] for point in sweep]
    if l2 == min(tried):
        return f"; at the weak edge of the grid ({min(tried):.3g} to {max(tried):.3g}): the best may be weaker still, try head.l2 below {l2:.3g}"
    if l2 == max(tried):
        return f"; at the strong edge of the grid ({min(tried):.3g} to {max(tried):.3g}): the best may be stronger still, try head.l2 above {l2:.3g}"
    return ""


def fit_logreg(train: tlkit.Features, options: Any, ctx: tlkit.FitContext) -> tlkit.TrainedHead:
    with one_thread():
        return _fit_logreg(train, options, ctx)


def build_logreg(config: Mapping[str, Any]) -> torch.nn.Module:
    """An untrained module of a saved head's shape, from its saved ``config``."""
    return LogisticRegression(int(config["dim"]), int(config["num_classes"]))


@tlkit.hookimpl
def register_heads(register: Any) -> None:
    register(
        tlkit.HeadSpec(
            name="logreg",
            fit=fit_logreg,
            build=build_logreg,
            description="multinomial logistic regression, L-BFGS, L2 strength chosen on a held-out part of train (linear probe)",
            options=LogRegOptions,
        )
    )
