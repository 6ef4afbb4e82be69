"""Heads that cannot silently collapse, and the interpretation a person reads after a run: features
at any scale (a random-weight backbone gives ~1e-9), the warning when a head predicts one class for
everything or the features do not vary, the most-confused pairs, and the confusion matrix printed
only where it fits the terminal."""

from __future__ import annotations

import pytest
import torch

from tlkit.contract.plugin_manager import load_plugins
from tlkit.contract.specs import Features, FitContext
from tlkit.fitting import Standardize

HEADS = load_plugins(entry_points=False).heads


def blobs(scale: float, seed: int = 0, n: int = 30, dim: int = 32, classes: int = 3) -> tuple[Features, Features]:
    """Train and test Gaussian clusters, shifted positive like post-ReLU features, then multiplied by ``scale``."""
    generator = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(classes, dim, generator=generator)
    def split(count: int) -> Features:
        y = torch.arange(classes).repeat_interleave(count)
        x = centres[y] + torch.randn(len(y), dim, generator=generator) + 10.0
        return Features((x * scale).float(), y)
    return split(n), split(n // 2)


def fitted(head: str, train: Features) -> torch.nn.Module:
    spec = HEADS.get(head)
    ctx = FitContext(num_classes=int(train.y.max()) + 1, seed=0, monitor=None, report=lambda epoch, point: None)
    return spec.fit(train, spec.options(), ctx).module.eval()


@pytest.mark.parametrize("head", ["linear", "logreg"])
@pytest.mark.parametrize("scale", [1e-9, 1.0, 1e4])
def test_linear_and_logreg_learn_at_any_feature_scale(head: str, scale: float) -> None:
    """Features ~1e-9 (a random-weight backbone) once made both heads predict one class for every image."""
    train, test = blobs(scale)
    module = fitted(head, train)
    with torch.no_grad():
        predicted = module(test.x).argmax(1)
    assert len(predicted.unique()) == 3
    assert float((predicted == test.y).float().mean()) >= 0.9


def test_standardize_uses_a_relative_epsilon() -> None:
    x = torch.tensor([[1e-9, 5.0], [3e-9, 5.0], [2e-9, 5.0]])
    scaled = Standardize.fitted(x)(x)
    torch.testing.assert_close(scaled[:, 0], torch.tensor([-1.2247, 1.2247, 0.0]), atol=1e-3, rtol=0)
    assert torch.equal(scaled[:, 1], torch.zeros(3))  # constant (up to float rounding): 0, never 1/eps noise
    big = torch.tensor([[1e6 + 4.0], [1e6], [1e6]])  # 64 float32 steps at 1e6: a real (if small) variation
    assert float(Standardize.fitted(big)(big)[0, 0]) > 1.0
    rounding = torch.tensor([[1e6 + 0.0625], [1e6], [1e6]])  # one float32 step: rounding, not a feature
    assert float(Standardize.fitted(rounding)(rounding).abs().max()) < 0.1
