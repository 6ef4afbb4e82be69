"""What weights a recipe asks for: ``backbone.weights`` parsed once into the record every backbone plugin receives.

No plugin re-interprets ``null`` / ``"none"`` / a path on its own. Finding, verifying and loading
the file itself is :mod:`tlkit.sources.weights`' job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tlkit.errors import RecipeError

WeightsKind = Literal["pretrained", "random", "file"]


@dataclass(frozen=True)
class WeightsRequest:
    """Which weights a backbone must be built with: the parsed ``backbone.weights``.

    ``pretrained`` is the plugin's default (for most backbones ImageNet weights, found offline or
    downloaded), ``random`` an explicit random initialisation (drawn after tlkit seeded torch with
    the recipe's ``seed``), ``file`` a weights file at ``path`` (absolute: a relative path was taken
    against the working directory when the recipe was read, so a later ``chdir`` changes nothing).
    """

    kind: WeightsKind
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("pretrained", "random", "file"):
            raise ValueError(f"WeightsRequest.kind must be 'pretrained', 'random' or 'file', not {self.kind!r}")
        if (self.kind == "file") != (self.path is not None):
            raise ValueError("WeightsRequest needs a path exactly when kind is 'file'")

    @classmethod
    def pretrained(cls) -> WeightsRequest:
        return cls("pretrained")

    @classmethod
    def random(cls) -> WeightsRequest:
        return cls("random")

    @classmethod
    def file(cls, path: Path | str) -> WeightsRequest:
        """A weights file; ``~`` is expanded and a relative path is taken against the working directory."""
        return cls("file", Path.cwd() / Path(path).expanduser())

    @classmethod
    def parse(cls, value: Any) -> WeightsRequest:
        """A recipe's ``backbone.weights``: ``null`` (default pretrained), ``none`` (random) or a file path.

        An existing request is returned as it is; anything else is a :class:`RecipeError` naming the key.
        """
        if isinstance(value, WeightsRequest):
            return value
        if value is None:
            return cls.pretrained()
        if isinstance(value, Path):
            return cls.file(value)
        if not isinstance(value, str) or not value.strip() or "\x00" in value:
            shown = repr(value) if isinstance(value, str) else f"a {type(value).__name__}"
            raise RecipeError(
                f"'backbone.weights' must be a file path, 'none' (random weights) or null (the default pretrained weights), not {shown}"
            )
        if value.strip().lower() == "none":
            return cls.random()
        return cls.file(value.strip())

    def to_value(self) -> str | None:
        """The recipe value that parses back to this request (saved in ``recipe.yaml`` and ``model.json``)."""
        if self.kind == "pretrained":
            return None
        if self.kind == "random":
            return "none"
        return str(self.path)

    def __str__(self) -> str:
        return {"pretrained": "pretrained (default)", "random": "random"}.get(self.kind, str(self.path))
