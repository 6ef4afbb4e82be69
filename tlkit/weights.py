"""What weights a recipe asks for, and how to find, verify and load weights files safely.

``backbone.weights`` is parsed once, here, into a :class:`WeightsRequest` that every backbone
plugin receives: no plugin re-interprets ``null`` / ``"none"`` / a path on its own. Every ``.pth``/``.pt``/``.bin`` file is read with ``torch.load(weights_only=True)``, which refuses
pickles that would run code; ``.safetensors`` files hold no code at all. A file that does not fit
the architecture is reported with the counts of missing and unexpected keys and a few examples.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from tlkit.errors import RecipeError, WeightsError
from tlkit.hashing import sha256_of
from tlkit.script_archive import is_script_archive, read_named_tensors

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

def offline() -> bool:
    """True when ``TLKIT_OFFLINE`` (or ``HF_HUB_OFFLINE``) asks tlkit not to try the network."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("TLKIT_OFFLINE", "HF_HUB_OFFLINE"))


def sha256_file(path: Path) -> str:
    """The sha256 of a weights file, read once per process and stamp (:mod:`tlkit.hashing`)."""
    return sha256_of(path)


def hub_checkpoint_dir() -> Path:
    """Where torch.hub (and torchvision) keep downloaded weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def load_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat ``name -> tensor`` dict, refusing anything unsafe.

    Accepts a plain state dict or one wrapped under ``state_dict``/``model``/``state_dict_ema``, a
    ``.safetensors`` file, and a TorchScript-format archive (libtorch ``OutputArchive``, tch-rs
    ``.ot``, ``torch.jit.save``), whose tensors are read without running its code.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist")
    if not path.is_file():
        raise WeightsError(f"weights file {path} is not a file (a folder?); set backbone.weights to the file itself")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file {path} is empty; download it again")
    if is_script_archive(path):  # libtorch OutputArchive / tch-rs .ot, torch.jit.save: read, never run
        return read_named_tensors(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ValueError, ...: all mean "unusable file"
            raise WeightsError(f"weights file {path} is not a readable safetensors file ({exc}); download it again") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4": noise for a file we may refuse
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses both code (a GLOBAL it does not allow) and pickle opcodes it does not know.
        found = re.search(r"unsupported GLOBAL (\S+)", str(exc))
        if found:
            raise WeightsError(
                f"weights file {path} was refused: it holds Python objects or code ({found.group(1)}), not only tensors "
                "(loaded with weights_only=True); use a plain state_dict or a .safetensors file"
            ) from exc
        raise WeightsError(
            f"weights file {path} was refused: it is truncated or not a PyTorch weights file that loads safely "
            "(weights_only=True); download it again, or use a plain state_dict or a .safetensors file"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file raises anything from EOFError to KeyError
        raise WeightsError(f"weights file {path} is truncated or not a PyTorch weights file ({type(exc).__name__}); download it again") from exc
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} does not hold a state_dict of tensors")
    return {str(k): v for k, v in obj.items()}


def _examples(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (", ..." if len(names) > n else "")


def load_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path | str, *, what: str = "this backbone") -> None:
    """Load ``state`` into ``model`` strictly; on mismatch, say how the file differs.

    Only BatchNorm's ``num_batches_tracked`` counters may be absent (tch-rs and other exporters do
    not save them; evaluation never reads them): the model keeps its own.
    """
    expected = model.state_dict()
    state = {**{k: v for k, v in expected.items() if k.endswith("num_batches_tracked") and k not in state}, **state}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise WeightsError(
            f"weights file {path} does not fit {what}: {len(missing)} missing keys ({_examples(missing) or 'none'}), "
            f"{len(unexpected)} unexpected keys ({_examples(unexpected) or 'none'}); is it for another architecture?"
        )
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise WeightsError(f"weights file {path} does not fit {what}: {len(wrong)} tensors have the wrong shape ({_examples(wrong)})")
    model.load_state_dict(state, strict=True)
