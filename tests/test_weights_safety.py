"""Weights files from strangers: code is never run, and every bad file is a clear error naming it.

Files are built by the test from torchvision's own ResNet-18 (random init, saved as a state_dict)
and loaded through the real ``resnet18`` backbone builder, the path a recipe's
``backbone.weights: FILE`` takes.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import get_model

from tlkit.contract.plugin_manager import Plugins
from tlkit.contract.specs import NoOptions
from tlkit.contract.weights_request import WeightsRequest
from tlkit.errors import WeightsError


class _Payload:
    """Unpickling this calls ``os.system`` / ``open``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _OpenPayload(_Payload):
    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return get_model("resnet18", weights=None).state_dict()


def build(plugins: Plugins, weights: Path | str) -> Any:
    return plugins.backbones.get("resnet18").build(WeightsRequest.file(weights), NoOptions())


def test_a_good_file_loads(tmp_path: Path, plugins: Plugins, resnet18_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    built = build(plugins, path)
    assert torch.equal(built.model.conv1.weight, resnet18_state["conv1.weight"])
    assert built.weights_path == path and len(built.weights_id) == 64


@pytest.mark.parametrize("payload", [_Payload, _OpenPayload])
@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_a_pickle_carrying_code_is_refused_without_running_it(
    tmp_path: Path, plugins: Plugins, resnet18_state: dict[str, torch.Tensor], payload: type, container: str
) -> None:
    marker = tmp_path / "pwned"
    evil = {**resnet18_state, "fc.extra": payload(marker)}
    path = tmp_path / "resnet18-evil.pth"
    if container == "torch.save":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil))
    assert not marker.exists()
    with pytest.raises(WeightsError, match="refused") as info:
        build(plugins, path)
    assert str(path) in str(info.value)
    assert not marker.exists(), "unpickling ran the payload"


def test_the_payload_would_really_run_under_plain_pickle(tmp_path: Path) -> None:
    """Guards the test above: its payload is live, so 'not created' means 'refused', not 'harmless'."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_OpenPayload(marker))).close()
    assert marker.exists()


def _truncated(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "truncated.pth"
    torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _truncated_safetensors(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "truncated.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _empty(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    return path


def _other_architecture(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "mobilenet.pth"
    torch.save(get_model("mobilenet_v3_small", weights=None).state_dict(), path)
    return path


def _wrong_shapes(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "wrong-shapes.pth"
    torch.save({**state, "conv1.weight": torch.zeros(64, 3, 5, 5), "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}, path)
    return path


def _not_tensors(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "config.pth"
    torch.save({"lr": 0.1, "epochs": 3}, path)
    return path


def _text(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "index.html.pth"
    path.write_text("<html>404 not found</html>\n")
    return path


def _folder(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "weights.pth"
    path.mkdir()
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (_truncated, "truncated"),
        (_truncated_safetensors, "not a readable safetensors file"),
        (_empty, "is empty"),
        (_other_architecture, "does not fit torchvision 'resnet18'"),
        (_wrong_shapes, "wrong shape"),
        (_not_tensors, "does not hold a state_dict of tensors"),
        (_text, "not a PyTorch weights file"),
        (_folder, "is not a file"),
        (lambda tmp_path, state: tmp_path / "missing.pth", "does not exist"),
    ],
)
def test_bad_weights_files_are_clear_errors_naming_the_file(
    tmp_path: Path, plugins: Plugins, resnet18_state: dict[str, torch.Tensor], make: Any, words: str
) -> None:
    path = make(tmp_path, resnet18_state)
    with pytest.raises(WeightsError) as info:
        build(plugins, path)
    message = str(info.value)
    assert words in message and str(path) in message
    assert "\n" not in message


def test_wrong_shapes_message_names_the_tensors(tmp_path: Path, plugins: Plugins, resnet18_state: dict[str, torch.Tensor]) -> None:
    with pytest.raises(WeightsError, match=r"conv1\.weight \(64, 3, 5, 5\) != \(64, 3, 7, 7\)"):
        build(plugins, _wrong_shapes(tmp_path, resnet18_state))


def test_bad_weights_on_the_command_line_exit_2(tmp_path: Path, plugins: Plugins, image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tlkit.cli.app import main

    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"dataset: {{root: {image_folder}}}\nbackbone: {{name: resnet18, weights: {path}}}\n")
    with pytest.raises(SystemExit) as info:
        main(["run", str(recipe), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err and str(path) in err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob("run.partial-*"))
