"""``tlkit.load(run_dir)``: a finished run as a Python object that classifies images.

>>> model = tlkit.load("runs/hymenoptera")
>>> model.predict(["ant.jpg", PIL.Image.open("bee.png")])[0].label
'ants'

Files go through exactly the decoding, preprocessing and precision of ``tlkit run`` and ``tlkit
predict`` (the run's own settings from ``model.json``), so a run's test images get the
probabilities in its ``predictions.csv``. PIL images are taken as they are (EXIF orientation and
transparency handled as for files); a JPEG opened by you is decoded at full size, while tlkit may
decode a large JPEG file at a reduced scale first, so the two can differ in the last digits.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tlkit.errors import DataError
from tlkit.saved.reader import SavedModel, load_model

if TYPE_CHECKING:
    from tlkit.saved.export import ExportResult

Source = str | Path | Any  # a file path or a PIL image


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the most probable class, its probability, and every class's probability."""

    source: str
    label: str
    probability: float
    probabilities: dict[str, float]


class Model:
    """A run rebuilt for use from Python: :meth:`predict`, :meth:`probabilities`, :meth:`features`, :meth:`export`."""

    def __init__(self, saved: SavedModel, device: str = "cpu") -> None:
        self.saved = saved
        self.device = device
        self._splits: dict[str, str] | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.saved.classes)

    @property
    def run_dir(self) -> Path:
        return self.saved.run_dir

    def split_of(self, path: str | Path) -> str | None:
        """Which split of the run ``path`` was in (``"train"``, ``"test"``), from its ``split.csv``;
        None for a file the run never saw. Answers "was this image trained on?" for a split data set."""
        if self._splits is None:
            from tlkit.saved.splits import read_split

            listed = read_split(self.run_dir / "split.csv")
            self._splits = {str(p): split for split, rows in listed.items() for p, _ in rows}
        return self._splits.get(str(Path(path)))

    def features(self, images: Source | Iterable[Source]) -> np.ndarray:
        """Backbone feature vectors ``(N, D)`` float32, in input order; an unusable image is a DataError."""
        return self._features(_as_list(images))[0].numpy()

    def probabilities(self, images: Source | Iterable[Source]) -> np.ndarray:
        """Class probabilities ``(N, C)``, columns in the order of :attr:`classes`."""
        feats, _ = self._features(_as_list(images))
        if not len(feats):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        with torch.no_grad():
            return self.saved.head(feats).softmax(1).numpy()

    def predict(self, images: Source | Iterable[Source]) -> list[Prediction]:
        """The class and probabilities of each image (file paths or PIL images, or one of them)."""
        items = _as_list(images)
        probabilities = self.probabilities(items)
        return [
            Prediction(
                source=_name(item, i),
                label=self.classes[int(row.argmax())],
                probability=float(row.max()),
                probabilities={c: float(p) for c, p in zip(self.classes, row)},
            )
            for i, (item, row) in enumerate(zip(items, probabilities))
        ]

    def export(self, format: str = "onnx", path: str | os.PathLike[str] | None = None) -> ExportResult:
        """Write this run's model as ``onnx``, ``pt2`` or ``torchscript`` and verify it, as ``tlkit export`` does."""
        from tlkit.saved.export import export

        return export(self.saved, format, Path(path) if path is not None else None)  # type: ignore[arg-type]  # export() refuses an unknown format

    def _features(self, items: list[Source]) -> tuple[torch.Tensor, list[str]]:
        """Features of ``items`` in input order: files through tlkit's extraction, PIL images directly."""
        if not items:
            return torch.empty(0, 0), []
        is_file = [isinstance(item, (str, Path)) for item in items]
        rows: dict[int, torch.Tensor] = {}
        files = [i for i, f in enumerate(is_file) if f]
        others = [i for i, f in enumerate(is_file) if not f]
        if files:
            rows.update(zip(files, self._file_features([Path(items[i]) for i in files])))
        if others:
            rows.update(zip(others, self._image_features([items[i] for i in others])))
        return torch.stack([rows[i] for i in range(len(items))]), [_name(item, i) for i, item in enumerate(items)]

    def _file_features(self, paths: list[Path]) -> torch.Tensor:
        from tlkit.extract.features import extract, prepare_model, resolve_device

        device = resolve_device(self.device)
        result = extract(
            prepare_model(self.saved.backbone, device), paths, self.saved.pipeline,
            batch_size=self.saved.batch_size, workers=0, device=device,
        )
        if result.bad:
            path, reason = result.bad[0]
            raise DataError(f"{path}: {reason}" + (f" (and {len(result.bad) - 1} more)" if len(result.bad) > 1 else ""))
        return result.features

    def _image_features(self, images: Sequence[Any]) -> torch.Tensor:
        from PIL import Image, ImageOps

        from tlkit.extract.decode import _to_rgb
        from tlkit.extract.features import batch_features, prepare_model, resolve_device

        transform = self.saved.preprocessing.transform()
        tensors = []
        for image in images:
            if not isinstance(image, Image.Image):
                raise DataError(f"cannot classify a {type(image).__name__}; give file paths or PIL images")
            tensors.append(transform(_to_rgb(ImageOps.exif_transpose(image), self.saved.pipeline.background)))
        device = resolve_device(self.device)
        backbone = prepare_model(self.saved.backbone, device)
        size = self.saved.batch_size
        batches = (torch.stack(tensors[start : start + size]) for start in range(0, len(tensors), size))
        return torch.cat([batch_features(backbone, batch, device, self.saved.pipeline.precision) for batch in batches])


def _as_list(images: Source | Iterable[Source]) -> list[Source]:
    if isinstance(images, (str, Path)) or hasattr(images, "getpixel"):
        return [images]
    return list(images)  # type: ignore[arg-type]


def _name(item: Source, index: int) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"<image {index}>"


def load(run_dir: str | os.PathLike[str], *, device: str = "cpu") -> Model:
    """A finished run directory as a :class:`Model` (the backbone's weights checked by sha256)."""
    from tlkit.contract.plugin_manager import get_plugins

    return Model(load_model(Path(run_dir), get_plugins()), device=device)
