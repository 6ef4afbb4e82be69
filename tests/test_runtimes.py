"""The runtime layer on tiny real models with the real ONNX Runtime and OpenVINO.

Every fallback is forced for real: a runtime that cannot be imported, a backbone with an op no
exporter knows (a custom operator), and a backbone whose converted graph computes something else
(random noise, drawn anew by each engine). Each ends on torch with features equal to eager and one
note. A stored model is reused without converting, and a damaged one is detected and rebuilt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tlkit.extract.runtimes import choose_runtime, effective_precision, torch_forward
from tlkit.extract.runtimes.conversion import MANIFEST, ModelStore
from tlkit.util.hashing import weights_digest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

SHAPE = (3, 32, 32)


class Small(torch.nn.Module):
    """Conv + batch norm + ReLU + pool: the pattern runtimes fuse, small enough to convert in seconds."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(16)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2.0)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)


@torch.library.custom_op("tlkit_test::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@twice.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class CustomOp(Small):
    """Calls an operator that neither the ONNX exporter nor OpenVINO's converter can translate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return twice(super().forward(x))


class Noisy(Small):
    """Converts fine, but its output is noise that each engine draws for itself: it can never agree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y + 10 * torch.rand_like(y)


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def probe() -> torch.Tensor:
    return torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(0))


def choose(model: torch.nn.Module, root: Path, runtime: str, precision: str = "fp32", **kwargs: object):  # type: ignore[no-untyped-def]
    return choose_runtime(
        model, requested=runtime, precision=precision, device=torch.device("cpu"), identity={"backbone": type(model).__name__},
        input_shape=SHAPE, probe=probe, cache_root=root, **kwargs,  # type: ignore[arg-type]
    )


