"""Decoding one image file: every odd but valid image becomes correct RGB, every unusable file a
BadImage with a short reason, and nothing else escapes (this code runs inside DataLoader workers)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_messy_dataset import huge_png

from tlkit.contract.preprocessing import Preprocessing
from tlkit.extract import decode
from tlkit.extract.decode import BadImage, open_rgb
from tlkit.extract.features import ImageFiles, extract


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red, right half blue as stored
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)
    img = np.asarray(open_rgb(path))
    assert img.shape == (40, 20, 3)  # portrait after rotation
    assert img[2, 10, 0] > 200 and img[2, 10, 2] < 60  # stored left (red) is now on top
    assert img[-3, 10, 2] > 200 and img[-3, 10, 0] < 60


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 128, 0)])
def test_alpha_is_composited_on_the_background(tmp_path: Path, background: tuple[int, int, int]) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (200, 0, 0, 255)  # opaque red left, fully transparent right
    rgba[:, 4:] = (0, 0, 200, 0)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    img = np.asarray(open_rgb(path, background=background))
    assert tuple(img[0, 0]) == (200, 0, 0)
    assert tuple(img[0, 7]) == background


def test_palette_transparency_and_la_are_composited(tmp_path: Path) -> None:
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(tmp_path / "pal.png", transparency=1)
    assert tuple(np.asarray(open_rgb(tmp_path / "pal.png", background=(1, 2, 3)))[0, 0]) == (1, 2, 3)
    Image.new("LA", (4, 4), (90, 0)).save(tmp_path / "la.png")
    assert tuple(np.asarray(open_rgb(tmp_path / "la.png", background=(9, 9, 9)))[0, 0]) == (9, 9, 9)


def test_sixteen_bit_grayscale_keeps_its_range(tmp_path: Path) -> None:
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)  # 0 .. 63000
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    img = np.asarray(open_rgb(tmp_path / "ramp16.png"))
    assert img.dtype == np.uint8 and img.shape == (8, 8, 3)
    assert img[0, 0, 0] == 0 and 240 <= img[-1, -1, 0] <= 246  # 63000 / 256 = 246: scaled, not clipped to 255
    assert len(np.unique(img[..., 0])) > 32


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [("L", 100, (100, 100, 100)), ("CMYK", (0, 255, 0, 0), (255, 0, 255)), ("1", 1, (255, 255, 255)), ("I", 51200, (200, 200, 200))],
)
def test_other_modes_become_rgb(tmp_path: Path, mode: str, colour: object, expected: tuple[int, int, int]) -> None:
    path = tmp_path / f"img.{'jpg' if mode == 'CMYK' else 'tiff'}"
    Image.new(mode, (6, 6), colour).save(path)  # type: ignore[arg-type]
    img = np.asarray(open_rgb(path))
    assert img.shape == (6, 6, 3)
    assert all(abs(int(a) - b) <= 2 for a, b in zip(img[3, 3], expected))


def test_animated_gif_gives_its_first_frame_and_one_pixel_images_work(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert tuple(np.asarray(open_rgb(tmp_path / "anim.gif"))[5, 5]) == (255, 0, 0)
    Image.new("RGB", (1, 1), (7, 8, 9)).save(tmp_path / "dot.png")
    files = ImageFiles([tmp_path / "dot.png"], Preprocessing(32, 36, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    tensor, _, error = files[0]
    assert error == "" and tensor.shape == (3, 32, 32)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "empty file"),
        (b"hello, not an image\n", "not an image file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "corrupt PNG"),
        (b"\xff\xd8\xff\xe0" + bytes(range(200)), "corrupt JPEG"),
    ],
)
def test_unusable_files_raise_bad_image_with_a_reason(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImage, match=words):
        open_rgb(path)


def test_truncated_jpeg_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(BadImage, match="truncated"):
        open_rgb(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    """A 20,000 x 20,000 PNG (1.2 GB as RGB) is refused from its header: fast, and without the memory."""
    path = huge_png(tmp_path / "huge.png")
    script = (
        "import importlib.util, resource, sys, time\n"
        # decode.py needs only PIL: load it alone, without importing torch through the tlkit package
        f"spec = importlib.util.spec_from_file_location('decode', {str(Path(decode.__file__))!r})\n"
        "decode = importlib.util.module_from_spec(spec); spec.loader.exec_module(decode)\n"
        "open_rgb, BadImage = decode.open_rgb, decode.BadImage\n"
        "hwm = lambda: int(next(l for l in open(\'/proc/self/status\') if l.startswith(\'VmHWM:\')).split()[1])\n"
        "before = hwm()  # this process's own peak: ru_maxrss also counts the forking parent's (vfork + exec)\n"
        "t = time.perf_counter()\n"
        "try:\n"
        f"    open_rgb({str(path)!r})\n"
        "    print('decoded')\n"
        "except BadImage as exc:\n"
        "    print(exc)\n"
        "print(time.perf_counter() - t, hwm() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True).stdout.splitlines()
    assert out[0].startswith("too large to decode safely"), out
    seconds, grown_kib = out[1].split()
    assert float(seconds) < 60  # refused before decoding: instant on a quiet machine, bounded generously for a loaded one
    assert int(grown_kib) < 50 * 1024  # well under the 50 MB a 1-bit decode, let alone the 1.2 GB RGB image


def test_extract_survives_bad_files_in_worker_processes(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (12, 12), (10, 200, 30)).save(good)
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    huge_png(tmp_path / "huge.png")
    paths = [good, tmp_path / "bad.jpg", good, tmp_path / "huge.png", good]
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    pre = Preprocessing(16, 16, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    started = time.perf_counter()
    result = extract(model, paths, pre, batch_size=2, workers=2)
    assert time.perf_counter() - started < 60
    assert result.kept == [0, 2, 4] and result.features.shape == (3, 3)
    assert [(p.name, r.split(" (")[0]) for p, r in result.bad] == [("bad.jpg", "not an image file"), ("huge.png", "too large to decode safely")]


def test_on_bad_callback_can_stop_extraction(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    pre = Preprocessing(16, 16, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def stop(path: Path, reason: str) -> None:
        raise RuntimeError(f"{path.name}: {reason}")

    with pytest.raises(RuntimeError, match="bad.jpg: not an image file"):
        extract(model, [tmp_path / "bad.jpg"] * 8, pre, batch_size=1, workers=2, on_bad=stop)
