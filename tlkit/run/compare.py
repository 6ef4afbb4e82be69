"""``tlkit compare``: which backbone (and head) is best for these images, with honest error bars.

Every backbone named by the patterns runs the recipe once per head through the ordinary engine's
stages (:mod:`tlkit.run.stages`) and its one tail (:func:`tlkit.run.finish.finish`), so each result
is a complete run directory and one extraction serves every head of a backbone. Test accuracy gets
a bootstrap 95% interval over the test images, and every pair of results is compared by a *paired* bootstrap on the same resampled images:
two results whose difference interval contains zero are marked as ties, since on a test set this
small the ranking between them is noise.

A backbone is written ``NAME`` (its default pretrained weights), ``NAME@none`` (random weights, the
"is pretraining worth anything here" baseline) or ``NAME@PATH`` (a weights file); ``NAME`` may be a
shell pattern over every registry (``'efficientnet_lite*'``, ``'timm:resnet1*'``). Backbones whose
default weights are not available offline are skipped and listed, never downloaded mid-comparison.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tlkit.contract.observer import Observer
from tlkit.contract.options import validate_options
from tlkit.contract.plugin_manager import Plugins
from tlkit.contract.weights_request import WeightsRequest
from tlkit.errors import RecipeError, TlkitError, did_you_mean, one_line
from tlkit.outputs.predictions import PredictionRow
from tlkit.recipe.loader import Choice, Recipe
from tlkit.util.atomic import atomic_path, write_atomic

BOOTSTRAP_SAMPLES = 2000
CSV_COLUMNS = ("rank", "backbone", "weights", "head", "test_accuracy", "ci_low", "ci_high", "balanced_accuracy",
               "feature_dim", "parameters", "images_per_s", "ties_with", "run_dir", "error", "warning")


@dataclass(frozen=True)
class Candidate:
    """One backbone to try: its registered name and the weights request (``None`` = default pretrained)."""

    name: str
    weights: str | None = None

    @property
    def label(self) -> str:
        return self.name if self.weights is None else f"{self.name}@{self.weights}"


@dataclass
class Result:
    """One (backbone, head) run of the comparison."""

    backbone: Candidate
    head: str
    test_accuracy: float
    balanced_accuracy: float
    feature_dim: int
    parameters: int
    images_per_s: float | None
    run_dir: Path
    correct: torch.Tensor  # (test images,) bool, in the data set's test order
    ci: tuple[float, float] = (0.0, 0.0)
    ties_with: list[int] = field(default_factory=list)
    rank: int = 0
    degenerate: dict[str, Any] = field(default_factory=dict)  # the run's metrics.json "degenerate" (tlkit.outputs.degenerate)
    warnings: list[str] = field(default_factory=list)

    @property
    def warning(self) -> str:
        """A few words for the table: what makes this row's number meaningless ("" when nothing does)."""
        words = []
        if self.degenerate.get("single_class_prediction") is not None:
            words.append(f"one class for all ({self.degenerate['single_class_prediction']})")
        if self.degenerate.get("constant_features"):
            words.append("constant features")
        return "; ".join(words)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "backbone": self.backbone.name, "weights": self.backbone.weights or "default", "head": self.head,
            "test_accuracy": self.test_accuracy, "ci_low": self.ci[0], "ci_high": self.ci[1], "balanced_accuracy": self.balanced_accuracy,
            "feature_dim": self.feature_dim, "parameters": self.parameters,
            "images_per_s": None if self.images_per_s is None else round(self.images_per_s, 2),
            "ties_with": self.ties_with, "run_dir": str(self.run_dir),
            "warning": self.warning, "degenerate": dict(self.degenerate), "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class Failure:
    """One (backbone, head) that could not be run: its row in the table, with the one-line reason."""

    backbone: Candidate
    head: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone.name, "weights": self.backbone.weights or "default", "head": self.head, "error": self.error}


@dataclass(frozen=True)
class Comparison:
    """The ranked results (best first), the backbones skipped with why, the failed runs, and the files written."""

    results: list[Result]
    skipped: list[tuple[str, str]]
    out_dir: Path
    files: dict[str, Path]
    failed: list[Failure] = field(default_factory=list)


def _reason(exc: Exception) -> str:
    """One line: a tlkit error's own message; anything else (a plugin's bug, out of memory) with its type."""
    first = (str(exc).strip().splitlines() or [""])[0]
    text = first if isinstance(exc, TlkitError) else f"{type(exc).__name__}: {first}".rstrip(": ")
    return one_line(text)