def eager(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch_forward(model, torch.device("cpu"), "fp32")(x)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime-cache")


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_converted_runtime_agrees_with_eager_and_is_reused(root: Path, runtime: str) -> None:
    model = frozen(Small())
    first = choose(model, root, runtime)
    assert first.choice.runtime == runtime and first.choice.precision == "fp32"
    assert not first.choice.reused and first.choice.conversion_s > 0
    assert first.choice.agreement is not None and first.choice.agreement >= 0.99999
    x = torch.randn(5, *SHAPE)  # another batch size than the probe's: the batch dimension is dynamic
    assert torch.allclose(first.forward(x), eager(model, x), atol=1e-5)

    second = choose(model, root, runtime)
    assert second.choice.reused and second.choice.conversion_s == 0.0
    assert second.choice.note.startswith(f"runtime: {runtime} fp32 (stored model reused")
    assert torch.allclose(second.forward(x), first.forward(x), atol=1e-6)


def test_other_weights_are_another_model(root: Path) -> None:
    model = frozen(Small())
    other = frozen(Small())
    with torch.no_grad():
        other.conv.weight.mul_(-1)
    assert weights_digest(model) != weights_digest(other)
    choose(model, root, "onnxruntime")
    assert choose(model, root, "onnxruntime").choice.reused  # so a stored model is there to be wrongly reused
    changed = choose(other, root, "onnxruntime")
    assert not changed.choice.reused  # the stored model of `model` is not used for different weights
    x = torch.randn(3, *SHAPE)
    assert torch.allclose(changed.forward(x), eager(other, x), atol=1e-5)


def test_damaged_stored_model_is_detected_and_rebuilt(tmp_path: Path) -> None:
    model = frozen(Small())
    first = choose(model, tmp_path, "onnxruntime")
    stored = Path(first.choice.model_path or "")
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        ModelStore(tmp_path).load(stored.parent.name)
    again = choose(model, tmp_path, "onnxruntime")
    assert not again.choice.reused and "damaged" in again.choice.note and "rebuilt" in again.choice.note
    x = torch.randn(4, *SHAPE)
    assert torch.allclose(again.forward(x), eager(model, x), atol=1e-5)
    assert ModelStore(tmp_path).load(stored.parent.name) is not None  # verified clean again


def assert_torch_fallback(found: object, model: torch.nn.Module, *fragments: str) -> None:
    choice = found.choice  # type: ignore[attr-defined]
    assert choice.runtime == "torch" and choice.precision == "fp32"
    assert choice.note.startswith("runtime: torch fp32 (") and "\n" not in choice.note
    for fragment in fragments:
        assert fragment in choice.note
    x = torch.randn(4, *SHAPE)
    assert torch.equal(found.forward(x), eager(model, x))  # type: ignore[attr-defined]


def test_runtime_not_installed_falls_back_to_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    model = frozen(Small())
    assert_torch_fallback(choose(model, tmp_path, "onnxruntime"), model, "onnxruntime is not installed", "pip install onnxruntime")
    assert not (tmp_path / "runtimes").exists()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_conversion_failure_falls_back_to_torch_and_is_remembered(tmp_path: Path, runtime: str) -> None:
    model = frozen(CustomOp())
    found = choose(model, tmp_path, runtime)
    assert_torch_fallback(found, model, f"{runtime}: cannot convert this backbone")
    (manifest,) = (tmp_path / "runtimes").glob(f"*/{MANIFEST}")
    verdict = json.loads(manifest.read_text())
    assert verdict["main"] is None and verdict["files"] == {}
    written = manifest.stat().st_mtime_ns
    again = choose(model, tmp_path, runtime)  # the verdict is stored: no second conversion attempt
    assert_torch_fallback(again, model, "cannot convert this backbone")
    assert manifest.stat().st_mtime_ns == written  # read, not written again by a second attempt


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_agreement_failure_falls_back_to_torch(tmp_path: Path, runtime: str) -> None:
    model = frozen(Noisy())
    found = choose(model, tmp_path, runtime)
    choice = found.choice
    assert choice.runtime == "torch" and "features disagree with eager fp32 (cosine" in choice.note
    assert choice.note.startswith("runtime: torch fp32 (") and "\n" not in choice.note
    x = torch.randn(4, *SHAPE)
    assert found.forward(x).shape == eager(model, x).shape  # eager itself: the noise is its own


def test_auto_tries_the_next_runtime_and_says_why(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    model = frozen(Small())
    found = choose(model, root, "auto")
    assert found.choice.runtime == "onnxruntime" and found.choice.requested == "auto"
    assert "openvino is not installed" in found.choice.note


def test_torch_requested_converts_nothing(tmp_path: Path) -> None:
    model = frozen(Small())
    found = choose(model, tmp_path, "torch")
    assert found.choice.runtime == "torch" and found.choice.note == ""
    assert not (tmp_path / "runtimes").exists()


def test_bf16_without_fast_cpu_path_runs_fp32_and_says_so(tmp_path: Path) -> None:
    model = frozen(Small())
    slow = lambda precision: precision in ("fp32", "int8")  # noqa: E731 - a CPU without AVX-512-BF16/AMX
    found = choose(model, tmp_path, "torch", precision="bf16", fast=slow)
    assert found.choice.precision == "fp32" and "no fast bf16 path" in found.choice.note and "fp32 runs instead" in found.choice.note
    insisted = choose(model, tmp_path, "torch", precision="bf16", fast=slow, insist_precision=True)
    assert insisted.choice.precision == "bf16" and "emulated" in insisted.choice.note
    assert effective_precision("bf16", torch.device("cpu"), False, fast=lambda p: True) == ("bf16", "")


def test_int8_is_calibrated_and_close(tmp_path: Path) -> None:
    model = frozen(Small())
    calls = []

    def calibration() -> torch.Tensor:
        calls.append(1)
        return torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(1))

    found = choose(model, tmp_path, "onnxruntime", precision="int8", calibration=calibration)
    assert found.choice.runtime == "onnxruntime" and found.choice.precision == "int8" and calls == [1]
    assert found.choice.agreement is not None and 0.95 <= found.choice.agreement < 1.0
    again = choose(model, tmp_path, "onnxruntime", precision="int8", calibration=calibration)
    assert again.choice.reused and calls == [1]  # calibration images are not decoded again


def test_the_probe_images_are_drawn_across_classes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The training folder lists one class first: its first 8 images would probe one class only (issue 18)."""
    from types import SimpleNamespace

    from tlkit.extract.runtimes import stage

    paths = [tmp_path / f"{name}_{i:02d}.jpg" for name in ("ants", "bees", "cats") for i in range(10)]
    labels = [i // 10 for i in range(30)]
    captured: dict[str, object] = {}

    def record(model: object, **kwargs: object) -> object:
        captured.update(kwargs)
        return SimpleNamespace(choice=None)

    monkeypatch.setattr(stage, "choose_runtime", record)
    monkeypatch.setattr(stage, "_decoded", lambda paths, pipeline, limit: list(paths)[:limit])

    def probe(seed: int) -> list[Path]:
        request = stage.RuntimeRequest(
            requested="onnxruntime", precision="fp32", backbone="b", options={}, pipeline=SimpleNamespace(preprocessing=SimpleNamespace(crop_size=32)),  # type: ignore[arg-type]
            device=torch.device("cpu"), train_paths=paths, total_images=300, cache_root=tmp_path, train_labels=labels, seed=seed,
        )
        stage.runtime_for(torch.nn.Identity(), request)
        return captured["probe"]()  # type: ignore[operator,no-any-return]

    first = probe(0)
    assert len(first) == 8 and {p.name.split("_")[0] for p in first} == {"ants", "bees", "cats"}
    assert [p.name.split("_")[0] for p in first[:3]] == ["ants", "bees", "cats"]  # one of each class in turn
    assert probe(0) == first and probe(1) != first  # drawn from the recipe's seed: the same run, the same probe
