"""The fast decoder against the reference transform, which stays the ground truth.

JPEGs it decodes itself must come out within a small tolerance of the reference; every file it
hands over (EXIF rotation, PNG transparency, large JPEGs PIL drafts, CMYK, corrupt files) must come
out exactly as the reference makes it, bad files included (``BadImage`` with the same reason).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlkit.contract.preprocessing import Preprocessing
from tlkit.extract.decode import FAST_DECODER, BadImage, FastPipeline, ReferencePipeline, decoding_pipeline

pytest.importorskip("simplejpeg")

PRE = Preprocessing(crop_size=64, resize_size=72, interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def photo(path: Path, size: tuple[int, int] = (120, 90), mode: str = "RGB", seed: int = 0, **save: object) -> Path:
    """A smooth photo-like image with noise (JPEG artefacts and resizing both matter on it)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    pixels = np.clip(np.asarray(small, dtype=np.float32) + rng.normal(0, 8, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, **save)
    return path


@pytest.mark.parametrize("size", [(120, 90), (90, 120), (73, 200), (143, 143)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_fast_jpegs_match_the_reference_closely(tmp_path: Path, size: tuple[int, int], interpolation: str) -> None:
    pre = Preprocessing(crop_size=64, resize_size=72, interpolation=interpolation, mean=PRE.mean, std=PRE.std)
    path = photo(tmp_path / "a.jpg", size, quality=90)
    fast, reference = FastPipeline(pre)(path), ReferencePipeline(pre)(path)
    assert fast.shape == reference.shape == (3, 64, 64) and fast.dtype == torch.float32
    diff = (fast - reference).abs()
    # one grey level is 1/255/0.229 = 0.017 normalised: at most ~4 levels anywhere, a third of a level on average
    assert float(diff.max()) < 0.08 and float(diff.mean()) < 0.006
    assert FastPipeline(pre)._pixels(path) is not None  # it really was decoded by simplejpeg, not handed over


def test_grayscale_jpeg_is_decoded_fast_as_rgb(tmp_path: Path) -> None:
    path = photo(tmp_path / "g.jpg", mode="L", quality=90)
    fast, reference = FastPipeline(PRE)(path), ReferencePipeline(PRE)(path)
    assert float((fast - reference).abs().max()) < 0.08


def exif_rotated(path: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6
    return photo(path, exif=exif.tobytes(), quality=90)


def cmyk(path: Path) -> Path:
    return photo(path, mode="CMYK", quality=90)


def rgba_png(path: Path) -> Path:
    rgba = np.zeros((90, 120, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :60, 3] = 255
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def large(path: Path) -> Path:
    return photo(path, (400, 300), quality=90)  # short side >= 2 x resize_size: PIL decodes it at a reduced scale


@pytest.mark.parametrize("make", [exif_rotated, cmyk, rgba_png, large], ids=["exif", "cmyk", "png-alpha", "large-jpeg"])
def test_files_the_fast_path_does_not_reproduce_go_through_the_reference_exactly(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path / ("x.png" if make is rgba_png else "x.jpg"))
    fast = FastPipeline(PRE, background=(0, 128, 0))
    assert fast._pixels(path) is None
    assert torch.equal(fast(path), ReferencePipeline(PRE, background=(0, 128, 0))(path))


def test_bad_files_raise_the_reference_reason(tmp_path: Path) -> None:
    path = photo(tmp_path / "t.jpg", quality=90)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(BadImage) as fast_error:
        FastPipeline(PRE)(path)
    with pytest.raises(BadImage) as reference_error:
        ReferencePipeline(PRE)(path)
    assert str(fast_error.value) == str(reference_error.value)


def test_decoder_choice_names_its_pixels() -> None:
    assert decoding_pipeline("auto", PRE)[1] == FAST_DECODER
    assert decoding_pipeline("reference", PRE)[1] == "reference"
    assert isinstance(decoding_pipeline("reference", PRE)[0], ReferencePipeline) and not isinstance(decoding_pipeline("reference", PRE)[0], FastPipeline)
