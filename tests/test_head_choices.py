"""What a head chose (logreg's L2, knn's k, mlp's kept epoch, centroid's temperature) is reported,
and the report is the truth: each value equals the buffer the fitted module actually holds."""

from __future__ import annotations

import pytest
import torch
from test_heads import blobs

from tlkit.contract.plugin_manager import load_plugins
from tlkit.contract.specs import FitContext, TrainedHead
from tlkit.fitting import one_thread

PLUGINS = load_plugins(entry_points=False)


def fit(name: str, train, num_classes: int = 3, **options) -> TrainedHead:
    spec = PLUGINS.heads.get(name)
    torch.manual_seed(0)
    with one_thread():
        return spec.fit(train, spec.options(**options), FitContext(num_classes=num_classes, seed=0))


def test_logreg_reports_the_l2_it_was_fitted_with_and_its_sweep() -> None:
    trained = fit("logreg", blobs([20, 20, 20], dim=12, spread=3.0, seed=0))
    l2 = trained.choices["l2"]
    assert trained.choices["l2_chosen"] is True
    assert l2 == pytest.approx(float(trained.module.l2), rel=1e-6)
    sweep = trained.choices["l2_sweep"]
    assert len(sweep) >= 9 and l2 in [p["l2"] for p in sweep]
    best = max(p["val_accuracy"] for p in sweep)
    assert next(p for p in sweep if p["l2"] == l2)["val_accuracy"] == best
    assert f"L2 {l2:.3g} chosen among {len(sweep)} values" in trained.notes[0]


def test_logreg_with_a_set_l2_says_so() -> None:
    trained = fit("logreg", blobs([10, 10, 10], dim=6, spread=5.0, seed=1), l2=0.5)
    assert trained.choices == {"l2": 0.5, "l2_chosen": False} and float(trained.module.l2) == 0.5
    assert "set in the recipe" in trained.notes[0]


def test_knn_reports_the_k_its_module_votes_with() -> None:
    trained = fit("knn", blobs([15, 15, 15], dim=8, spread=2.0, seed=2))
    k = trained.choices["k"]
    assert k == int(trained.module.k) == trained.module.neighbours and trained.choices["k_chosen"] is True
    assert k in [p["k"] for p in trained.choices["k_sweep"]]
    capped = fit("knn", blobs([2, 2, 2], dim=8, spread=2.0, seed=2), k=50)
    assert capped.choices["k"] == int(capped.module.k) == 6 and "capped from 50" in capped.notes[0]


def test_mlp_reports_the_epoch_whose_weights_it_kept() -> None:
    # overlapping classes and a large learning rate: the held-out loss turns up early
    trained = fit("mlp", blobs([30, 30, 30], dim=16, spread=1.0, seed=3), lr=0.05, patience=5, epochs=200)
    kept, ran = trained.choices["epoch"], trained.choices["epochs_trained"]
    assert kept == int(trained.module.epoch) and ran == len(trained.history)
    assert kept < ran and trained.choices["early_stopped"] is True
    losses = {int(p["epoch"]): p["val_loss"] for p in trained.history}
    assert losses[kept] == min(losses.values())
    assert f"restored the weights of epoch {kept} of {ran}" in trained.notes[0]


def test_centroid_reports_its_temperature() -> None:
    trained = fit("centroid", blobs([10, 10], dim=8, spread=4.0, seed=4), num_classes=2)
    assert trained.choices["temperature"] == pytest.approx(float(trained.module.scale))
    assert 1.0 <= trained.choices["temperature"] <= 100.0


@pytest.mark.parametrize("name", ["linear", "logreg", "mlp", "knn", "centroid"])
def test_every_builtin_head_saves_json_config_and_choices(name: str) -> None:
    import json

    trained = fit(name, blobs([8, 8], dim=4, spread=6.0, seed=5), num_classes=2, **({"epochs": 20} if name in ("linear", "mlp") else {}))
    assert json.loads(json.dumps(dict(trained.config))) == dict(trained.config) and trained.config
    json.dumps(dict(trained.choices), allow_nan=False)
