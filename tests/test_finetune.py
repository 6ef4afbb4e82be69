"""Fine-tuning (mode: finetune) on generated images with a tiny real timm network: recipe checks,
stages and strategies, batch norm, schedules, held-out choice, resume, SIGTERM, predict and export."""

from __future__ import annotations

import csv
import json
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import torch
from finetune_helpers import TinyBNPlugin, build_tiny_bn, make_data, recipe_data
from safetensors.torch import load_file

from tlkit import hookimpl
from tlkit.contract.observer import Observer
from tlkit.contract.plugin_manager import Plugins, load_plugins, set_plugins
from tlkit.contract.specs import HeadSpec, NoOptions, TrainedHead
from tlkit.errors import DataError, RecipeError, RunError, RunInterrupted
from tlkit.finetune.interrupts import TrainingStopped
from tlkit.finetune.optim import build_optimizer, lr_factor
from tlkit.finetune.parts import FinetuneNet, last_stage_parameters, stage_names
from tlkit.finetune.settings import FinetuneSettings
from tlkit.finetune.trainer import new_classifier
from tlkit.recipe.loader import resolve
from tlkit.run.engine import run
from tlkit.run.finetune_stage import finetune
from tlkit.run.stages import prepare
from tlkit.util.hashing import weights_digest


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Extraction, predict and export on one thread too: on a machine with busy cores, two threads stall each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def bn_plugins() -> Iterator[Plugins]:
    loaded = load_plugins(entry_points=False, extra=[TinyBNPlugin()])
    set_plugins(loaded)
    try:
        yield loaded
    finally:
        set_plugins(None)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("ft") / "data")


def _tuned(plugins: Plugins, data: Path, tmp_path: Path, **settings: object) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], object]:
    """(backbone state before, after, result) of fine-tuning the tiny network with ``settings``."""
    recipe = resolve(recipe_data(data, **settings), plugins)
    prepared = prepare(recipe)
    before = {k: v.clone() for k, v in prepared.backbone.model.state_dict().items()}
    assert recipe.finetune is not None
    tuned, _head, result = finetune(prepared, recipe.finetune, tmp_path)
    return before, dict(tuned.backbone.model.state_dict()), result


def _changed(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor], prefix: str = "") -> set[str]:
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


# --- recipe ------------------------------------------------------------------------------------


def test_finetune_recipe_resolves_with_defaults(bn_plugins: Plugins, data: Path) -> None:
    recipe = resolve(recipe_data(data), bn_plugins)
    assert recipe.mode == "finetune" and recipe.finetune is not None
    assert (recipe.finetune.optimizer, recipe.finetune.momentum, recipe.finetune.step_epochs, recipe.finetune.gamma) == ("sgd", 0.9, 7, 0.1)
    saved = recipe.to_dict()
    assert saved["mode"] == "finetune" and saved["finetune"]["augment"]["scale"] == [0.08, 1.0]
    assert "mode" not in resolve({k: v for k, v in recipe_data(data).items() if k not in ("mode", "finetune")}, bn_plugins).to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"finetune": {"strategy": "partial"}}, "'finetune.strategy'"),
        ({"finetune": {"augment": {"hfilp": 0.5}}}, "did you mean 'hflip'"),
        ({"finetune": {"augment": {"auto_augment": "bogus"}}}, r"'finetune.augment.auto_augment'.*'rand-m9-mstd0.5'.*'augmix-m5-w4-d2'.*'original'.*got 'bogus'"),
        ({"finetune": {"augment": {"auto_augment": "rand-m1e9"}}}, r"'finetune.augment.auto_augment'.*got 'rand-m1e9'"),
        ({"finetune": {"lr": -1}}, "'finetune.lr'"),
        ({"finetune": {"epocs": 3}}, "did you mean 'epochs'"),
        ({"mode": "fine-tune"}, "did you mean 'finetune'"),
        ({"head": {"name": "knn"}}, "trains its own linear classifier"),
        ({"mode": "extract"}, "only with 'mode: finetune'"),
    ],
)
def test_bad_finetune_settings_are_one_line_errors(bn_plugins: Plugins, data: Path, change: dict, message: str) -> None:
    raw = recipe_data(data)
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    if "augment" in change.get("finetune", {}):
        raw["finetune"] = {**recipe_data(data)["finetune"], "augment": change["finetune"]["augment"]}
    with pytest.raises(RecipeError, match=message):
        resolve(raw, bn_plugins)


