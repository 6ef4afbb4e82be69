"""How an image file becomes the tensor a backbone sees: one record, shared by extraction, predict and export.

Decoding (what to do with a file that will not decode, which colour transparency is composited on),
the backbone's preprocessing and the forward pass's precision all change the features an image
gets. A run records the whole :class:`ImagePipeline` in ``model.json``, and ``tlkit predict`` and
``tlkit export`` rebuild exactly that record instead of re-deriving parts of it, so a saved run
reproduces its own predictions.

The decoding keys are the recipe's ``images:`` section: they belong to the engine, the same for every
data set plugin (a loader only says which files belong to which class).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tlkit.contract.preprocessing import Preprocessing

WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ImageSettings:
    """The recipe's ``images:`` section: how files are decoded before preprocessing."""

    on_bad_image: Literal["skip", "error"] = field(
        default="skip", metadata={"help": "skip: leave out files that cannot be decoded and list them; error: stop at the first"}
    )
    background: Any = field(
        default=WHITE, metadata={"help": "colour transparent pixels are composited on: [r, g, b] (0-255) or a name such as 'white' or '#808080'"}
    )

    def rgb(self) -> tuple[int, int, int]:
        """The background as an (r, g, b) tuple (checked and resolved when the recipe was read)."""
        r, g, b = self.background
        return (int(r), int(g), int(b))

    def to_dict(self) -> dict[str, Any]:
        return {"on_bad_image": self.on_bad_image, "background": list(self.rgb())}


@dataclass(frozen=True)
class ImagePipeline:
    """File -> normalised tensor -> forward pass: every setting that changes a feature, besides the weights."""

    decoding: ImageSettings
    preprocessing: Preprocessing
    precision: str = "fp32"
    decoder: str = "reference"  # which decoder made the pixels (tlkit.extract.decode.DECODER_NAMES); issue 10

    @property
    def background(self) -> tuple[int, int, int]:
        return self.decoding.rgb()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data, saved whole in ``model.json``."""
        return {**self.decoding.to_dict(), "preprocessing": self.preprocessing.to_dict(), "precision": self.precision, "decoder": self.decoder}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImagePipeline:
        """The record :meth:`to_dict` wrote (``KeyError``/``ValueError`` when it is not one)."""
        background = tuple(int(v) for v in data["background"])
        if len(background) != 3:
            raise ValueError(f"background must have 3 values, not {len(background)}")
        on_bad = str(data["on_bad_image"])
        if on_bad not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be skip or error, not {on_bad!r}")
        return cls(
            decoding=ImageSettings(on_bad_image=on_bad, background=background),  # type: ignore[arg-type]
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            precision=str(data["precision"]),
            decoder=str(data.get("decoder", "reference")),  # runs saved before issue 10 decoded with the reference path
        )


def as_pipeline(value: ImagePipeline | Preprocessing) -> ImagePipeline:
    """A pipeline as given, or a bare preprocessing with the default decoding and fp32 (for Python callers)."""
    return value if isinstance(value, ImagePipeline) else ImagePipeline(ImageSettings(), value)
