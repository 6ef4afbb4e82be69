"""What ``tlkit.fit`` and ``tlkit.compare`` return: the run's figures, its model and its folder, in one object.

Thin wrappers over the engine's own records (:class:`~tlkit.run.finish.RunResult`,
:class:`~tlkit.run.compare.Comparison`): nothing is recomputed here. The model is loaded from the run
directory on first use (``tlkit.load``), so ``result.predict`` answers exactly as ``tlkit predict``
on that folder would. In Jupyter a result shows itself as HTML (:mod:`tlkit.api.html`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.outputs.metrics import RunMetrics
from tlkit.outputs.predictions import PredictionRow
from tlkit.recipe.loader import Recipe
from tlkit.run.compare import Comparison, Failure, Result
from tlkit.run.finish import RunResult

if TYPE_CHECKING:
    from tlkit.saved.export import ExportResult
    from tlkit.saved.model import Model, Prediction, Source


@dataclass
class FitResult:
    """A finished run: :attr:`metrics`, :attr:`run_dir`, :attr:`model` (``.predict``, ``.export``) and its test predictions."""

    recipe: Recipe
    run: RunResult
    device: str = "cpu"
    _model: Model | None = field(default=None, repr=False)

    @property
    def metrics(self) -> RunMetrics:
        """Everything ``metrics.json`` holds (``.test_accuracy``, ``.test.confusion_matrix``, ``.to_dict()``)."""
        return self.run.metrics

    @property
    def run_dir(self) -> Path:
        return self.run.out_dir

    @property
    def predictions(self) -> tuple[PredictionRow, ...]:
        """The test images' predictions (``predictions.csv``), in test order."""
        return self.run.predictions

    @property
    def errors(self) -> list[PredictionRow]:
        """The test images the run got wrong, in ``errors.csv``'s order."""
        from tlkit.outputs.predictions import misclassified

        return misclassified(self.run.predictions)

    @property
    def model(self) -> Model:
        """The run directory as a model (``tlkit.load(result.run_dir)``), loaded once."""
        if self._model is None:
            from tlkit.saved.model import load

            self._model = load(self.run_dir, device=self.device)
        return self._model

    def predict(self, images: Source | Iterable[Source]) -> list[Prediction]:
        """Classify file paths or PIL images with the run's model (see :meth:`tlkit.saved.model.Model.predict`)."""
        return self.model.predict(images)

    def export(self, format: str = "onnx", path: str | os.PathLike[str] | None = None) -> ExportResult:
        """Write the model as ``onnx``, ``pt2`` or ``torchscript`` (default ``RUN_DIR/model.<ext>``), verified as ``tlkit export`` does."""
        return self.model.export(format, path)

    def __repr__(self) -> str:
        m = self.metrics
        return f"FitResult(recipe={self.recipe.name!r}, test_accuracy={_fraction(m.test_accuracy)}, run_dir={str(self.run_dir)!r})"

    def _repr_html_(self) -> str:
        from tlkit.api.html import fit_html

        return fit_html(self)


@dataclass
class CompareResult:
    """A finished comparison: ranked :attr:`results` (best first), :attr:`table` rows, skipped and failed backbones, files."""

    comparison: Comparison

    @property
    def results(self) -> list[Result]:
        return self.comparison.results

    @property
    def table(self) -> list[dict[str, Any]]:
        """One row per (backbone, head), best first, as in ``compare.json`` (rank, backbone, head, test_accuracy, ci_low, ...)."""
        return [result.to_dict() for result in self.comparison.results]

    @property
    def best(self) -> Result:
        return self.comparison.results[0]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.comparison.skipped

    @property
    def failed(self) -> list[Failure]:
        return self.comparison.failed

    @property
    def out_dir(self) -> Path:
        return self.comparison.out_dir

    @property
    def files(self) -> dict[str, Path]:
        """``json``, ``csv`` and ``png``: the comparison as written."""
        return self.comparison.files

    def __repr__(self) -> str:
        best = self.best
        return f"CompareResult({len(self.results)} results, best={best.backbone.label} + {best.head} at {_fraction(best.test_accuracy)}, out_dir={str(self.out_dir)!r})"

    def _repr_html_(self) -> str:
        from tlkit.api.html import compare_html

        return compare_html(self)


def _fraction(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
