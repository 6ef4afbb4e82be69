"""``mlp``: one hidden layer on standardised features, AdamW, early stopping on a held-out part.

A stratified part of the training split is held out; training stops when its loss has not improved
for ``patience`` epochs and the weights of the best epoch are kept. Mini-batches are drawn from a
generator seeded by the recipe, so a run is repeatable. Without a usable held-out part (tiny data)
the head trains for ``epochs`` epochs and keeps the last weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Le, Lt

import tlkit
from tlkit.fitting import Standardize, accuracy, check_loss, one_thread, stratified_holdout


@dataclass(frozen=True)
class MLPOptions:
    hidden: Annotated[int, Gt(0), Le(65_536)] = field(default=512, metadata={"help": "units in the hidden layer"})
    dropout: Annotated[float, Ge(0), Lt(1)] = field(default=0.2, metadata={"help": "dropout before the output layer"})
    lr: Annotated[float, Gt(0), Le(10)] = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: Annotated[float, Ge(0), Le(100)] = field(default=1e-2, metadata={"help": "AdamW decoupled weight decay"})
    batch_size: Annotated[int, Gt(0), Le(10_000_000)] = field(default=64, metadata={"help": "examples per step"})
    epochs: Annotated[int, Gt(0), Le(10_000_000)] = field(default=200, metadata={"help": "most epochs"})
    patience: Annotated[int, Gt(0), Le(10_000_000)] = field(
        default=20, metadata={"help": "stop after this many epochs without a better held-out loss"}
    )
    holdout: Annotated[float, Ge(0), Le(0.5)] = field(default=0.2, metadata={"help": "fraction of each train class held out for early stopping"})


class MLP(torch.nn.Module):
    """Standardisation (buffers), Linear -> GELU -> Dropout -> Linear: features (N, D) -> logits (N, C)."""

    def __init__(self, dim: int, hidden: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.scale = Standardize.identity(dim)
        self.hidden = torch.nn.Linear(dim, hidden)
        self.dropout = torch.nn.Dropout(dropout)
        self.out = torch.nn.Linear(hidden, num_classes)
        self.register_buffer("epoch", torch.tensor(0))  # the epoch whose weights these are, for the record

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(F.gelu(self.hidden(self.scale(x)))))


def _fit_mlp(train: tlkit.Features, options: MLPOptions, ctx: tlkit.FitContext) -> tlkit.TrainedHead:
    torch.manual_seed(ctx.seed)  # the initial weights
    generator = torch.Generator().manual_seed(ctx.seed)
    split = stratified_holdout(train.y, options.holdout, ctx.seed)
    fit_idx = split.fit if split.usable else torch.arange(len(train))
    x_fit, y_fit = train.x[fit_idx], train.y[fit_idx]
    x_val, y_val = train.x[split.val], train.y[split.val]
    model = MLP(train.x.shape[1], options.hidden, ctx.num_classes, options.dropout)
    model.scale = Standardize.fitted(x_fit)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    history: list[dict[str, float]] = []
    best_loss, best_state, best_epoch, stale = math.inf, copy.deepcopy(model.state_dict()), 0, 0
    for epoch in range(1, options.epochs + 1):
        model.train()
        order = torch.randperm(len(x_fit), generator=generator)
        total = 0.0
        for start in range(0, len(order), options.batch_size):
            batch = order[start : start + options.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_fit[batch]), y_fit[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        check_loss("mlp", total, epoch, {"lr": options.lr, "weight_decay": options.weight_decay})
        model.eval()
        with torch.no_grad():
            point = {"epoch": float(epoch), "loss": total / len(order), "train_accuracy": accuracy(model(x_fit), y_fit)}
            if split.usable:
                val_logits = model(x_val)
                point["val_loss"] = float(F.cross_entropy(val_logits, y_val))
                point["val_accuracy"] = accuracy(val_logits, y_val)
            if ctx.monitor is not None and len(ctx.monitor):
                point["test_accuracy"] = accuracy(model(ctx.monitor.x), ctx.monitor.y)
        history.append(point)
        ctx.report(epoch, point)
        model.get_buffer("epoch").fill_(epoch)
        if split.usable:
            if point["val_loss"] < best_loss - 1e-6:
                best_loss, best_state, best_epoch, stale = point["val_loss"], copy.deepcopy(model.state_dict()), epoch, 0
            else:
                stale += 1
                if stale >= options.patience:
                    break
    trained = len(history)
    if split.usable:
        model.load_state_dict(best_state)
    kept = best_epoch if split.usable else trained
    config = {"dim": int(train.x.shape[1]), "hidden": options.hidden, "num_classes": ctx.num_classes, "dropout": options.dropout}
    choices = {"epoch": kept, "epochs_trained": trained, "early_stopped": trained < options.epochs}
    return tlkit.TrainedHead(module=model.eval(), history=history, config=config, choices=choices, notes=(_note(kept, trained, split.usable),))


def _note(kept: int, trained: int, held_out: bool) -> str:
    if not held_out:
        return f"kept the last epoch, {kept} (too few training images to hold any out for early stopping)"
    if kept < trained:
        return f"restored the weights of epoch {kept} of {trained} (lowest held-out loss); the {trained - kept} later epochs were discarded"
    return f"kept the last epoch, {kept} (held-out loss still falling)"


def fit_mlp(train: tlkit.Features, options: Any, ctx: tlkit.FitContext) -> tlkit.TrainedHead:
    with one_thread():
        return _fit_mlp(train, options, ctx)


def build_mlp(config: Mapping[str, Any]) -> torch.nn.Module:
    """An untrained module of a saved head's shape, from its saved ``config``."""
    return MLP(int(config["dim"]), int(config["hidden"]), int(config["num_classes"]), float(config["dropout"]))


@tlkit.hookimpl
def register_heads(register: Any) -> None:
    register(
        tlkit.HeadSpec(
            name="mlp",
            fit=fit_mlp,
            build=build_mlp,
            description="one hidden layer, AdamW, early stopping on a held-out part of train",
            options=MLPOptions,
        )
    )