def expand_backbones(patterns: Sequence[str], plugins: Plugins) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Candidates from ``NAME[@WEIGHTS]`` patterns, and ``(name, reason)`` for each skipped backbone."""
    candidates: list[Candidate] = []
    skipped: list[tuple[str, str]] = []
    for item in patterns:
        pattern, _, weights = item.partition("@")
        names = plugins.backbones.names(pattern) if any(c in pattern for c in "*?[") else [pattern] if pattern in plugins.backbones else []
        if not names:
            raise RecipeError(f"--backbones '{item}' matches no registered backbone{did_you_mean(pattern, plugins.backbones.names(include_hidden=True))}")
        for name in names:
            candidate = Candidate(name, weights or None)
            available = plugins.backbones.get(name).weights_available
            if candidate.weights is None and available is not None and not available():
                skipped.append((name, "no pretrained weights offline (NAME@none for random weights, NAME@PATH for a file)"))
            elif candidate not in candidates:
                candidates.append(candidate)
    return candidates, skipped


def _variant(recipe: Recipe, candidate: Candidate, head: str, plugins: Plugins) -> Recipe:
    spec = plugins.backbones.get(candidate.name)
    options = recipe.backbone.options if spec.name == recipe.backbone.name else validate_options(spec.options, {}, "backbone")
    head_spec = plugins.heads.get(head)
    head_options = recipe.head.options if head == recipe.head.name else validate_options(head_spec.options, {}, "head")
    return dataclasses.replace(recipe, backbone=Choice(spec, options), weights=WeightsRequest.parse(candidate.weights), head=Choice(head_spec, head_options))


def _correct(rows: Sequence[PredictionRow]) -> torch.Tensor:
    """Which test images a run got right, from its rows in memory (``RunResult.predictions``), in test order."""
    return torch.tensor([row.correct for row in rows], dtype=torch.bool)


def _run_backbone(
    recipe: Recipe, candidate: Candidate, heads: Sequence[str], plugins: Plugins, out_dir: Path, observer: Observer
) -> tuple[list[Result], list[Failure]]:
    """One extraction (``prepare`` + ``extract``), then the run's one tail (:func:`~tlkit.run.finish.finish`) once per head.

    A head that fails is its own :class:`Failure`; the other heads still run (a failing extraction fails every head).
    """
    from tlkit.run import stages
    from tlkit.run.finish import Progress, finish
    from tlkit.saved.run_directory import RunDirectory

    progress = Progress(observer)
    with progress.timed("prepare"):
        prepared = stages.prepare(_variant(recipe, candidate, heads[0], plugins), progress)
    with progress.timed("extract"):
        features = stages.extract(prepared, progress)
    parameters = sum(p.numel() for p in prepared.backbone.model.parameters())
    speed = features.extracted / features.seconds if features.extracted and features.seconds > 0 else None
    results, failed = [], []
    for head in heads:
        for_head = dataclasses.replace(prepared, recipe=_variant(recipe, candidate, head, plugins))
        try:
            run = finish(for_head, features, RunDirectory(out_dir / "runs" / _folder(candidate, head)), progress)
        except Exception as exc:  # noqa: BLE001 - one failing head is its row, never the end of the comparison
            failed.append(Failure(candidate, head, _reason(exc)))
            observer.note(f"{candidate.label} + {head} failed: {failed[-1].error}")
            continue
        m = run.metrics
        results.append(Result(
            backbone=candidate, head=head, test_accuracy=float(m.test_accuracy or 0.0), balanced_accuracy=float(m.test_balanced_accuracy or 0.0),
            feature_dim=m.feature_dim, parameters=parameters, images_per_s=speed, run_dir=run.out_dir, correct=_correct(run.predictions),
            degenerate=dict(m.degenerate), warnings=list(m.warnings),
        ))
    return results, failed


def bootstrap(results: list[Result], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> None:
    """Fill each result's 95% interval and its ties: all results resampled on the *same* test images."""
    n = len(results[0].correct)
    if any(len(r.correct) != n for r in results):
        raise TlkitError("the runs being compared kept different numbers of test images; compare needs the same test set for every backbone")
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, n, (samples, n), generator=generator)
    accuracy = torch.stack([r.correct.float()[index].mean(1) for r in results])  # (results, samples)
    low, high = torch.quantile(accuracy, torch.tensor([0.025, 0.975]), dim=1)
    for i, result in enumerate(results):
        result.ci = (float(low[i]), float(high[i]))
    for i, a in enumerate(results):
        for j, b in enumerate(results):
            if i < j:
                d_low, d_high = torch.quantile(accuracy[i] - accuracy[j], torch.tensor([0.025, 0.975]))
                if d_low <= 0 <= d_high:
                    a.ties_with.append(j + 1)
                    b.ties_with.append(i + 1)


