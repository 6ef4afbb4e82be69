"""Every registered head on generated feature sets: separable, overlapping, a one-example class, a
test split lacking a class; saving and loading; determinism. Feature-level only: no images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tlkit.contract.plugin_manager import load_plugins
from tlkit.contract.specs import Features, FitContext, HeadSpec
from tlkit.errors import RecipeError, RunError
from tlkit.fitting import Standardize, stratified_holdout
from tlkit.recipe.loader import resolve
from tlkit.saved.head_files import head_metadata, head_tensors, load_head, read_head_file

HEADS = load_plugins(entry_points=False).heads.names()


def blobs(n_per_class: list[int], dim: int, spread: float, seed: int) -> Features:
    """Gaussian clusters, one per class, with centres ``spread`` apart along random directions."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(n_per_class), dim, generator=torch.Generator().manual_seed(1234))
    centres = spread * centres / centres.norm(dim=1, keepdim=True)
    xs, ys = [], []
    for label, n in enumerate(n_per_class):
        xs.append(centres[label] + torch.randn(n, dim, generator=generator))
        ys.append(torch.full((n,), label, dtype=torch.long))
    # a common positive offset, like post-ReLU backbone features
    return Features(torch.cat(xs) + 3.0, torch.cat(ys))


def fit(spec: HeadSpec, train: Features, num_classes: int, monitor: Features | None = None, seed: int = 0) -> torch.nn.Module:
    history: list[dict[str, float]] = []
    ctx = FitContext(num_classes=num_classes, seed=seed, monitor=monitor, report=lambda epoch, point: history.append(dict(point)))
    torch.manual_seed(seed)
    trained = spec.fit(train, spec.options(), ctx)
    assert [dict(p) for p in trained.history] == history or not history  # what was reported is what is kept
    for point in trained.history:
        assert {"epoch", "loss"} <= set(point) and all(torch.isfinite(torch.tensor(float(v))) for v in point.values())
    return trained.module.eval()


def probabilities(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        p = module(x).softmax(1)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p.sum(1), torch.ones(len(x)))
    return p


