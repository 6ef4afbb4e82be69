"""The linear head: the reference full-batch SGD, deterministic, with a training curve."""

from __future__ import annotations

import torch

import tlkit
from tlkit_plugins.heads.linear import LinearOptions, build_linear, fit_linear


def _blobs(n: int = 60, d: int = 16, classes: int = 3, spread: float = 0.3, seed: int = 0) -> tlkit.Features:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 3
    y = torch.arange(n) % classes
    return tlkit.Features(centres[y] + spread * torch.randn(n, d, generator=g), y)


def test_learns_separable_features_and_reports():
    train, test = _blobs(seed=0), _blobs(seed=0, n=30)
    points = []
    ctx = tlkit.FitContext(num_classes=3, seed=0, monitor=test, report=lambda e, m: points.append((e, dict(m))))
    trained = fit_linear(train, LinearOptions(lr=0.1, epochs=200, eval_every=50), ctx)
    assert [e for e, _ in points] == [50, 100, 150, 200]
    assert points[-1][1]["test_accuracy"] == 1.0 and points[-1][1]["loss"] < points[0][1]["loss"]
    assert trained.module(train.x).shape == (60, 3)


def test_deterministic_for_a_seed_and_seed_matters():
    train = _blobs()
    ctx = tlkit.FitContext(num_classes=3, seed=7)
    a = fit_linear(train, LinearOptions(epochs=20), ctx).module.weight
    b = fit_linear(train, LinearOptions(epochs=20), ctx).module.weight
    c = fit_linear(train, LinearOptions(epochs=20), tlkit.FitContext(num_classes=3, seed=8)).module.weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_load_round_trips():
    trained = fit_linear(_blobs(), LinearOptions(epochs=5), tlkit.FitContext(num_classes=3, seed=0))
    again = build_linear(trained.config)  # rebuilt from its saved constructor settings, then its tensors
    again.load_state_dict(trained.module.state_dict())
    x = torch.randn(4, 16)
    assert torch.equal(again(x), trained.module(x))


def test_momentum_and_weight_decay_are_used():
    train = _blobs()
    plain = fit_linear(train, LinearOptions(epochs=30), tlkit.FitContext(num_classes=3, seed=0)).module.weight
    heavy = fit_linear(train, LinearOptions(epochs=30, momentum=0.9, weight_decay=0.1), tlkit.FitContext(num_classes=3, seed=0)).module.weight
    assert not torch.allclose(plain, heavy)
