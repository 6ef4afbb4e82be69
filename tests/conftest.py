"""Shared fixtures: small real image folders made with PIL, and fresh plugin managers per test."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/tiny.py importable as `tiny`

from tlkit.contract.plugin_manager import Plugins, load_plugins, set_plugins

REPO = Path(__file__).resolve().parent.parent
HYMENOPTERA = (REPO.parent / "shared" / "data" / "hymenoptera_data").resolve()

# Distinct mean colours per class, with noise: separable by any sensible backbone, even a random one.
CLASS_COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (200, 40, 200)]


def make_image(path: Path, colour: Sequence[int], size: tuple[int, int] = (48, 40), seed: int = 0, fmt: str | None = None) -> Path:
    """A small noisy RGB image around ``colour`` (deterministic for a seed)."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(colour))
    pixels = img.load()
    for x in range(0, size[0], 2):
        for y in range(0, size[1], 2):
            r, g, b = (max(0, min(255, c + rng.randint(-40, 40))) for c in colour)
            pixels[x, y] = (r, g, b)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def make_image_folder(
    root: Path,
    classes: Sequence[str] = ("cats", "dogs"),
    n_train: int = 6,
    n_test: int = 3,
    test_name: str = "val",
    size: tuple[int, int] = (48, 40),
) -> Path:
    """``root/train/<class>/*.jpg`` and ``root/<test_name>/<class>/*.jpg`` of small coloured images."""
    for split_index, (split, count) in enumerate((("train", n_train), (test_name, n_test))):
        for index, name in enumerate(classes):
            for i in range(count):
                # Deterministic and distinct: hash() of strings changes with every process (PYTHONHASHSEED),
                # and two equal seeds of one class gave byte-identical images that the content-addressed
                # cache rightly took for one (a test counting extractions then failed about once in 100 runs).
                seed = 100_000 + split_index * 10_000_000 + index * 100_000 + i
                make_image(root / split / name / f"{name}_{i}.jpg", CLASS_COLOURS[index % len(CLASS_COLOURS)], size, seed)
    return root


@pytest.fixture(autouse=True, scope="session")
def _session_feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Module- and session-scoped fixtures run before the per-test one: keep them off the user's cache too."""
    old = os.environ.get("TLKIT_CACHE_DIR")
    os.environ["TLKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("tlkit-cache-session"))
    yield
    if old is None:
        os.environ.pop("TLKIT_CACHE_DIR", None)
    else:
        os.environ["TLKIT_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def feature_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty feature cache: never the user's real one."""
    path = tmp_path_factory.mktemp("tlkit-cache")
    monkeypatch.setenv("TLKIT_CACHE_DIR", str(path))
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture
def plugins() -> Iterator[Plugins]:
    """The built-in plugins only (no entry points), installed as the process-wide plugins for the test."""
    loaded = load_plugins(entry_points=False)
    set_plugins(loaded)
    try:
        yield loaded
    finally:
        set_plugins(None)


@pytest.fixture
def tiny_plugins() -> Iterator[Plugins]:
    """Built-ins plus the ``tiny_cnn`` backbone from tests/tiny.py, as the process-wide plugins."""
    from tiny import TinyPlugin

    loaded = load_plugins(entry_points=False, extra=[TinyPlugin()])
    set_plugins(loaded)
    try:
        yield loaded
    finally:
        set_plugins(None)


def write_recipe(path: Path, root: Path, **sections: dict) -> Path:
    """A recipe file for ``root`` with the tiny backbone and a short linear head, updated by ``sections``."""
    import yaml

    data: dict = {
        "name": "t",
        "dataset": {"name": "imagefolder", "root": str(root)},
        "backbone": {"name": "tiny_cnn"},
        "extract": {"workers": 0, "batch_size": 4},
        "head": {"name": "linear", "epochs": 50, "lr": 0.1, "eval_every": 10},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def hymenoptera() -> Path:
    if not (HYMENOPTERA / "train").is_dir():
        pytest.skip(f"ants/bees data not found at {HYMENOPTERA}")
    return HYMENOPTERA


@pytest.fixture(scope="module")
def builtins() -> Plugins:
    """The built-in plugins, loaded once for a module's many loads (nothing process-wide)."""
    return load_plugins(entry_points=False)


def load_listing(plugins: Plugins, loader: str, **options: object) -> object:
    """Data set ``loader``'s listing for a recipe's ``dataset:`` section, options validated as a recipe's are."""
    from tlkit.contract.options import validate_options

    spec = plugins.datasets.get(loader)
    return spec.load(validate_options(spec.options, options, "dataset"))
