"""One digest of weights in memory (:func:`tlkit.util.hashing.weights_digest`): the same tensors give the
same digest whatever holds them and however they travel (a module, its state dict, the run's
``backbone.safetensors``, a ``torch.save`` file, another memory layout), and any change gives another."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tlkit.saved.run_directory import RunDirectory
from tlkit.sources.weights import load_state_dict
from tlkit.util.hashing import weights_digest


def small() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2)).eval()


@pytest.fixture
def model() -> torch.nn.Module:
    net = small()
    net(torch.zeros(1, 3, 6, 6))  # materialise the lazy layer
    return net


def test_the_same_weights_give_the_same_digest_through_every_path(model: torch.nn.Module, tmp_path: Path) -> None:
    expected = weights_digest(model)
    assert len(expected) == 64 and weights_digest(model.state_dict()) == expected
    staging = RunDirectory(tmp_path / "run")  # what a run with weights of its own writes, metadata and all
    saved = staging.write_tensors("backbone.safetensors", model.state_dict(), metadata={"backbone": "small"})
    assert weights_digest(load_file(str(saved))) == expected
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    assert weights_digest(load_state_dict(tmp_path / "weights.pth")) == expected
    reloaded = small()
    reloaded(torch.zeros(1, 3, 6, 6))
    reloaded.load_state_dict(load_file(str(saved)))
    assert weights_digest(reloaded) == expected
    assert weights_digest(model.to(memory_format=torch.channels_last)) == expected  # another layout, the same numbers
    transposed = {k: v.t().contiguous().t() if v.dim() == 2 else v for k, v in model.state_dict().items()}
    assert not transposed["3.weight"].is_contiguous() and weights_digest(transposed) == expected
    staging.discard()


def test_any_change_gives_another_digest(model: torch.nn.Module) -> None:
    state = dict(model.state_dict())
    expected = weights_digest(state)
    nudged = {**state, "0.weight": state["0.weight"].clone()}
    nudged["0.weight"].view(-1)[0] += 1e-6
    renamed = {("x." + k if k == "0.bias" else k): v for k, v in state.items()}
    halved = {**state, "0.bias": state["0.bias"].half()}
    reshaped = {**state, "0.bias": state["0.bias"].reshape(2, 2)}
    assert len({expected, *(weights_digest(s) for s in (nudged, renamed, halved, reshaped))}) == 5


def test_the_conversion_store_and_fine_tuning_use_the_one_digest() -> None:
    """No second hasher of weights is left in the modules that once had their own."""
    from tlkit.extract.runtimes import choice, conversion
    from tlkit.run import finetune_stage

    assert choice.weights_digest is weights_digest and finetune_stage.weights_digest is weights_digest
    assert not hasattr(conversion, "state_digest") and not hasattr(finetune_stage, "weights_sha256")


def test_hashing_imports_without_torch() -> None:
    code = "import sys, tlkit.util.hashing, tlkit.util.atomic; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
