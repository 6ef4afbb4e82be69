"""``tlkit.testing``: the contract checks pass on good entries and fail, saying what differs, on broken ones."""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_image_folder

import tlkit
import tlkit.testing
from tlkit.contract.plugin_manager import Plugins, load_plugins

PRE = tlkit.Preprocessing(crop_size=32, resize_size=36, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


class TinyCNN(torch.nn.Module):
    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, channels, 3, stride=2)
        self.bn = torch.nn.BatchNorm2d(channels)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)


class Noisy(TinyCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + torch.rand(x.shape[0], 16)


class BatchCentred(TinyCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = super().forward(x)
        return features - features.mean(0, keepdim=True)


class Unpooled(TinyCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


def _backbone(name: str, model: type[torch.nn.Module], feature_dim: int | None = 16, preprocessing: Any = PRE) -> tlkit.BackboneSpec:
    def build(weights: Any, options: Any) -> tlkit.BuiltBackbone:
        torch.manual_seed(0)
        return tlkit.BuiltBackbone(model=model(), weights_id="random")

    return tlkit.BackboneSpec(name=name, build=build, preprocessing=preprocessing, feature_dim=feature_dim)


@dataclasses.dataclass(frozen=True)
class WidthOptions:
    width: int = 16

    def __post_init__(self) -> None:
        if self.width % 8:
            raise tlkit.RecipeError(f"backbone.width must be a multiple of 8, not {self.width}")


def _build_wide(weights: Any, options: WidthOptions) -> tlkit.BuiltBackbone:
    if options.width > 64:
        raise tlkit.RecipeError(f"backbone.width {options.width} is more than 64; lower it")
    return tlkit.BuiltBackbone(model=TinyCNN(options.width), weights_id="random")


def _no_preprocessing() -> tlkit.Preprocessing:
    raise KeyError("input_size")


@dataclasses.dataclass(frozen=True)
class FolderOptions:
    root: str


def _folder_loader(mutate: Any = None) -> Any:
    def load(options: FolderOptions) -> tlkit.LoadedDataset:
        root = Path(options.root)
        splits = {
            split: [tlkit.Sample(p, 0 if p.parent.name == "cats" else 1) for p in sorted((root / folder).rglob("*.jpg"))]
            for split, folder in (("train", "train"), ("test", "val"))
        }
        loaded = tlkit.LoadedDataset(classes=("cats", "dogs"), splits=splits)
        return mutate(loaded) if mutate else loaded

    return load


_loads = itertools.count(1)


def _shuffled(loaded: tlkit.LoadedDataset) -> tlkit.LoadedDataset:
    """A loader whose order changes on every call (rotated by one more each time, never the same twice in a row)."""
    train = list(loaded.splits["train"])
    shift = 1 + next(_loads) % (len(train) - 1)
    train = train[shift:] + train[:shift]
    return dataclasses.replace(loaded, splits={"train": train, "test": loaded.splits["test"]})


def _fit_means(train: tlkit.Features, options: Any, ctx: tlkit.FitContext) -> tlkit.TrainedHead:
    means = torch.stack([train.x[train.y == c].mean(0) for c in range(ctx.num_classes)])
    layer = torch.nn.Linear(train.x.shape[1], ctx.num_classes)
    with torch.no_grad():
        layer.weight.copy_(means)
        layer.bias.copy_(-0.5 * (means**2).sum(1))
    return tlkit.TrainedHead(module=layer)


def _load_means(tensors: Any, options: Any) -> torch.nn.Module:
    layer = torch.nn.Linear(tensors["weight"].shape[1], tensors["weight"].shape[0])
    layer.load_state_dict(dict(tensors))
    return layer


def _fit_random(train: tlkit.Features, options: Any, ctx: tlkit.FitContext) -> tlkit.TrainedHead:
    head = _fit_means(train, options, ctx)
    with torch.no_grad():
        head.module.bias.add_(torch.randn(ctx.num_classes, generator=torch.Generator().manual_seed(random.randrange(10**6))))
    return head


def _fit_peeking(train: tlkit.Features, options: Any, ctx: tlkit.FitContext) -> tlkit.TrainedHead:
    return _fit_means(ctx.monitor if ctx.monitor is not None else train, options, ctx)


def _fit_constant(train: tlkit.Features, options: Any, ctx: tlkit.FitContext) -> tlkit.TrainedHead:
    head = _fit_means(train, options, ctx)
    with torch.no_grad():
        head.module.weight.zero_()
        head.module.bias.copy_(torch.arange(ctx.num_classes, dtype=torch.float32))
    return head


def _fit_wrong_shape(train: tlkit.Features, options: Any, ctx: tlkit.FitContext) -> tlkit.TrainedHead:
    return tlkit.TrainedHead(module=torch.nn.Linear(train.x.shape[1], ctx.num_classes + 1))


def _load_fresh(tensors: Any, options: Any) -> torch.nn.Module:
    return torch.nn.Linear(tensors["weight"].shape[1], tensors["weight"].shape[0])


class ItemScaled(torch.nn.Linear):
    """Logits divided by the batch's largest feature, read into Python: fine eagerly, not exportable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / max(1.0, x.abs().max().item())


class ViaNumpy(torch.nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.from_numpy(x.numpy().copy()))


def _host_op_head(module_type: type[torch.nn.Linear]) -> tuple[Any, Any]:
    def fit(train: tlkit.Features, options: Any, ctx: tlkit.FitContext) -> tlkit.TrainedHead:
        layer = module_type(train.x.shape[1], ctx.num_classes)
        layer.load_state_dict(_fit_means(train, options, ctx).module.state_dict())
        return tlkit.TrainedHead(module=layer)

    def load(tensors: Any, options: Any) -> torch.nn.Module:
        layer = module_type(tensors["weight"].shape[1], tensors["weight"].shape[0])
        layer.load_state_dict(dict(tensors))
        return layer

    return fit, load


HEADS = {
    "item_head": _host_op_head(ItemScaled),
    "numpy_head": _host_op_head(ViaNumpy),
    "means": (_fit_means, _load_means),
    "random": (_fit_random, _load_means),
    "peeking": (_fit_peeking, _load_means),
    "constant": (_fit_constant, _load_means),
    "wrong_shape": (_fit_wrong_shape, _load_means),
    "forgetful": (_fit_means, _load_fresh),
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine threads waiting for a
    core make each of a head's many small steps slow; one thread keeps these checks at a second."""
    from tlkit.fitting import one_thread as single_thread

    with single_thread():
        yield


def _kit_module() -> types.ModuleType:
    """One in-process plugin with good and deliberately broken entries of each kind."""
    module = types.ModuleType("tlkit_kit_fixture")

    def register_backbones(register: Any) -> None:
        register(_backbone("good", TinyCNN))
        register(_backbone("undeclared", TinyCNN, feature_dim=None))
        register(_backbone("wrong_dim", TinyCNN, feature_dim=64))
        register(_backbone("noisy", Noisy))
        register(_backbone("batch_centred", BatchCentred))
        register(_backbone("unpooled", Unpooled))
        register(_backbone("no_preprocessing", TinyCNN, preprocessing=_no_preprocessing))
        register(tlkit.BackboneSpec(name="wide", build=_build_wide, preprocessing=PRE, options=WidthOptions))

    def register_datasets(register: Any) -> None:
        register(tlkit.DatasetSpec(name="folder", load=_folder_loader(), options=FolderOptions))
        register(tlkit.DatasetSpec(name="shuffled", load=_folder_loader(_shuffled), options=FolderOptions))
        register(
            tlkit.DatasetSpec(
                name="bad_label",
                load=_folder_loader(lambda d: dataclasses.replace(d, splits={**d.splits, "test": [tlkit.Sample(d.splits["test"][0].path, 7)]})),
                options=FolderOptions,
            )
        )
        register(tlkit.DatasetSpec(name="no_test", load=_folder_loader(lambda d: dataclasses.replace(d, splits={"train": d.splits["train"]})), options=FolderOptions))
        register(
            tlkit.DatasetSpec(
                name="str_paths",
                load=_folder_loader(lambda d: dataclasses.replace(d, splits={k: [tlkit.Sample(str(s.path), s.label) for s in v] for k, v in d.splits.items()})),
                options=FolderOptions,
            )
        )

    def register_heads(register: Any) -> None:
        for name, (fit, load) in HEADS.items():
            register(tlkit.HeadSpec(name=name, fit=fit, load=load))

    for hook in (register_backbones, register_datasets, register_heads):
        setattr(module, hook.__name__, tlkit.hookimpl(hook))
    return module


@pytest.fixture(scope="module")
def kit_plugins() -> Plugins:
    """The fixture plugin alone (no built-ins)."""
    return tlkit.testing.load_plugin(_kit_module(), builtins=False)


@pytest.fixture(scope="module")
def kit_and_builtins() -> Plugins:
    """The fixture plugin with the built-ins (``imagefolder`` reads the generated images)."""
    return tlkit.testing.load_plugin(_kit_module())


def test_check_backbone_passes_on_a_good_backbone(kit_plugins: Plugins) -> None:
    report = tlkit.testing.check_backbone("good", plugins=kit_plugins)
    assert (report.feature_dim, report.weights_id, report.preprocessing) == (16, "random", PRE)
    assert tlkit.testing.check_backbone("undeclared", plugins=kit_plugins).feature_dim == 16  # measured when not declared


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("wrong_dim", "backbone 'wrong_dim' declares feature_dim 64 but produces 16-d features"),
        ("noisy", "backbone 'noisy' gives different features for the same images on a second pass"),
        ("batch_centred", "backbone 'batch_centred': an image's features depend on the other images in its batch"),
        ("unpooled", r"backbone 'unpooled' maps a batch of 4 images to \(4, 16, 1, 1\), expected \(4, D\) features"),
        ("no_preprocessing", r"backbone 'no_preprocessing': its preprocessing cannot be computed \(KeyError: 'input_size'\)"),
        ("goood", "unknown backbone 'goood'; did you mean 'good'"),
    ],
)
def test_check_backbone_says_what_differs(kit_plugins: Plugins, name: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        tlkit.testing.check_backbone(name, plugins=kit_plugins)


def test_check_backbone_reports_the_plugins_own_option_errors_as_they_are(kit_plugins: Plugins) -> None:
    """The RecipeError a plugin raises (in its options' __post_init__ or in build) is what the check raises."""
    assert tlkit.testing.check_backbone("wide", {"width": 24}, plugins=kit_plugins, images=2).feature_dim == 24
    with pytest.raises(tlkit.RecipeError, match="^backbone.width must be a multiple of 8, not 12$"):
        tlkit.testing.check_backbone("wide", {"width": 12}, plugins=kit_plugins)
    with pytest.raises(tlkit.RecipeError, match="^backbone.width 72 is more than 64; lower it$"):
        tlkit.testing.check_backbone("wide", {"width": 72}, plugins=kit_plugins)
    with pytest.raises(AssertionError, match="backbone 'wide': its options do not validate: unknown key 'backbone.widht'; did you mean 'width'"):
        tlkit.testing.check_backbone("wide", {"widht": 8}, plugins=kit_plugins)


def test_check_backbone_on_the_builtin_offline_backbone() -> None:
    report = tlkit.testing.check_backbone("efficientnet_lite0", weights=None, images=2, plugins=load_plugins(entry_points=False))
    assert report.feature_dim == 1280 and report.weights_id != "random"


def test_check_dataset_passes_and_fails_saying_what_differs(kit_plugins: Plugins, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", n_train=2, n_test=1)
    loaded = tlkit.testing.check_dataset("folder", {"root": str(root)}, plugins=kit_plugins)
    assert loaded.classes == ("cats", "dogs") and len(loaded.splits["train"]) == 4
    cases = {
        "shuffled": "returns different classes or samples on a second load",
        "bad_label": r"dataset 'bad_label': test\[0\].label is 7, expected an int in 0..1",
        "no_test": "the 'test' split is missing or empty",
        "str_paths": r"train\[0\].path is a str, expected pathlib.Path",
    }
    for name, message in cases.items():
        with pytest.raises(AssertionError, match=message):
            tlkit.testing.check_dataset(name, {"root": str(root)}, plugins=kit_plugins)
    with pytest.raises(AssertionError, match="dataset 'folder': its options do not validate: 'dataset.root' is required"):
        tlkit.testing.check_dataset("folder", {}, plugins=kit_plugins)
    (root / "train" / "cats" / "cats_0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(AssertionError, match=r"cats_0.jpg does not decode as an image"):
        tlkit.testing.check_dataset("folder", {"root": str(root)}, plugins=kit_plugins)


def test_check_head_passes_on_a_good_head_and_the_builtin_linear(kit_plugins: Plugins) -> None:
    assert tlkit.testing.check_head("means", plugins=kit_plugins).test_accuracy == 1.0
    report = tlkit.testing.check_head("linear", {"epochs": 300, "lr": 0.05, "eval_every": 100}, plugins=load_plugins(entry_points=False))
    assert report.test_accuracy >= 0.9 and len(report.history) == 3


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("random", "head 'random' gives a different head for the same data and seed"),
        ("peeking", "head 'peeking' trains differently when FitContext.monitor is set"),
        ("constant", r"head 'constant' reaches only 33% accuracy on well-separated generated features \(expected at least 90%\)"),
        ("wrong_shape", r"head 'wrong_shape' maps \(18, 8\) features to \(18, 4\), expected \(18, 3\) logits"),
        ("forgetful", "head 'forgetful': load\\(\\) of its saved state_dict gives different logits"),
    ],
)
def test_check_head_says_what_differs(kit_plugins: Plugins, name: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        tlkit.testing.check_head(name, plugins=kit_plugins)


@pytest.mark.parametrize(
    ("name", "operation"),
    [("item_head", r"\.item\(\) at test_testing_kit\.py:\d+ in forward"), ("numpy_head", r"\.numpy\(\) at test_testing_kit\.py:\d+ in forward")],
)
def test_check_head_fails_a_head_that_cannot_be_exported_naming_the_operation(kit_plugins: Plugins, name: str, operation: str) -> None:
    """Must hold 5: eagerly the head is fine (accurate, reproducible, reloads); the kit names what breaks the export."""
    with pytest.raises(AssertionError) as caught:
        tlkit.testing.check_head(name, plugins=kit_plugins)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    assert re.match(rf"head '{name}' cannot be exported: its forward calls {operation}, which turns a tensor into a Python value", message), message
    assert tlkit.testing.check_head(name, plugins=kit_plugins, exports=()).test_accuracy == 1.0  # only the export check fails it


def test_check_exports_passes_a_good_head_in_every_format(kit_plugins: Plugins) -> None:
    report = tlkit.testing.check_head("means", plugins=kit_plugins, exports=("pt2", "onnx", "torchscript"))
    assert report.test_accuracy == 1.0


def test_load_plugin_fails_for_a_plugin_tlkit_would_skip() -> None:
    broken = types.ModuleType("tlkit_kit_broken")

    def register_heads(register: Any) -> None:
        register(tlkit.HeadSpec(name="h", fit=print, load=print, options=object))

    broken.register_heads = tlkit.hookimpl(register_heads)
    with pytest.raises(AssertionError, match="plugin 'tlkit_kit_broken' would be skipped: registered a malformed head 'h'"):
        tlkit.testing.load_plugin(broken, builtins=False)


BUILTIN_HEADS = load_plugins(entry_points=False, builtins=True).heads.names()


@pytest.mark.parametrize("name", BUILTIN_HEADS)
def test_every_builtin_head_keeps_the_contract(name: str) -> None:
    """The built-in heads are held to the same checks as third-party ones (with their default options)."""
    plugins = load_plugins(entry_points=False)
    report = tlkit.testing.check_head(name, plugins=plugins)
    assert report.test_accuracy >= 0.9


def test_run_tiny_recipe_runs_the_plugin_end_to_end(kit_and_builtins: Plugins, tmp_path: Path) -> None:
    result = tlkit.testing.run_tiny_recipe(tmp_path, backbone="good", head="means", plugins=kit_and_builtins)
    assert result.out_dir == tmp_path / "run" and (result.out_dir / "model.json").is_file()
    assert result.metrics.classes == ["blue", "red"] and result.metrics.counts == {"train": 8, "test": 8}
    assert result.metrics.feature_dim == 16 and result.metrics.test.count == 8
    assert len(result.predictions) == 8
    with pytest.raises(tlkit.RecipeError, match="unknown head 'meens'; did you mean 'means'"):
        tlkit.testing.run_tiny_recipe(tmp_path / "again", backbone="good", head="meens", plugins=kit_and_builtins)


def test_tlkit_export_refuses_a_head_with_a_host_op_in_one_line(kit_and_builtins: Plugins, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Must hold 5 at the CLI: the run works; its export fails with exit 2 and one line naming .item(), for every format."""
    from tlkit.cli.app import main
    from tlkit.contract.plugin_manager import set_plugins

    run_dir = tlkit.testing.run_tiny_recipe(tmp_path, backbone="good", head="item_head", plugins=kit_and_builtins).out_dir
    set_plugins(kit_and_builtins)
    try:
        for fmt in ("onnx", "pt2", "torchscript"):
            capsys.readouterr()
            with pytest.raises(SystemExit) as info:
                main(["export", str(run_dir), "--format", fmt])
            output = capsys.readouterr()
            assert info.value.code == 2 and output.out == "", output
            lines = output.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: head 'item_head' cannot be exported: its forward calls .item() at test_testing_kit.py:"), output.err
            assert lines[0].endswith("; nothing written")
        assert not [p for p in run_dir.iterdir() if p.suffix in (".onnx", ".pt2", ".pt")]
    finally:
        set_plugins(None)