def compare(recipe: Recipe, patterns: Sequence[str], heads: Sequence[str], plugins: Plugins, out_dir: Path, observer: Observer | None = None) -> Comparison:
    """Run every (backbone, head) pair, rank them, and write ``compare.json``, ``compare.csv`` and ``compare.png``."""
    observer = observer or Observer()
    for head in heads:
        plugins.heads.get(head)  # an unknown head fails before any extraction
    candidates, skipped = expand_backbones(patterns, plugins)
    if not candidates:
        raise RecipeError("no backbone left to compare: " + "; ".join(f"{n}: {why}" for n, why in skipped))
    results: list[Result] = []
    failed: list[Failure] = []
    for number, candidate in enumerate(candidates, 1):
        observer.note(f"[{number}/{len(candidates)}] {candidate.label}")
        try:
            done, lost = _run_backbone(recipe, candidate, heads, plugins, out_dir, observer)
        except Exception as exc:  # noqa: BLE001 - a failing candidate is its row (named, one line), the others still run
            lost = [Failure(candidate, head, _reason(exc)) for head in heads]
            done = []
            observer.note(f"{candidate.label} failed: {lost[0].error}")
        results.extend(done)
        failed.extend(lost)
    if not results:
        reasons = [f"{f.backbone.label} + {f.head}: {f.error}" for f in failed] + [f"{n}: {why}" for n, why in skipped]
        raise RecipeError("no backbone could be run: " + "; ".join(reasons))
    results.sort(key=lambda r: (-r.test_accuracy, -r.balanced_accuracy, r.backbone.label, r.head))
    for rank, result in enumerate(results, 1):
        result.rank = rank
    bootstrap(results, seed=recipe.seed)
    return Comparison(results, skipped, out_dir, write(results, skipped, out_dir, recipe, failed), failed)


def _folder(candidate: Candidate, head: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in candidate.label)
    return f"{safe}-{head}"


def write(results: list[Result], skipped: list[tuple[str, str]], out_dir: Path, recipe: Recipe, failed: Sequence[Failure] = ()) -> dict[str, Path]:
    """The comparison as JSON (programs), CSV (spreadsheets) and a PNG chart with the intervals (people).

    Failed runs are rows too: ``failed`` in the JSON, and CSV rows after the ranked ones with no rank and their ``error``.
    """
    rows = [r.to_dict() for r in results]
    files = {"json": out_dir / "compare.json", "csv": out_dir / "compare.csv", "png": out_dir / "compare.png"}
    payload = {"recipe": recipe.name, "created": time.time(), "bootstrap_samples": BOOTSTRAP_SAMPLES, "interval": 0.95,
               "results": rows, "failed": [f.to_dict() for f in failed], "skipped": [{"backbone": n, "reason": why} for n, why in skipped]}
    write_atomic(files["json"], json.dumps(payload, indent=2).encode("utf-8"))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({**row, "ties_with": " ".join(str(t) for t in row["ties_with"])} for row in rows)
    writer.writerows({**f.to_dict(), "rank": ""} for f in failed)
    write_atomic(files["csv"], buffer.getvalue().encode("utf-8"))
    test_images = len(results[0].correct) if results else 0
    title = f"tlkit compare: {recipe.name}, {len(results)} results on {test_images} test images"
    comparison_png([f"{r.backbone.label} + {r.head}" for r in results], [r.test_accuracy for r in results], [r.ci for r in results], files["png"], title)
    return files


def comparison_png(labels: Sequence[str], accuracy: Sequence[float], intervals: Sequence[tuple[float, float]], path: Path, title: str = "") -> Path:
    """Test accuracy per result, best on top, with its bootstrap 95% interval as an error bar."""
    from tlkit.outputs.plots import plain, plain_figures

    return plain_figures(_draw_comparison)([plain(label) for label in labels], accuracy, intervals, path, plain(title))  # names drawn as written


def _draw_comparison(labels: Sequence[str], accuracy: Sequence[float], intervals: Sequence[tuple[float, float]], path: Path, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 0.5 * len(labels) + 1.5))
    ax = figure.add_subplot()
    ys = list(range(len(labels)))[::-1]
    errors = [[a - lo for a, (lo, _) in zip(accuracy, intervals)], [hi - a for a, (_, hi) in zip(accuracy, intervals)]]
    ax.errorbar(accuracy, ys, xerr=errors, fmt="o", capsize=4)
    ax.set_yticks(ys, labels)
    ax.set_xlabel("test accuracy (bootstrap 95% interval)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.set_xlim(0, 1.02)
    ax.grid(axis="x", alpha=0.3)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    return path