def accuracy(module: torch.nn.Module, data: Features) -> float:
    return float((probabilities(module, data.x).argmax(1) == data.y).float().mean())


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: threads only add hand-off costs (on a busy 2-core machine, 10x slower)."""
    from tlkit.fitting import one_thread

    with one_thread():
        yield


@pytest.fixture(params=HEADS)
def head(request: pytest.FixtureRequest, plugins) -> HeadSpec:
    return plugins.heads.get(request.param)


def test_the_issue_heads_are_registered() -> None:
    assert {"linear", "logreg", "mlp", "knn", "centroid"} <= set(HEADS)


def test_separable_features_are_classified_perfectly(head: HeadSpec) -> None:
    train = blobs([25, 25, 25], dim=32, spread=12.0, seed=0)
    test = blobs([10, 10, 10], dim=32, spread=12.0, seed=1)
    module = fit(head, train, 3, monitor=test)
    assert accuracy(module, test) == 1.0


def test_overlapping_features_beat_chance_without_being_perfect(head: HeadSpec) -> None:
    train = blobs([60, 60], dim=8, spread=1.5, seed=2)
    test = blobs([200, 200], dim=8, spread=1.5, seed=3)
    module = fit(head, train, 2, monitor=test)
    acc = accuracy(module, test)
    assert 0.6 < acc < 0.97, acc
    confident = probabilities(module, test.x).max(1).values
    assert float(confident.min()) < 0.99  # overlapping classes: not every answer can be certain


def test_a_class_with_one_example_and_a_test_split_without_it(head: HeadSpec) -> None:
    train = blobs([20, 20, 1], dim=16, spread=10.0, seed=4)
    test = blobs([8, 8, 0], dim=16, spread=10.0, seed=5)  # the test split lacks class 2
    module = fit(head, train, 3, monitor=test)
    assert probabilities(module, test.x).shape == (16, 3)
    assert accuracy(module, test) >= 0.9


def test_a_class_without_training_examples_gets_probabilities_not_errors(head: HeadSpec) -> None:
    train = blobs([15, 15, 0], dim=8, spread=10.0, seed=6)
    module = fit(head, train, 3)
    p = probabilities(module, blobs([5, 5, 0], dim=8, spread=10.0, seed=7).x)
    assert p.shape == (10, 3)


def test_a_saved_head_is_rebuilt_from_its_saved_config(head: HeadSpec, tmp_path: Path) -> None:
    train = blobs([12, 9, 14], dim=10, spread=4.0, seed=8)
    torch.manual_seed(0)
    trained = head.fit(train, head.options(), FitContext(num_classes=3, seed=0))
    path = tmp_path / "head.safetensors"
    save_file(head_tensors(trained.module), str(path), metadata=head_metadata(head.name, trained))
    _tensors, metadata = read_head_file(path)
    assert json.loads(metadata["config"]) == dict(trained.config) and trained.config  # the constructor settings travel
    rebuilt = load_head(head, path, head.options())
    x = blobs([7, 7, 7], dim=10, spread=4.0, seed=9).x
    torch.testing.assert_close(probabilities(rebuilt, x), probabilities(trained.module.eval(), x), rtol=0, atol=1e-6)


def test_a_head_saved_without_its_config_is_a_clear_error(head: HeadSpec, tmp_path: Path) -> None:
    trained = head.fit(blobs([6, 6], dim=4, spread=6.0, seed=1), head.options(), FitContext(num_classes=2, seed=0))
    path = tmp_path / "head.safetensors"
    save_file(head_tensors(trained.module), str(path), metadata={"head": head.name})  # as tlkit 0.1 wrote it
    with pytest.raises(RunError, match="without the constructor settings.*run the recipe again"):
        load_head(head, path, head.options())


def test_a_saved_config_that_is_not_flat_scalars_is_one_line_before_build(head: HeadSpec, tmp_path: Path) -> None:
    """``build`` is promised a flat ``str -> number | str`` config: a (resealed) file with a list in it never reaches it."""
    trained = head.fit(blobs([6, 6], dim=4, spread=6.0, seed=1), head.options(), FitContext(num_classes=2, seed=0))
    path = tmp_path / "head.safetensors"
    metadata = head_metadata(head.name, trained)
    config = json.loads(metadata["config"])
    config[next(iter(config))] = [1, 2, 3]
    save_file(head_tensors(trained.module), str(path), metadata={**metadata, "config": json.dumps(config)})
    with pytest.raises(RunError, match=r"'config' metadata holds .* a list, not a number or string; run the recipe again"):
        load_head(head, path, head.options())


def test_the_same_seed_gives_the_same_head(head: HeadSpec) -> None:
    train = blobs([15, 15], dim=8, spread=2.0, seed=10)
    x = blobs([20, 20], dim=8, spread=2.0, seed=11).x
    first = probabilities(fit(head, train, 2, seed=3), x)
    second = probabilities(fit(head, train, 2, seed=3), x)
    assert torch.equal(first, second)


def test_stratified_holdout_keeps_singletons_in_training_and_every_other_class_in_both() -> None:
    y = torch.tensor([0] * 10 + [1] * 3 + [2] + [3] * 2)
    split = stratified_holdout(y, 0.2, seed=0)
    assert sorted(torch.cat([split.fit, split.val]).tolist()) == list(range(len(y)))
    assert set(y[split.val].tolist()) == {0, 1, 3} and 2 in y[split.fit].tolist()
    assert (y[split.val] == 0).sum() == 2 and (y[split.fit] == 3).sum() == 1
    assert torch.equal(stratified_holdout(y, 0.2, seed=0).val, split.val)
    assert not stratified_holdout(torch.tensor([0, 1, 2]), 0.2, seed=0).usable


def test_standardize_maps_constant_features_to_zero() -> None:
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    scaled = Standardize.fitted(x)(x)
    assert torch.equal(scaled[:, 1], torch.zeros(2)) and torch.allclose(scaled[:, 0], torch.tensor([-1.0, 1.0]))


def test_logreg_chooses_stronger_l2_for_noisier_data_and_keeps_scaling_in_the_module(plugins) -> None:
    from tlkit_plugins.heads.logreg import COARSE, choose_l2

    spec = plugins.heads.get("logreg")
    clean = blobs([30, 30], dim=40, spread=12.0, seed=12)
    noisy = blobs([30, 30], dim=40, spread=1.0, seed=12)
    chosen = {}
    for name, data in (("clean", clean), ("noisy", noisy)):
        x = Standardize.fitted(data.x)(data.x).double()
        chosen[name], tried = choose_l2(x, data.y, 2, spec.options(), seed=0)
        assert min(COARSE) / 10 <= chosen[name] <= max(COARSE) * 10 and len(tried) > len(COARSE)
    assert chosen["noisy"] > chosen["clean"]
    module = fit(spec, clean, 2)
    state = module.state_dict()
    torch.testing.assert_close(state["scale.mean"], clean.x.mean(0))


def test_knn_keeps_every_training_row_and_a_valid_k(plugins) -> None:
    spec = plugins.heads.get("knn")
    train = blobs([11, 13], dim=6, spread=3.0, seed=13)
    module = fit(spec, train, 2)
    assert module.bank.shape == (24, 6) and 1 <= int(module.k) <= 24 and int(module.k) % 2 == 1


@pytest.mark.parametrize(
    ("head", "key", "value", "message"),
    [
        ("logreg", "l2", -1.0, "head.l2"),
        ("logreg", "holdout", 0.9, "head.holdout"),
        ("mlp", "patience", 0, "head.patience"),
        ("knn", "k", 0, "head.k"),
        ("centroid", "k", 3, "unknown key 'head.k'"),
    ],
)
def test_head_options_are_validated_in_the_recipe(plugins, head: str, key: str, value: object, message: str) -> None:
    data = {"dataset": {"root": "x"}, "backbone": {"name": "efficientnet_lite0"}, "head": {"name": head, key: value}}
    with pytest.raises(RecipeError, match=message):
        resolve(data, plugins)
