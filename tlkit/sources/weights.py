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
from pathlib import Path

import torch

from tlkit.errors import WeightsError
from tlkit.sources.script_archive import is_script_archive, read_named_tensors
from tlkit.util.hashing import sha256_of


def offline() -> bool:
    """True when ``TLKIT_OFFLINE`` (or ``HF_HUB_OFFLINE``) asks tlkit not to try the network."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("TLKIT_OFFLINE", "HF_HUB_OFFLINE"))


def sha256_file(path: Path) -> str:
    """The sha256 of a weights file, read once per process and stamp (:mod:`tlkit.util.hashing`)."""
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
