"""The ``audit:`` section of a recipe (issue 19) and the dataset-level ``exclude:`` key.

The audit runs on the features a run already has, so it is on by default: on ants/bees it takes
about a second. Every key is documented in ``docs/recipes.md`` (tests/test_audit.py checks).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, Gt, Le

from tlkit.contract.options import describe_value, validate_options
from tlkit.errors import RecipeError


@dataclass(frozen=True)
class AuditSettings:
    """How the data audit runs (the ``audit:`` section); the thresholds each finder uses."""

    enabled: bool = field(default=True, metadata={"help": "audit the data set after the run (audit.json, audit.csv, summary lines)"})
    label_issues: bool = field(default=True, metadata={"help": "look for wrong training labels (K-fold cross-validation + confident learning)"})
    folds: Annotated[int, Ge(2), Le(20)] = field(default=5, metadata={"help": "cross-validation folds for the out-of-sample probabilities"})
    l2: Annotated[float, Ge(0)] = field(default=0.0, metadata={"help": "L2 strength of the audit's logistic regression (0: chosen by out-of-sample log-loss)"})
    neighbours: Annotated[int, Ge(1), Le(100)] = field(default=10, metadata={"help": "k of the k-nearest-neighbour density (outliers)"})
    outlier_mad: Annotated[float, Gt(0)] = field(default=5.0, metadata={"help": "an outlier's k-NN distance is this many robust standard deviations above the median"})
    min_class_fraction: Annotated[float, Ge(0), Le(1)] = field(default=0.2, metadata={"help": "flag a class with fewer images than this fraction of its split's median class"})
    min_image_side: Annotated[int, Ge(1)] = field(default=32, metadata={"help": "flag images whose smaller side is under this many pixels"})
    max_image_pixels: Annotated[int, Gt(0)] = field(default=50_000_000, metadata={"help": "flag images with more pixels than this"})
    max_aspect_ratio: Annotated[float, Ge(1)] = field(default=4.0, metadata={"help": "flag images longer than this many times their width (or the reverse)"})

    def options(self) -> dict[str, float]:
        """The thresholds as :attr:`tlkit.audit.findings.AuditInputs.options` takes them."""
        return {k: float(v) for k, v in dataclasses.asdict(self).items() if k != "enabled"}


def audit_section(data: Any) -> AuditSettings:
    """The validated ``audit:`` section (``audit: false`` is short for ``audit: {enabled: false}``)."""
    if data is None:
        return AuditSettings()
    if isinstance(data, bool):
        return AuditSettings(enabled=data)
    if not isinstance(data, dict):
        raise RecipeError(f"'audit' must be a mapping of settings or true/false, not {describe_value(data)}")
    return validate_options(AuditSettings, data, "audit")


def exclude_key(dataset: dict[str, Any]) -> Path | None:
    """Take ``dataset.exclude`` (a file listing images to leave out) out of the loader's options."""
    value = dataset.pop("exclude", None)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"'dataset.exclude' must be the path of an exclusions file (got {describe_value(value)})")
    return Path(value).expanduser()