class AdoptingHead:
    """A throwaway head plugin that takes over fine-tuning's classifier its own way (``HeadSpec.from_classifier``)."""

    @staticmethod
    def adopt(layer: torch.nn.Linear) -> TrainedHead:
        config = {"features": layer.in_features, "classes": layer.out_features}
        return TrainedHead(module=layer, config=config, choices={"adopted": 1}, notes=("taken over by 'adopting'",))

    @staticmethod
    def build(config: Mapping[str, object]) -> torch.nn.Module:
        return torch.nn.Linear(int(config["features"]), int(config["classes"]))

    @hookimpl
    def register_heads(self, register: Callable[[HeadSpec[NoOptions]], None]) -> None:
        def fit(train: object, options: NoOptions, ctx: object) -> TrainedHead:
            raise AssertionError("a fine-tuning run never fits the head on features")

        register(HeadSpec(name="adopting", fit=fit, build=self.build, from_classifier=self.adopt))


def test_the_classifier_is_handed_to_the_recipes_head_which_saves_it_its_own_way(data: Path, tmp_path: Path) -> None:
    """Fine-tuning writes no head's settings by name: the head plugin's from_classifier says what is saved, and predict rebuilds it."""
    from tlkit.saved.reader import load_model

    plugins = load_plugins(entry_points=False, extra=[TinyBNPlugin(), AdoptingHead()])
    set_plugins(plugins)
    try:
        raw = recipe_data(data, epochs=1)
        result = run(resolve({**raw, "head": {"name": "adopting"}}, plugins), tmp_path / "run")
        metadata = safe_open_metadata(result.out_dir / "head.safetensors")
        assert json.loads(metadata["config"]) == {"features": result.metrics.feature_dim, "classes": len(result.metrics.classes)}
        assert result.metrics.head_choices == {"adopted": 1, "epoch": 1}
        assert result.metrics.head_notes[0] == "taken over by 'adopting'" and result.metrics.head_notes[1].startswith("fine-tuned")
        assert isinstance(load_model(result.out_dir, plugins).head, torch.nn.Linear)  # rebuilt by the plugin's build(config)
    finally:
        set_plugins(None)


def safe_open_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


# --- stages and strategies ---------------------------------------------------------------------


def test_stages_come_from_timm_feature_info_and_torchvision_layer_names() -> None:
    import torchvision

    assert stage_names(build_tiny_bn(None, None).model) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4"]
    assert stage_names(torchvision.models.resnet18(weights=None)) == ["layer1", "layer2", "layer3", "layer4"]
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
    assert stage_names(plain) == ["0", "2"]
    last = last_stage_parameters(build_tiny_bn(None, None).model, 1)
    assert any(k.startswith("blocks.4.") for k in last) and any(k.startswith("conv_head") for k in last)
    assert not any(k.startswith("blocks.3.") for k in last)
    with pytest.raises(RecipeError, match="more than the backbone's 5 stages"):
        last_stage_parameters(build_tiny_bn(None, None).model, 6)


def test_freeze_trains_the_classifier_only(bn_plugins: Plugins, data: Path, tmp_path: Path) -> None:
    before, after, result = _tuned(bn_plugins, data, tmp_path, strategy="freeze")
    assert _changed(before, after) == set()
    assert not torch.equal(result.net.classifier.weight, new_classifier(256, 3, 3).weight)  # type: ignore[attr-defined]


def test_full_trains_every_weight_and_keeps_bn_statistics(bn_plugins: Plugins, data: Path, tmp_path: Path) -> None:
    before, after, _ = _tuned(bn_plugins, data, tmp_path, strategy="full")
    weights = {k for k in before if k.endswith("weight") and before[k].dtype.is_floating_point}
    assert weights <= _changed(before, after)
    statistics = {k for k in before if k.endswith(("running_mean", "running_var"))}
    assert statistics and not (_changed(before, after) & statistics)  # frozen unless train_bn


def test_train_bn_updates_the_statistics(bn_plugins: Plugins, data: Path, tmp_path: Path) -> None:
    before, after, _ = _tuned(bn_plugins, data, tmp_path, strategy="full", train_bn=True)
    assert {k for k in _changed(before, after) if k.endswith("running_mean")}


def test_last_stages_trains_only_the_end_of_the_network(bn_plugins: Plugins, data: Path, tmp_path: Path) -> None:
    before, after, _ = _tuned(bn_plugins, data, tmp_path, strategy="last_stages", stages=1)
    changed = _changed(before, after)
    assert any(k.startswith("blocks.4.") for k in changed) and any(k.startswith("conv_head") for k in changed)
    assert not any(k.startswith(("conv_stem", "blocks.0.", "blocks.3.")) for k in changed)


def test_freeze_then_unfreeze_trains_the_backbone_after_the_frozen_epochs(bn_plugins: Plugins, data: Path, tmp_path: Path) -> None:
    before, after, _ = _tuned(bn_plugins, data, tmp_path / "a", strategy="freeze_then_unfreeze", unfreeze_epoch=2, epochs=2)
    assert _changed(before, after) == set()
    before, after, _ = _tuned(bn_plugins, data, tmp_path / "b", strategy="freeze_then_unfreeze", unfreeze_epoch=1, epochs=2)
    assert any(k.startswith("blocks.0.") for k in _changed(before, after))


# --- optimiser and schedule ----------------------------------------------------------------------


def test_backbone_and_classifier_learning_rates() -> None:
    net = FinetuneNet(build_tiny_bn(None, None).model, new_classifier(256, 3, 0))
    optimizer = build_optimizer(net, FinetuneSettings(lr=0.1, backbone_lr=0.01))
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.1] and isinstance(optimizer, torch.optim.SGD)
    assert FinetuneSettings(strategy="freeze_then_unfreeze", lr=0.1).effective_backbone_lr() == pytest.approx(0.01)
    assert isinstance(build_optimizer(net, FinetuneSettings(optimizer="adamw")), torch.optim.AdamW)


def test_schedules() -> None:
    step = lr_factor(FinetuneSettings(epochs=20), steps_per_epoch=10)
    assert (step(0), step(69), step(70), step(140)) == (1.0, 1.0, pytest.approx(0.1), pytest.approx(0.01))
    cosine = lr_factor(FinetuneSettings(epochs=4, schedule="cosine", warmup_epochs=1), steps_per_epoch=10)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(10) == pytest.approx(1.0) and cosine(25) == pytest.approx(0.5) and cosine(40) == pytest.approx(0.0)


# --- held-out choice, checkpoints, resume ------------------------------------------------------------


def test_val_fraction_keeps_the_best_held_out_epoch(bn_plugins: Plugins, data: Path, tmp_path: Path) -> None:
    _, _after, result = _tuned(bn_plugins, data, tmp_path, strategy="full", val_fraction=0.34, epochs=3, lr=0.2)
    history = result.history  # type: ignore[attr-defined]
    scores = [(p["val_accuracy"], -p["val_loss"]) for p in history]
    assert result.best_epoch == 1 + scores.index(max(scores))  # type: ignore[attr-defined]
    assert all("test_accuracy" in p for p in history)


class _StopAfterFirstEpoch(Observer):
    def point(self, label: str, values: Mapping[str, float]) -> None:
        if label == "epoch 1":
            raise KeyboardInterrupt


def _state(result: object) -> dict[str, torch.Tensor]:
    return dict(result.net.state_dict())  # type: ignore[attr-defined]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_in_process_is_bitwise(bn_plugins: Plugins, data: Path, tmp_path: Path, optimizer: str) -> None:
    settings = {"strategy": "full", "epochs": 3, "optimizer": optimizer, "lr": 0.01, "schedule": "cosine", "warmup_epochs": 0.5, "val_fraction": 0.34}
    _, _, straight = _tuned(bn_plugins, data, tmp_path / "straight", **settings)
    recipe = resolve(recipe_data(data, **settings), bn_plugins)
    assert recipe.finetune is not None
    with pytest.raises(TrainingStopped):
        finetune(prepare(recipe), recipe.finetune, tmp_path / "cut", _StopAfterFirstEpoch())
    # A checkpoint continues only the recipe that made it.
    other = resolve(recipe_data(data, **{**settings, "lr": 0.02}), bn_plugins)
    assert other.finetune is not None
    with pytest.raises(RunError, match="'finetune.lr' differs"):
        finetune(prepare(other), other.finetune, tmp_path / "cut", resume=True)
    _, _, again = finetune(prepare(recipe), recipe.finetune, tmp_path / "cut", resume=True)
    assert again.resumed_from == 1
    assert all(torch.equal(v, _state(again)[k]) for k, v in _state(straight).items())


