"""What weights a recipe asks for, and how to find, verify and load weights files safely.

``backbone.weights`` is parsed once, here, into a :class:`WeightsRequest` that every backbone
plugin receives: no plugin re-interprets ``null`` / ``"none"`` / a path on its own. Every ``.pth``/``.pt``/``.bin`` file is read with ``torch.load(weights_only=True)``, which refuses
pickles that would run code; ``.safetensors`` files hold no code at all. A file that does not fit
the architecture is reported with the counts of missing and unexpected keys and a few examples.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from tlkit.errors import RecipeError, WeightsError

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

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def offline() -> bool:
    """True when ``TLKIT_OFFLINE`` (or ``HF_HUB_OFFLINE``) asks tlkit not to try the network."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("TLKIT_OFFLINE", "HF_HUB_OFFLINE"))


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """:func:`file_sha256`, remembered per (path, size, mtime) within the process (weights files are large)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]


def hub_checkpoint_dir() -> Path:
    """Where torch.hub (and torchvision) keep downloaded weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def load_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat ``name -> tensor`` dict, refusing anything unsafe.

    Accepts a plain state dict or one wrapped under ``state_dict``/``model``/``state_dict_ema``.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist")
    if not path.is_file():
        raise WeightsError(f"weights file {path} is not a file (a folder?); set backbone.weights to the file itself")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file {path} is empty; download it again")
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
    """Load ``state`` into ``model`` strictly; on mismatch, say how the file differs."""
    expected = model.state_dict()
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


def download(url: str, dest: Path, *, sha256_prefix: str | None = None, timeout: float = 15.0) -> Path:
    """Fetch ``url`` to ``dest`` atomically (a partial download never sits at ``dest``).

    Raises ``OSError`` when the network is unreachable and :class:`WeightsError` on a hash mismatch.
    """
    if offline():
        raise OSError("offline (TLKIT_OFFLINE is set)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - URLs come from recipes/weights enums
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
        if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix):
            raise WeightsError(f"download of {url} has sha256 {digest.hexdigest()[:16]}..., expected {sha256_prefix}...; try again")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest

