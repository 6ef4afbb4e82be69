"""``linear``: one linear layer on the features, full-batch SGD with cross-entropy (the reference head).

The defaults are the PyTorch transfer-learning reference's: lr 1e-3, 1000 epochs, no momentum, no
weight decay. With a few hundred images the whole training set is one batch, so an epoch is one
step and training takes well under a second.

Training runs on standardised features (``standardize``, on by default): SGD with a fixed learning
rate only learns when the features are of order one, and a random-weight backbone gives features
~1e-9 in scale, on which the raw layer learnt nothing and predicted one class for every image. The
scaling is folded into the layer's weights afterwards, so the saved head is still one plain linear
layer on the raw features (same file, same exports).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from annotated_types import Ge, Gt, Le

import tlkit
from tlkit.fitting import Standardize, accuracy, check_loss, one_thread


@dataclass(frozen=True)
class LinearOptions:
    lr: Annotated[float, Gt(0), Le(100)] = field(default=1e-3, metadata={"help": "SGD learning rate"})
    epochs: Annotated[int, Ge(1), Le(10_000_000)] = field(default=1000, metadata={"help": "full-batch SGD steps"})
    momentum: Annotated[float, Ge(0), Le(1)] = field(default=0.0, metadata={"help": "SGD momentum"})
    weight_decay: Annotated[float, Ge(0), Le(100)] = field(default=0.0, metadata={"help": "L2 penalty"})
    eval_every: Annotated[int, Ge(1), Le(10_000_000)] = field(default=100, metadata={"help": "report train loss/accuracy and test accuracy every N epochs"})
    standardize: bool = field(default=True, metadata={"help": "train on features scaled to zero mean, unit variance (folded into the saved layer)"})


def fit_linear(train: tlkit.Features, options: LinearOptions, ctx: tlkit.FitContext) -> tlkit.TrainedHead:
    generator = torch.Generator().manual_seed(ctx.seed)
    layer = torch.nn.Linear(train.x.shape[1], ctx.num_classes)
    with torch.no_grad():  # nn.Linear's default init, but drawn from our seeded generator
        bound = 1.0 / train.x.shape[1] ** 0.5
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    optimizer = _SGD(list(layer.parameters()), lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay)
    history: list[dict[str, float]] = []
    scale = Standardize.fitted(train.x) if options.standardize else Standardize.identity(train.x.shape[1])
    with torch.no_grad():
        scaled = tlkit.Features(scale(train.x), train.y)
        monitor = tlkit.Features(scale(ctx.monitor.x), ctx.monitor.y) if ctx.monitor is not None else None
    with one_thread():
        _train(layer, optimizer, scaled, options, dataclasses.replace(ctx, monitor=monitor), history)
    return dataclasses.replace(adopt_linear(fold(layer, scale)), history=history)


def fold(layer: torch.nn.Linear, scale: Standardize) -> torch.nn.Linear:
    """``layer(scale(x))`` as one linear layer on the raw ``x``: W' = W / std, b' = b - W' @ mean (computed in float64)."""
    with torch.no_grad():
        weight = layer.weight.double() / scale.std.double()
        bias = layer.bias.double() - weight @ scale.mean.double()
        layer.weight.copy_(weight.float())
        layer.bias.copy_(bias.float())
    return layer


class _SGD:
    """Plain SGD (``torch.optim.SGD``'s arithmetic: weight decay added to the gradient, then momentum without dampening).

    ``torch.optim`` imports ``torch._dynamo`` on its first use (over a second on a loaded CPU),
    about as long as this head takes to train; a full-batch linear layer needs none of it.
    """

    def __init__(self, params: list[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float) -> None:
        self.params, self.lr, self.momentum, self.weight_decay = params, lr, momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            grad = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            if self.momentum != 0:
                buffer = self.buffers[i]
                grad = self.buffers[i] = torch.clone(grad).detach() if buffer is None else buffer.mul_(self.momentum).add_(grad)
            p.add_(grad, alpha=-self.lr)


def _train(
    layer: torch.nn.Linear,
    optimizer: _SGD,
    train: tlkit.Features,
    options: LinearOptions,
    ctx: tlkit.FitContext,
    history: list[dict[str, float]],
) -> None:
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(1, options.epochs + 1):
        optimizer.zero_grad(set_to_none=True)
        logits = layer(train.x)
        loss = loss_fn(logits, train.y)
        loss.backward()
        optimizer.step()
        if epoch % options.eval_every == 0 or epoch == options.epochs:
            point = {"epoch": float(epoch), "loss": loss.item(), "train_accuracy": accuracy(logits.detach(), train.y)}
            check_loss("linear", point["loss"], epoch, {"lr": options.lr, "momentum": options.momentum, "weight_decay": options.weight_decay})
            if ctx.monitor is not None:
                with torch.no_grad():
                    point["test_accuracy"] = accuracy(layer(ctx.monitor.x), ctx.monitor.y)
            history.append(point)
            ctx.report(epoch, point)


def adopt_linear(layer: torch.nn.Linear) -> tlkit.TrainedHead:
    """A trained layer (ours, or the classifier fine-tuning trained with the backbone) as this head: its config is what ``build_linear`` takes."""
    return tlkit.TrainedHead(module=layer.eval(), config={"in_features": int(layer.in_features), "out_features": int(layer.out_features)})


def build_linear(config: Mapping[str, Any]) -> torch.nn.Module:
    """The untrained layer of a saved head, from its saved ``config``."""
    return torch.nn.Linear(int(config["in_features"]), int(config["out_features"]))


@tlkit.hookimpl
def register_heads(register: Any) -> None:
    register(
        tlkit.HeadSpec(
            name="linear",
            fit=fit_linear,
            build=build_linear,
            from_classifier=adopt_linear,
            description="linear layer, full-batch SGD with cross-entropy (the PyTorch tutorial reference)",
            options=LinearOptions,
        )
    )