class _TermAfterFirstEpoch(Observer):
    def point(self, label: str, values: Mapping[str, float]) -> None:
        if label == "epoch 1":
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_keeps_a_resumable_checkpoint_and_says_how(bn_plugins: Plugins, data: Path, tmp_path: Path) -> None:
    recipe = resolve(recipe_data(data, strategy="full", epochs=3), bn_plugins)
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted, match=r"SIGTERM in epoch 2 of 3: stopped; the checkpoint after epoch 1 is kept in .*--resume") as caught:
        run(recipe, out, _TermAfterFirstEpoch())
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    assert not out.exists()
    (partial,) = tmp_path.glob("run.partial-*")
    assert str(partial) in str(caught.value)
    resumed = run(recipe, out, resume=out)
    straight = run(recipe, tmp_path / "straight")
    assert resumed.out_dir == out and not (out / "checkpoints").exists() and not partial.exists()
    for name in ("backbone.safetensors", "head.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(straight.out_dir / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [p["epoch"] for p in resumed.metrics.history] == [1.0, 2.0, 3.0]


def test_resume_needs_an_interrupted_run(bn_plugins: Plugins, data: Path, tmp_path: Path) -> None:
    recipe = resolve(recipe_data(data, epochs=1), bn_plugins)
    with pytest.raises(RunError, match="no interrupted fine-tuning run"):
        run(recipe, resume=tmp_path / "nothing")
    done = run(recipe, tmp_path / "done").out_dir
    with pytest.raises(RunError, match="is a finished run"):
        run(recipe, resume=done)
    extract_mode = resolve({k: v for k, v in recipe_data(data).items() if k not in ("mode", "finetune")}, bn_plugins)
    with pytest.raises(RecipeError, match="continues a fine-tuning run"):
        run(extract_mode, resume=done)


# --- the run directory: predict and export ---------------------------------------------------------


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_predict_and_export_reproduce_a_finetuned_run(bn_plugins: Plugins, data: Path, tmp_path: Path, runtime: str) -> None:
    """Also through a converted runtime: the run's final extraction must run the *trained* weights,
    which eager predict (the trained backbone from the run directory) then reproduces."""
    from tlkit.saved.export import export
    from tlkit.saved.reader import load_model, predict

    if runtime != "torch":
        pytest.importorskip(runtime)
    data_ = recipe_data(data, strategy="full", train_bn=True)
    data_["extract"] = {**data_["extract"], "runtime": runtime}
    result = run(resolve(data_, bn_plugins), tmp_path / "run")
    out = result.out_dir
    assert json.loads((out / "metrics.json").read_text())["features"]["runtime"]["runtime"] == runtime
    info = load_file(str(out / "backbone.safetensors"))
    assert not torch.equal(info["conv_stem.weight"], build_tiny_bn(None, None).model.state_dict()["conv_stem.weight"])
    model = load_model(out, bn_plugins)
    # one digest of the trained weights everywhere: model.json, the weights read back from the run, the converted model's key
    digest = weights_digest(model.backbone)
    assert model.manifest.backbone.weights_sha256 == digest and model.manifest.backbone.in_run
    if runtime != "torch":
        stored = [json.loads(p.read_text()) for p in Path(os.environ["TLKIT_CACHE_DIR"]).glob("runtimes/*/manifest.json")]
        assert digest in {record["identity"]["weights_sha256"] for record in stored}
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    predicted = predict(model, [Path(r["path"]) for r in rows], device="cpu", workers=0)
    assert [str(p) for p in predicted.paths] == [r["path"] for r in rows]
    for row, probabilities in zip(rows, predicted.probabilities):
        assert model.classes[int(probabilities.argmax())] == row["predicted_class"]
        assert abs(float(probabilities.max()) - float(row["confidence"])) <= (1e-6 if runtime == "torch" else 1e-4)
    exported = export(model, "onnx", tmp_path / "model.onnx")
    assert exported.path.is_file() and exported.max_difference < 1e-4
    assert result.metrics.history and "test_accuracy" in result.metrics.history[-1]



def test_an_epoch_in_which_no_training_image_decodes_is_one_line_not_nan(bn_plugins: Plugins, tmp_path: Path) -> None:
    """Every training file damaged and on_bad_image 'skip': the run stops naming a file, instead of training on nothing."""
    root = make_data(tmp_path / "data")
    for image in [p for p in (root / "train").rglob("*") if p.is_file()]:
        image.write_bytes(b"not an image")
    recipe = resolve(recipe_data(root), bn_plugins)
    with pytest.raises(DataError) as info:
        run(recipe, tmp_path / "run")
    message = str(info.value)
    assert "\n" not in message and "none of the" in message and "could be decoded" in message and str(root / "train") in message
    assert not (tmp_path / "run").exists()
