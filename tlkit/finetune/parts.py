"""Which parameters train, and which modules run in training mode, for each strategy.

A backbone's *stages* come from the library that defines it: timm's ``feature_info`` (the modules
where each feature resolution ends, e.g. ``blocks.0`` ... ``blocks.6`` for EfficientNet), else
torchvision's ``layer1`` ... ``layer4``, else the backbone's top-level children that hold
parameters. "The last K stages" means every parameter from the start of the K-th last stage to the
end of the network in registration (= forward) order, so the layers after the last stage (a final
1x1 convolution, its batch norm) train with it.

Frozen parameters get ``requires_grad = False``: autograd then records nothing for the frozen start
of the network, so a partly frozen backbone costs a forward pass there and no backward. Frozen
modules run in eval mode (no dropout, batch-norm statistics fixed); batch-norm layers stay in eval
mode everywhere unless ``train_bn`` asks for them, because the statistics of a few small batches are
worse than the pretrained ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tlkit.errors import RecipeError
from tlkit.finetune.settings import FinetuneSettings

_TORCHVISION_STAGES = ("layer1", "layer2", "layer3", "layer4")


class FinetuneNet(torch.nn.Module):
    """Backbone + linear classifier: a normalised image batch -> logits."""

    def __init__(self, backbone: torch.nn.Module, classifier: torch.nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(images).float().flatten(1))


def stage_names(backbone: torch.nn.Module) -> list[str]:
    """Module names of the backbone's stages, first to last."""
    info = getattr(backbone, "feature_info", None)
    modules = dict(backbone.named_modules())
    if info is not None:
        names = [str(item["module"]) for item in info] if isinstance(info, list) else list(info.module_name())
        names = [n for n in names if n in modules and any(True for _ in modules[n].parameters())]
        if names:
            return names
    if all(name in modules for name in _TORCHVISION_STAGES):
        return list(_TORCHVISION_STAGES)
    return [name for name, child in backbone.named_children() if any(True for _ in child.parameters())]


def last_stage_parameters(backbone: torch.nn.Module, k: int | None) -> set[str]:
    """Names of the parameters of the last ``k`` stages and everything after them (``None``: all)."""
    ordered = [name for name, _ in backbone.named_parameters()]
    if k is None:
        return set(ordered)
    stages = stage_names(backbone)
    if k > len(stages):
        raise RecipeError(f"'finetune.stages': {k} is more than the backbone's {len(stages)} stages ({', '.join(stages)}); use at most {len(stages)}")
    first = stages[-k]
    start = next(i for i, name in enumerate(ordered) if name.startswith(first + "."))
    return set(ordered[start:])


@dataclass(frozen=True)
class Phase:
    """What trains in one epoch: the backbone parameters that do (by name) and whether the classifier does."""

    backbone_parameters: frozenset[str]

    @property
    def backbone_trains(self) -> bool:
        return bool(self.backbone_parameters)


def phase_for(backbone: torch.nn.Module, settings: FinetuneSettings, epoch: int) -> Phase:
    """The trainable part of the backbone in ``epoch`` (1-based) under ``settings.strategy``."""
    strategy = settings.strategy
    if strategy == "freeze" or (strategy == "freeze_then_unfreeze" and epoch <= settings.unfreeze_epoch):
        return Phase(frozenset())
    if strategy == "full":
        return Phase(frozenset(last_stage_parameters(backbone, None)))
    if strategy == "last_stages" and settings.stages is None:
        raise RecipeError("'finetune.stages' is required with strategy: last_stages (how many of the last stages train)")
    return Phase(frozenset(last_stage_parameters(backbone, settings.stages)))


def apply_phase(net: FinetuneNet, phase: Phase, *, train_bn: bool) -> None:
    """Set ``requires_grad`` and train/eval mode for one epoch of training."""
    for name, parameter in net.backbone.named_parameters():
        parameter.requires_grad_(name in phase.backbone_parameters)
    for parameter in net.classifier.parameters():
        parameter.requires_grad_(True)
    net.train()
    _set_modes(net.backbone, phase.backbone_trains)
    if not train_bn:
        for module in net.backbone.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.training = False


def _set_modes(backbone: torch.nn.Module, any_trainable: bool) -> None:
    """A module trains when one of its parameters does; a module without parameters follows its parent."""
    backbone.training = any_trainable
    parents: dict[str, bool] = {"": any_trainable}
    for name, module in backbone.named_modules():
        if not name:
            continue
        own = list(module.parameters())
        parent = parents.get(name.rpartition(".")[0], any_trainable)
        mode = any(p.requires_grad for p in own) if own else parent
        module.training = mode
        parents[name] = mode


def parameter_groups(net: FinetuneNet) -> tuple[Sequence[torch.nn.Parameter], Sequence[torch.nn.Parameter]]:
    """(backbone parameters, classifier parameters): the optimiser's two groups, fixed for the whole run."""
    return list(net.backbone.parameters()), list(net.classifier.parameters())
