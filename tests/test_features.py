"""Feature extraction: the same features whatever the batch size, worker count or cache state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from feature_helpers import TINY_PRE, TinyCNN

import tlkit
from tlkit.extract.features import extract, prepare_model
from tlkit.extract.pipeline import ImagePipeline, ImageSettings


def _paths(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.jpg"))


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    from conftest import make_image_folder

    # Sizes differ and exceed the crop, so resizing and JPEG draft decoding are exercised.
    return _paths(make_image_folder(tmp_path / "data", n_train=5, n_test=2, size=(120, 90)))


@pytest.mark.parametrize(("batch_size", "workers"), [(1, 0), (3, 2), (7, 1), (32, 2)])
def test_tiny_features_identical_whatever_batch_size_and_workers(photos: list[Path], batch_size: int, workers: int) -> None:
    model = prepare_model(TinyCNN(), torch.device("cpu"))
    reference = extract(model, photos, TINY_PRE, batch_size=32, workers=0).features
    result = extract(model, photos, TINY_PRE, batch_size=batch_size, workers=workers)
    assert result.kept == list(range(len(photos)))
    assert torch.equal(result.features, reference)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: many tiny parallel regions crawl when other jobs share the cores (CI, helpers)."""
    from tlkit.fitting import one_thread as single_thread

    with single_thread():
        yield


def test_resnet18_features_identical_whatever_batch_size_and_workers(photos: list[Path], one_thread: None) -> None:
    """A real architecture (random weights, small crop to stay fast): fp32 features agree to 1e-6."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    resnet.fc = torch.nn.Identity()
    model = prepare_model(resnet, torch.device("cpu"))
    pre = tlkit.Preprocessing(crop_size=32, resize_size=36, interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    reference = extract(model, photos, pre, batch_size=len(photos), workers=0).features
    for batch_size, workers in [(1, 0), (4, 2), (5, 1)]:
        features = extract(model, photos, pre, batch_size=batch_size, workers=workers).features
        assert features.shape == (len(photos), 512)
        torch.testing.assert_close(features, reference, rtol=0, atol=1e-6)


def test_bad_files_are_reported_and_the_rest_extracted(photos: list[Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = [photos[0], broken, photos[1]]
    model = prepare_model(TinyCNN(), torch.device("cpu"))
    result = extract(model, paths, TINY_PRE, batch_size=2, workers=0)
    assert result.kept == [0, 2]
    assert [p for p, _ in result.bad] == [broken]
    assert "corrupt" in result.bad[0][1] or "not an image" in result.bad[0][1]
    alone = extract(model, [photos[0], photos[1]], TINY_PRE, batch_size=2, workers=0)
    assert torch.equal(result.features, alone.features)


def test_bf16_features_are_close_to_fp32(photos: list[Path]) -> None:
    model = prepare_model(TinyCNN(), torch.device("cpu"))
    fp32 = extract(model, photos, TINY_PRE, workers=0).features
    bf16 = extract(model, photos, ImagePipeline(ImageSettings(), TINY_PRE, precision="bf16"), workers=0).features
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(("precision", "check"), [("bf16", "_is_mkldnn_bf16_supported"), ("fp16", "_is_mkldnn_fp16_supported")])
def test_emulated_precision_is_named_on_a_cpu_without_it(precision: str, check: str) -> None:
    from tlkit.extract.features import slow_precision_note

    note = slow_precision_note(torch.device("cpu"), precision)
    assert (note is None) == bool(getattr(torch.ops.mkldnn, check)())
    if note:
        assert f"extract.precision: {precision}" in note
    assert slow_precision_note(torch.device("cpu"), "fp32") is None
