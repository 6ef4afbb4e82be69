"""A data set with every kind of mess a real folder of images has, run end to end.

The run must complete, list each file it could not use with a reason (summary and bad_images.csv),
and train on all the others; ``on_bad_image: error`` must stop at the first bad file instead.
"""

from __future__ import annotations

import csv
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASS_COLOURS, make_image
from PIL import Image

from tlkit.cli.app import main
from tlkit.errors import DataError
from tlkit.recipe.loader import load_recipe
from tlkit.run.engine import run


def huge_png(path: Path, side: int = 20_000) -> Path:
    """A valid 1-bit PNG of side x side pixels (400 megapixels), written row by row in ~50 KB."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _colour_image(mode: str, colour: tuple[int, int, int], size: tuple[int, int] = (40, 32)) -> Image.Image:
    rgb = make_image_in_memory(colour, size)
    if mode == "RGBA":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(200)
        return rgba
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 256)
    return rgb.convert(mode)


def make_image_in_memory(colour: tuple[int, int, int], size: tuple[int, int]) -> Image.Image:
    buffer = io.BytesIO()
    img = Image.new("RGB", size, colour)
    noise = np.random.default_rng(sum(colour) + size[0]).integers(-30, 30, (size[1], size[0], 3))
    arr = np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def build_messy(root: Path) -> dict[str, object]:
    """train/{cats,dogs,fish} and val/{cats,dogs,birds(empty)}; returns the expected outcome."""
    cats, dogs, fish = CLASS_COLOURS[0], CLASS_COLOURS[1], CLASS_COLOURS[2]
    good: dict[str, set[str]] = {"train": set(), "test": set()}
    bad: dict[str, str] = {}  # file name -> expected words in the reason

    def add_good(split: str, path: Path) -> None:
        good[split].add(str(path))

    for i in range(4):
        add_good("train", make_image(root / "train" / "cats" / f"cat_{i}.jpg", cats, seed=i))
        add_good("train", make_image(root / "train" / "dogs" / f"dog_{i}.jpg", dogs, seed=10 + i))
        add_good("train", make_image(root / "train" / "fish" / f"fish_{i}.jpg", fish, seed=20 + i))  # a class only in train
    for i in range(3):
        add_good("test", make_image(root / "val" / "cats" / f"cat_{i}.jpg", cats, seed=30 + i))
        add_good("test", make_image(root / "val" / "dogs" / f"dog_{i}.jpg", dogs, seed=40 + i))
    (root / "val" / "birds").mkdir(parents=True)  # an empty class folder (birds has no train folder either)
    (root / "train" / "birds").mkdir(parents=True)

    c = root / "train" / "cats"
    d = root / "train" / "dogs"
    # Odd but usable images, each must be kept.
    for name, mode in (("gray.png", "L"), ("palette.png", "P"), ("cmyk.jpg", "CMYK"), ("rgba.png", "RGBA"), ("sixteen.png", "I;16")):
        _colour_image(mode, cats).save(c / name)
        add_good("train", c / name)
    _colour_image("RGB", dogs).save(d / "png_named.jpg", format="PNG")
    _colour_image("RGB", dogs).save(d / "gif_named.jpg", format="GIF")
    frames = [_colour_image("RGB", dogs).convert("P") for _ in range(3)]
    frames[0].save(d / "animated_gif_named.jpg", format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)  # left out by name, as torchvision's ImageFolder does
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    _colour_image("RGB", dogs, (48, 24)).save(d / "rotated.jpg", exif=exif.tobytes())
    _colour_image("RGB", dogs, (1, 1)).save(d / "one_pixel.png")
    make_image(d / "name with spaces.jpg", dogs, seed=50)
    make_image(d / "chien_été_狗.jpg", dogs, seed=51)
    for name in ("png_named.jpg", "gif_named.jpg", "animated_gif_named.jpg", "rotated.jpg", "one_pixel.png", "name with spaces.jpg", "chien_été_狗.jpg"):
        add_good("train", d / name)
    (d / "link_to_dog.jpg").symlink_to(d / "dog_0.jpg")
    add_good("train", d / "link_to_dog.jpg")

    # Files that cannot be used: each must be listed with its reason.
    whole = (c / "cat_0.jpg").read_bytes()
    (c / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    bad["truncated.jpg"] = "truncated"
    (c / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    bad["corrupt.jpg"] = "corrupt"
    (c / "empty.jpg").write_bytes(b"")
    bad["empty.jpg"] = "empty file"
    (c / "notes.jpg").write_text("not a picture at all\n")
    bad["notes.jpg"] = "not an image"
    huge_png(d / "huge.png")
    bad["huge.png"] = "too large"

    # Files the loader leaves out by name (never decoded), and links that lead nowhere or in circles.
    (c / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 64)
    (c / "README.txt").write_text("photos of cats\n")
    (c / "loop").symlink_to(c, target_is_directory=True)  # a folder linking to itself
    (d / "a.jpg").symlink_to(d / "b.jpg")
    (d / "b.jpg").symlink_to(d / "a.jpg")  # a file symlink loop
    (d / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    return {"good": good, "bad": bad}


def write_recipe(tmp_path: Path, root: Path, **images: object) -> Path:
    extra = "images:\n" + "".join(f"  {k}: {v}\n" for k, v in images.items()) if images else ""
    recipe = tmp_path / "messy.yaml"
    recipe.write_text(
        f"name: messy\ndataset:\n  name: imagefolder\n  root: {root}\n{extra}"
        "backbone:\n  name: timm:test_resnet\n  weights: none\n"
        "extract:\n  batch_size: 8\n  workers: 2\n  device: cpu\n"
        "head:\n  name: linear\n  lr: 0.5\n  epochs: 300\n  eval_every: 100\n",
        encoding="utf-8",
    )
    return recipe


def test_messy_dataset_completes_lists_bad_files_and_trains_on_the_rest(tmp_path: Path, plugins: object, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "messy data"
    expected = build_messy(root)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(write_recipe(tmp_path, root)), "--out", str(out)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    assert "Traceback" not in captured.err

    with (out / "bad_images.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    listed = {Path(r["path"]).name: r for r in rows}
    assert set(listed) == set(expected["bad"])  # type: ignore[arg-type]
    for name, words in expected["bad"].items():  # type: ignore[union-attr]
        assert words in listed[name]["reason"], (name, listed[name]["reason"])
        assert listed[name]["split"] == "train"
        assert name in captured.out  # the summary lists each one too
    assert "skipped 5 files" in captured.out

    import json

    metrics = json.loads((out / "metrics.json").read_text())
    good = expected["good"]
    assert metrics["counts"] == {"train": len(good["train"]), "test": len(good["test"])}  # type: ignore[index]
    assert metrics["skipped_images"] == 5
    assert metrics["classes"] == ["birds", "cats", "dogs", "fish"]
    assert metrics["test"]["per_class"]["fish"]["support"] == 0  # in train only: no test recall
    assert metrics["train_accuracy"] > 0.5
    assert (out / "run.json").is_file() and not (out / "INCOMPLETE").exists()
    assert "class 'birds' has no images" in captured.err
    assert "train: left out 6 files (hidden, not an image by name, or a broken link)" in captured.err  # incl. animated.gif


def test_on_bad_image_error_stops_at_the_first_bad_file(tmp_path: Path, plugins: object, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    build_messy(root)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(write_recipe(tmp_path, root, on_bad_image="error")), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" not in err
    first = sorted(["corrupt.jpg", "empty.jpg", "notes.jpg", "truncated.jpg"])[0]  # cats come before dogs, names sorted
    assert f"{first}:" in err and "on_bad_image is 'error'" in err
    assert not out.exists() and not list(tmp_path.glob("run.partial-*"))


def test_on_bad_image_error_from_python_is_a_data_error(tmp_path: Path, plugins: object) -> None:
    root = tmp_path / "data"
    build_messy(root)
    recipe = load_recipe(write_recipe(tmp_path, root), plugins, ["images.on_bad_image=error", "extract.workers=0"])  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"corrupt\.jpg: corrupt JPEG image"):
        run(recipe, tmp_path / "run")
