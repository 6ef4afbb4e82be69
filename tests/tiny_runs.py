"""Small real runs for the evaluation, predict and export tests: generated images, timm's tiny
``test_efficientnet`` (99k parameters, BatchNorm and depthwise convolutions like the real thing)
with random weights saved to a file the test owns, so the run has a real sha256 to check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from conftest import CLASS_COLOURS, make_image, make_image_folder

from tlkit.contract.plugin_manager import Plugins
from tlkit.recipe.loader import resolve
from tlkit.run.engine import run

ARCH = "test_efficientnet"
CLASSES = ("cats", "dogs", "fish")


def make_weights(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = timm.create_model(ARCH, pretrained=False)
    torch.save(model.state_dict(), path)
    return path


def make_data(root: Path) -> Path:
    """Three colour classes; two test images carry another class's colour, so some answers are wrong."""
    make_image_folder(root, classes=CLASSES, n_train=6, n_test=3)
    make_image(root / "val" / "cats" / "odd_0.jpg", CLASS_COLOURS[1], seed=1)
    make_image(root / "val" / "dogs" / "odd_1.jpg", CLASS_COLOURS[2], seed=2)
    return root


def make_run(plugins: Plugins, root: Path, out: Path, weights: str, head: str = "logreg", **head_options: Any) -> Path:
    recipe = resolve(
        {
            "name": "tiny",
            "dataset": {"root": str(root)},
            "backbone": {"name": f"timm:{ARCH}", "weights": weights},
            "extract": {"workers": 0, "batch_size": 8, "cache": False},
            "head": {"name": head, **head_options},
        },
        plugins,
    )
    return run(recipe, out).out_dir
