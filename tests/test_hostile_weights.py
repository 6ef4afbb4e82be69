"""A backbone weights file holding NaN: every head ends in one line naming the weights file (never a
traceback, never ``nan`` confidences with exit 0), detected once right after the forward pass, and the
feature cache never stores the NaN features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_image_folder, write_recipe

from tlkit.contract.plugin_manager import Plugins, load_plugins
from tlkit.errors import WeightsError
from tlkit.recipe.loader import load_recipe
from tlkit.run.engine import run


@pytest.fixture(scope="module")
def tiny() -> Plugins:
    from tiny import TinyPlugin

    return load_plugins(entry_points=False, extra=[TinyPlugin()])


def _nan_weights(path: Path) -> Path:
    from tiny import TinyCNN

    torch.manual_seed(0)
    state = TinyCNN().state_dict()
    first = next(k for k, v in state.items() if v.is_floating_point() and v.dim() > 1)
    state[first] = torch.full_like(state[first], float("nan"))
    torch.save(state, path)
    return path


def _recipe(path: Path, root: Path, head: str, **backbone: str) -> Path:
    write_recipe(path, root, backbone=backbone)
    data = yaml.safe_load(path.read_text())
    if head != "linear":
        data["head"] = {"name": head}
    path.write_text(yaml.safe_dump(data))
    return path


def _cached_tensors(cache: Path) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    return [t for p in cache.rglob("*.safetensors") for t in load_file(str(p)).values()]


@pytest.mark.parametrize("head", ["logreg", "knn", "centroid", "linear"])
def test_a_weights_file_holding_nan_is_one_line_naming_it(tiny: Plugins, tmp_path: Path, feature_cache_dir: Path, head: str) -> None:
    weights = _nan_weights(tmp_path / "nan.pt")
    root = make_image_folder(tmp_path / "data", n_train=3, n_test=2)
    recipe = load_recipe(_recipe(tmp_path / "r.yaml", root, head, weights=str(weights)), tiny)
    with pytest.raises(WeightsError) as info:
        run(recipe, tmp_path / "run")
    message = str(info.value)
    assert "\n" not in message and str(weights) in message and "NaN" in message, message
    assert not (tmp_path / "run").exists()
    assert all(bool(torch.isfinite(t).all()) for t in _cached_tensors(feature_cache_dir))  # no NaN chunk stored


def test_finite_weights_still_run(tiny: Plugins, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", n_train=3, n_test=2)
    recipe = load_recipe(_recipe(tmp_path / "r.yaml", root, "centroid"), tiny)
    assert (run(recipe, tmp_path / "run").out_dir / "run.json").is_file()
