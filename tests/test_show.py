"""``tlkit show DATA|RECIPE``: a contact sheet per class before training, from an image folder (split
or flat) or a recipe's loader; deterministic for a seed; bad images as labelled placeholders, never a
crash; a self-contained page checked in a real headless browser where one is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import make_image, make_image_folder
from PIL import Image
from test_report import CHROMIUM, assert_self_contained, cli_output

from tlkit.cli.app import main
from tlkit.contract.plugin_manager import load_plugins
from tlkit.errors import OutputError
from tlkit.run.show import show


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def sheet_sizes(folder: Path) -> dict[str, tuple[int, int]]:
    sizes = {}
    for png in sorted(folder.glob("*.png")):
        with Image.open(png) as img:
            assert img.format == "PNG"
            sizes[png.name] = img.size
    return sizes


def test_show_draws_a_sheet_per_class_with_counts_per_split(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", classes=("cats", "dogs", "fish"), n_train=5, n_test=2)
    out = cli_output(["show", str(root), "--out", str(tmp_path / "sheets"), "--per-class", "3"])
    assert "cats" in out and "sheets" in out
    assert list(sheet_sizes(tmp_path / "sheets")) == ["00-cats.png", "01-dogs.png", "02-fish.png"]
    page = (tmp_path / "sheets" / "show.html").read_text()
    assert_self_contained(page)
    assert "cats <small>(train 5, test 2)</small>" in page and "fish <small>(train 5, test 2)</small>" in page
    assert page.count("<img ") == 3 * (3 + 2)  # 3 train and both test images per class


def test_the_sample_is_the_same_for_a_seed_and_changes_with_it(tmp_path: Path, plugins) -> None:
    root = make_image_folder(tmp_path / "data", n_train=12, n_test=2)
    first = show(root, tmp_path / "a", plugins, per_class=4, seed=1)
    again = show(root, tmp_path / "b", plugins, per_class=4, seed=1)
    other = show(root, tmp_path / "c", plugins, per_class=4, seed=2)
    assert [s.picked for s in first.sheets] == [s.picked for s in again.sheets]
    assert (tmp_path / "a" / "00-cats.png").read_bytes() == (tmp_path / "b" / "00-cats.png").read_bytes()
    assert [s.picked["train"] for s in first.sheets] != [s.picked["train"] for s in other.sheets]


def test_a_flat_folder_and_a_recipe_are_shown_too(tmp_path: Path, plugins) -> None:
    flat = tmp_path / "flat"
    for index, name in enumerate(("red", "green")):
        for i in range(3):
            make_image(flat / name / f"{name}_{i}.png", (200 * (index == 0), 200 * (index == 1), 40), seed=i)
    shown = show(flat, tmp_path / "flat-out", plugins, per_class=2)
    assert [(s.name, dict(s.counts)) for s in shown.sheets] == [("green", {"images": 3}), ("red", {"images": 3})]
    root = make_image_folder(tmp_path / "data", n_train=3, n_test=1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "dataset": {"root": str(root)}, "backbone": {"name": "resnet18"}, "head": {"name": "knn"}}))
    shown = show(recipe, tmp_path / "recipe-out", plugins, per_class=2)
    assert [dict(s.counts) for s in shown.sheets] == [{"train": 3, "test": 1}] * 2


def test_bad_images_are_placeholders_with_the_reason_never_a_crash(tmp_path: Path, plugins) -> None:
    """Hostile case: a truncated JPEG, a text file named .jpg, a decompression bomb and a FIFO among the images."""
    root = make_image_folder(tmp_path / "data", n_train=1, n_test=1)
    cats = root / "train" / "cats"
    whole = (cats / "cats_0.jpg").read_bytes()
    (cats / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (cats / "text.jpg").write_text("not an image")
    Image.new("1", (12_000, 12_000)).save(cats / "bomb.png")  # 144 megapixels: refused from the header
    import os

    os.mkfifo(cats / "pipe.jpg")
    shown = show(root, tmp_path / "out", plugins, per_class=8)
    page = (tmp_path / "out" / "show.html").read_text()
    reasons = page.split('class="bad">')[1:]
    assert len(reasons) == 3  # the FIFO is not listed as an image at all (not a regular file)
    assert {r.split(" (")[0].split("<")[0] for r in reasons} == {"too large to decode safely", "not an image file", "corrupt or truncated image"}
    assert shown.sheets[0].counts["train"] >= 4 and (tmp_path / "out" / "00-cats.png").stat().st_size > 0


def test_a_missing_folder_is_one_line_and_nothing_is_written(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["show", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nowhere" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_an_out_folder_holding_other_files_is_never_replaced(tmp_path: Path, plugins) -> None:
    """Hostile case: ``--out`` at a folder of the user's own files (replacing it would delete them), or at a file."""
    root = make_image_folder(tmp_path / "data", n_train=2, n_test=1)
    mine = tmp_path / "documents"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="holds files tlkit show did not write \\(thesis.tex\\)"):
        show(root, mine, plugins)
    assert (mine / "thesis.tex").read_text() == "years of work" and sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OutputError, match="not a folder of contact sheets"):
        show(root, tmp_path / "a-file", plugins)
    first = show(root, tmp_path / "sheets", plugins, per_class=1)
    again = show(root, tmp_path / "sheets", plugins, per_class=2)  # its own earlier output is replaced
    assert again.pngs == first.pngs and not list(tmp_path.glob(".sheets.partial-*"))


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium) for the browser screenshot")
def test_the_show_page_renders_in_headless_chromium(tmp_path: Path, plugins) -> None:
    root = make_image_folder(tmp_path / "data", classes=("cats", "dogs", "fish"), n_train=6, n_test=3)
    shown = show(root, tmp_path / "out", plugins, per_class=6)
    shot = tmp_path / "page.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--proxy-server=127.0.0.1:9", "--window-size=1000,1200",
         f"--screenshot={shot}", shown.page.resolve().as_uri()],
        check=True, timeout=120, capture_output=True,
    )
    with Image.open(shot) as img:
        assert img.size == (1000, 1200)
        pixels = img.convert("RGB").resize((250, 300))
        colours = pixels.getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 200, "the page rendered (nearly) blank"
    reds = sum(n for n, (r, g, b) in colours if r > 150 and g < 100 and b < 100)
    assert reds > 100  # the cats' red thumbnails are drawn, not broken-image icons
    assert shutil.which(CHROMIUM)
